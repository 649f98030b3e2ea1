"""The transformer tower's attention mask (models.attention), on small tensors with known
answers."""

from __future__ import annotations

import copy

import torch
from torch import nn

from models.attention import attention_mask, keep_off_fused_path
from models.buckets import RECENCY_BUCKETS
from models.pooling import BLOCKED

# One short history (two pads, then three events) and one full one.
MASK = torch.tensor([[False, False, True, True, True], [True, True, True, True, True]])


def test_without_padding_masked_the_mask_is_causal_only() -> None:
    blocked = attention_mask(MASK, n_heads=2, mask_padding=False, recency=None)
    assert torch.equal(blocked, torch.triu(torch.ones(5, 5, dtype=torch.bool), diagonal=1))


def test_padding_is_blocked_for_every_head_but_each_position_sees_itself() -> None:
    blocked = attention_mask(MASK, n_heads=2, mask_padding=True, recency=None)
    assert blocked.shape == (4, 5, 5)
    short = blocked[0]   # the first history's first head
    assert torch.equal(blocked[1], short)   # heads share the mask
    assert short[4].tolist() == [True, True, False, False, False]   # pads blocked, no future
    assert short[1].tolist() == [True, False, True, True, True]     # a pad sees itself only
    assert not blocked[2].tril().any()   # the full history: causal only


def test_open_pairs_carry_each_heads_bias_for_their_steps_back() -> None:
    recency = torch.stack([-torch.arange(RECENCY_BUCKETS, dtype=torch.float32),
                           torch.full((RECENCY_BUCKETS,), 0.5)], dim=1)   # (buckets, heads)
    bias = attention_mask(MASK, n_heads=2, mask_padding=True, recency=recency)
    assert bias.shape == (4, 5, 5) and bias.dtype == torch.float32
    # The full history, head 0, last query: keys 4, 3, 2, 1, 0 steps back -> buckets 3, 3, 2,
    # 1, 0 -> biases -3, -3, -2, -1, 0; head 1 is 0.5 everywhere open.
    assert bias[2, 4].tolist() == [-3.0, -3.0, -2.0, -1.0, 0.0]
    assert bias[3, 4].tolist() == [0.5] * 5
    assert bias[2, 0].tolist() == [0.0] + [BLOCKED] * 4        # the future stays blocked
    assert bias[0, 4].tolist() == [BLOCKED, BLOCKED, -2.0, -1.0, 0.0]   # and the padding


def test_a_biased_encoder_serves_what_it_trains() -> None:
    """With a float bias, PyTorch's fused inference path (eval, no grad) blocked every pair and
    returned NaN; kept off it, serving gives the training path's vectors."""
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(16, 2, 32, dropout=0.0, batch_first=True,
                                       norm_first=True)
    encoder = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False).eval()
    recency = torch.randn(RECENCY_BUCKETS, 2)
    bias = attention_mask(MASK, n_heads=2, mask_padding=True, recency=recency)
    x = torch.randn(2, 5, 16)
    trained = encoder(x.requires_grad_(), mask=bias).detach()   # autograd on: never fused
    served = copy.deepcopy(encoder)
    keep_off_fused_path(served)
    with torch.inference_mode():
        out = served(x.detach(), mask=bias)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out, trained)
