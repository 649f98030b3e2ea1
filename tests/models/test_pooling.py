"""The pooling user tower's summaries (models.pooling), on small tensors with known answers."""

from __future__ import annotations

import torch

from models.buckets import RECENCY_BUCKETS, _grid
from models.pooling import recency_pool, running_pool, weighted_mean


def history(seed: int = 0, batch: int = 3, length: int = 6, dim: int = 4):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, length, dim, generator=gen)
    logits = torch.randn(batch, length, generator=gen)
    return x, logits


def test_weighted_mean_of_one_event_is_that_event_and_equal_logits_average() -> None:
    x = torch.tensor([[[1.0, 0.0], [3.0, 2.0]]])
    assert torch.allclose(weighted_mean(x, torch.tensor([[0.0, -1e9]])), torch.tensor([[1.0, 0.0]]))
    assert torch.allclose(weighted_mean(x, torch.zeros(1, 2)), torch.tensor([[2.0, 1.0]]))


def test_flat_recency_pools_like_the_running_sums_at_every_position() -> None:
    """With every steps-back weight equal, position t's weights are the content softmax over
    j <= t: what the running sums compute without the (L, L) grid."""
    x, logits = history()
    mask = torch.ones_like(logits, dtype=torch.bool)
    flat = torch.zeros(RECENCY_BUCKETS)
    pooled = recency_pool(x, logits, flat, all_positions=True)
    assert torch.allclose(pooled, running_pool(x, logits, mask), atol=1e-6)
    assert torch.allclose(recency_pool(x, logits, flat, all_positions=False), pooled[:, -1],
                          atol=1e-6)


def test_a_strong_bias_for_the_newest_bucket_pools_each_positions_own_event() -> None:
    x, logits = history(seed=1)
    newest_only = torch.full((RECENCY_BUCKETS,), -50.0)
    newest_only[0] = 0.0
    assert torch.allclose(recency_pool(x, logits, newest_only, all_positions=True), x, atol=1e-5)


def test_the_grid_cached_while_serving_still_trains() -> None:
    """The steps-back grid is cached per width; built first under inference mode (serving), it
    must still enter autograd when training uses the same width."""
    _grid.cache_clear()
    x, logits = history(length=7)
    recency = torch.zeros(RECENCY_BUCKETS, requires_grad=True)
    with torch.inference_mode():
        recency_pool(x, logits, recency.detach(), all_positions=True)
    recency_pool(x, logits, recency, all_positions=True).pow(2).sum().backward()
    assert recency.grad is not None and recency.grad.abs().sum() > 0


def test_a_long_windows_gradient_is_the_same_on_every_pass(two_threads: None) -> None:
    """A 200-event window's steps-back grid repeats each of the few recency weights thousands of
    times. Plain indexing summed those repeats with atomic adds across threads, in an order that
    changed from pass to pass: two runs of one seed trained different models."""
    x, logits = history(length=200)
    upstream = torch.randn(x.shape, generator=torch.Generator().manual_seed(2))
    grads = set()
    for _ in range(20):
        recency = torch.zeros(RECENCY_BUCKETS, requires_grad=True)
        (recency_pool(x, logits, recency, all_positions=True) * upstream).sum().backward()
        grads.add(recency.grad.numpy().tobytes())
    assert len(grads) == 1
