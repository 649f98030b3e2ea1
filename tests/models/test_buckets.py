"""Bucket ids of the towers' side tables and the steps-back grid (models.buckets)."""

from __future__ import annotations

import torch

from models.buckets import RECENCY_BUCKETS, step_bucket, steps_back


def test_step_buckets_are_log2_ranges() -> None:
    steps = torch.tensor([0, 1, 2, 3, 4, 5, 8, 9, 16, 17, 1000])
    assert step_bucket(steps, RECENCY_BUCKETS).tolist() == [0, 1, 2, 3, 3, 4, 4, 5, 5, 6, 9]


def test_every_width_reads_the_steps_back_of_its_own_grid() -> None:
    """Widths share the grids of powers of two; each gets the buckets of t - j and the future."""
    for length in (0, 1, 2, 5, 8, 9, 200):
        steps = torch.arange(length).unsqueeze(1) - torch.arange(length).unsqueeze(0)
        buckets, future = steps_back(length)
        assert torch.equal(buckets, step_bucket(steps, RECENCY_BUCKETS))
        assert torch.equal(future, steps < 0)
