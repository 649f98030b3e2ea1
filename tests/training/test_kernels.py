"""The training step's kernels: bfloat16 logits where the CPU has them, the fused AdamW."""

from __future__ import annotations

import pytest
import torch

from models.score import score_matrix
from models.two_tower import TwoTowerConfig
from training.kernels import LOGITS_DTYPES, adamw, logits_dtype, native_bf16


def cpuinfo(tmp_path, flags: str):
    path = tmp_path / "cpuinfo"
    path.write_text(f"processor\t: 0\nmodel name\t: Some CPU\nflags\t\t: fpu sse2 {flags}\n\n")
    return path


def test_native_bf16_reads_the_cpu_flags(tmp_path):
    assert native_bf16(cpuinfo(tmp_path, "avx2 avx512f avx512_bf16"))
    other = tmp_path / "amx"
    other.mkdir()
    assert native_bf16(cpuinfo(other, "avx2 amx_tile amx_bf16"))
    plain = tmp_path / "plain"
    plain.mkdir()
    assert not native_bf16(cpuinfo(plain, "avx2 avx512f avx512bw"))  # emulated: slower
    assert not native_bf16(tmp_path / "missing")


def test_logits_dtype_settings():
    assert logits_dtype("float32") == torch.float32
    assert logits_dtype("bfloat16") == torch.bfloat16
    assert logits_dtype("auto") == (torch.bfloat16 if native_bf16() else torch.float32)
    with pytest.raises(ValueError, match="auto, bfloat16, float32"):
        logits_dtype("fp16")
    assert set(LOGITS_DTYPES) == {"auto", "bfloat16", "float32"}


def test_bfloat16_logits_are_float32_and_close_to_the_float32_ones():
    gen = torch.Generator().manual_seed(0)
    cfg = TwoTowerConfig(n_items=500, dim=32)
    users = torch.nn.functional.normalize(torch.randn(40, 32, generator=gen), dim=-1)
    items = torch.nn.functional.normalize(torch.randn(500, 32, generator=gen), dim=-1)
    boosts = (torch.tensor([0, 3]), torch.tensor([7, 9]), torch.tensor([1.5, 2.0]))
    exact = score_matrix(users, items, cfg, boosts)
    rounded = score_matrix(users, items, cfg, boosts, torch.bfloat16)
    assert rounded.dtype == torch.float32
    # Logits span about +-20 (cosine / 0.05); rounding both factors to 8 bits moves them by
    # a few hundredths, and the ranking of clearly different scores not at all.
    assert (rounded - exact).abs().max() < 0.25
    assert not torch.equal(rounded, exact)  # the bfloat16 path really ran
    assert rounded[0, 7] - score_matrix(users[:1], items[7:8], cfg, None, torch.bfloat16)[0, 0] \
        == pytest.approx(1.5, abs=1e-4)
    top_exact, top_rounded = exact.topk(5).indices, rounded.topk(5).indices
    agree = (top_exact[:, 0] == top_rounded[:, 0]).float().mean()
    assert agree > 0.9


def test_fused_adamw_makes_the_unfused_update():
    torch.manual_seed(0)
    a = torch.nn.Linear(8, 4)
    b = torch.nn.Linear(8, 4)
    b.load_state_dict(a.state_dict())
    opts = (adamw(a.parameters(), 1e-2, 0.01),
            torch.optim.AdamW(b.parameters(), lr=1e-2, weight_decay=0.01, foreach=False))
    x = torch.randn(16, 8)
    for _ in range(5):
        for model, opt in zip((a, b), opts, strict=True):
            opt.zero_grad()
            model(x).pow(2).sum().backward()
            opt.step()
    for pa, pb in zip(a.parameters(), b.parameters(), strict=True):
        torch.testing.assert_close(pa, pb)
    assert opts[0].defaults["fused"]
