"""The pooling user tower's summary of a history: an attention-weighted mean of its events.

Pure functions over the tower's tensors (the learned scores and recency weights stay in
``models.two_tower.TwoTower``). Each position t pools the events up to it (causal, like the
transformer encoder); serving only ever needs the last position.
"""

from __future__ import annotations

import torch

from models.buckets import steps_back
from models.take import take

BLOCKED = -1e9       # a logit whose exp is exactly 0 beside any real one


def weighted_mean(x: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """softmax(logits) over the last axis, applied to x (B, L, dim): (B, dim) for logits
    (B, L), or (B, T, dim) for logits (B, T, L), one weighting per row."""
    weights = torch.softmax(logits, dim=-1)
    if weights.dim() == 2:
        return torch.bmm(weights.unsqueeze(1), x).squeeze(1)
    return torch.bmm(weights, x)


def running_pool(x: torch.Tensor, logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Every position's softmax-weighted mean of the events up to it, (B, L, dim), as running
    sums: the weights of position t over j <= t are those of the whole history, renormalised."""
    weights = torch.exp(logits - logits.max(dim=1, keepdim=True).values) * mask
    num = torch.cumsum(weights.unsqueeze(-1) * x, dim=1)
    den = torch.cumsum(weights, dim=1).clamp(min=1e-9).unsqueeze(-1)
    return num / den


def recency_pool(x: torch.Tensor, logits: torch.Tensor, recency: torch.Tensor,
                 all_positions: bool) -> torch.Tensor:
    """The pooling with each event's weight also set by its steps back from the position
    predicted: ``recency`` (``models.buckets.RECENCY_BUCKETS``,) holds a log-weight per bucket.

    A training window's positions each see a different prefix, so a position vector counted
    from the window's end says nothing consistent about how recent an event is to that prefix
    (serving only ever sees the last position); steps back mean the same in training and
    serving. The weights of position t over j <= t no longer factor into running sums: a
    (B, L, L) softmax, small beside the catalog's logits. A padded position t sees only
    padding: its row is uniform, and the tower masks it out after."""
    buckets, future = steps_back(x.shape[1])
    buckets, future = buckets.to(recency.device), future.to(recency.device)
    if not all_positions:
        return weighted_mean(x, logits + take(recency, buckets[-1]))
    bias = take(recency, buckets).masked_fill(future, BLOCKED)
    return weighted_mean(x, logits.unsqueeze(1) + bias)
