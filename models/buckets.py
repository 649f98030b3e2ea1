"""Log2 buckets of counts and durations, the ids that the towers' small side tables embed."""

from __future__ import annotations

from functools import cache

import torch

GAP_BUCKETS = 12      # log2 buckets of hours to the next event; the last one means "no time"
STEP_BUCKETS = 8      # 0, 1, 2, 3-4, 5-8, 9-16, 17-32, 33+
AGE_BUCKETS = 10      # log2 buckets of days; the last one means "no time"
RECENCY_BUCKETS = 10  # steps back from the predicted position: 0, 1, 2, 3-4, ..., 65-128, 129+


def step_bucket(steps: torch.Tensor, n_buckets: int = STEP_BUCKETS) -> torch.Tensor:
    """0, 1, 2, 3-4, 5-8, ... as bucket ids, the last one holding everything further back."""
    b = torch.ceil(torch.log2(steps.clamp(min=1).float())).long() + 1
    return torch.where(steps <= 0, torch.zeros_like(b), b).clamp(max=n_buckets - 1)


def log_bucket(values: torch.Tensor, n_buckets: int) -> torch.Tensor:
    """log2 buckets of a non-negative quantity; NaN (no time) gets the last bucket."""
    b = torch.floor(torch.log2(values.clamp(min=0) + 1.0)).long().clamp(max=n_buckets - 2)
    return torch.where(torch.isnan(values), torch.full_like(b, n_buckets - 1), b)


@cache
def _grid(width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The (W, W) recency bucket of event j seen from position t, and where j lies after t.
    Built outside inference mode, because a tensor made in it could never enter training's
    autograd graph later."""
    with torch.inference_mode(False):
        steps = torch.arange(width).unsqueeze(1) - torch.arange(width).unsqueeze(0)  # t - j
        return step_bucket(steps, RECENCY_BUCKETS), steps < 0


def steps_back(length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The (L, L) recency bucket (``RECENCY_BUCKETS``) of event j seen from position t of a
    history of ``length`` events, and whether j lies after t (the future a causal tower never
    sees). Grids are built for powers of two only and each length reads the bottom-right
    corner, where t - j is the same: the few hundred widths that training windows and trimmed
    serving batches take share a handful of cached grids."""
    width = 1 << max(length - 1, 0).bit_length()
    buckets, future = _grid(width)
    corner = width - length
    return buckets[corner:, corner:], future[corner:, corner:]
