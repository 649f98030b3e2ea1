"""The transformer user tower's attention mask: what each head adds to its attention scores.

Pure functions over the tower's tensors (the learned bias stays in
``models.two_tower.TwoTower``), as ``models.pooling`` holds the pooling tower's.
"""

from __future__ import annotations

import torch
from torch import nn

from models.buckets import steps_back
from models.pooling import BLOCKED
from models.take import take


def attention_mask(mask: torch.Tensor, n_heads: int, mask_padding: bool,
                   recency: torch.Tensor | None) -> torch.Tensor:
    """The mask of right-aligned histories with validity ``mask`` (B, L).

    Blocked (True, or -1e9) query/key pairs: later positions (causal), (L, L); with
    ``mask_padding`` also the padding left of a short history, (B * heads, L, L). Unmasked, the
    padding's identical keys took a share of attention that grew with the number of pads, so
    the shorter the history, the less its own events counted. Each position still sees itself,
    so a padding row is never empty.

    With ``recency`` (RECENCY_BUCKETS, heads), the open pairs carry each head's learned bias for
    the key's steps back from the query, (B * heads, L, L) floats: a training window's
    positions each see a different prefix, and steps back mean the same to every one of them
    and to serving, where position vectors counted from the window's end do not.
    """
    length = mask.shape[1]
    buckets, blocked = steps_back(length)   # blocked: the future (causal)
    if mask_padding:
        blocked = blocked.unsqueeze(0) | ~mask.unsqueeze(1)
        blocked &= ~torch.eye(length, dtype=torch.bool).unsqueeze(0)
    if recency is None:   # bundles saved before the bias: boolean masks
        return blocked.repeat_interleave(n_heads, dim=0) if mask_padding else blocked
    bias = take(recency, buckets).permute(2, 0, 1)   # (heads, L, L)
    bias = torch.where(blocked.view(-1, 1, length, length), BLOCKED, bias)
    return bias.expand(mask.shape[0], -1, -1, -1).reshape(-1, length, length)


def keep_off_fused_path(encoder: nn.TransformerEncoder) -> None:
    """Serve ``encoder`` on the path training takes. Its layers' fused inference path (eval, no
    grad) reads a float mask as blocked wherever it is not 0 (torch 2.13 CPU): with a bias on
    every pair, every row was blocked and the vectors were NaN. A forward pre-hook is one of
    the conditions that turn that path off."""
    for layer in encoder.layers:
        layer.register_forward_pre_hook(_no_op)


def _no_op(*_) -> None:
    return None
