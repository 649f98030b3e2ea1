"""Log2 buckets of counts and durations, the ids that the towers' small side tables embed."""

from __future__ import annotations

import torch

GAP_BUCKETS = 12      # log2 buckets of hours to the next event; the last one means "no time"
STEP_BUCKETS = 8      # 0, 1, 2, 3-4, 5-8, 9-16, 17-32, 33+
AGE_BUCKETS = 10      # log2 buckets of days; the last one means "no time"


def step_bucket(steps: torch.Tensor, n_buckets: int = STEP_BUCKETS) -> torch.Tensor:
    """0, 1, 2, 3-4, 5-8, ... as bucket ids, the last one holding everything further back."""
    b = torch.ceil(torch.log2(steps.clamp(min=1).float())).long() + 1
    return torch.where(steps <= 0, torch.zeros_like(b), b).clamp(max=n_buckets - 1)


def log_bucket(values: torch.Tensor, n_buckets: int) -> torch.Tensor:
    """log2 buckets of a non-negative quantity; NaN (no time) gets the last bucket."""
    b = torch.floor(torch.log2(values.clamp(min=0) + 1.0)).long().clamp(max=n_buckets - 2)
    return torch.where(torch.isnan(values), torch.full_like(b, n_buckets - 1), b)
