"""`make bench-train-step`: the two step variants, side by side, on the embedded shop."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import benchmarks.train_step as step_bench
from training.kernels import native_bf16


def test_step_bench_times_both_variants(isolated_outputs: Path,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TAILOR_CACHE", str(isolated_outputs / "cache"))
    assert step_bench.main(["--data", "synthetic", "--encoders", "pooling", "--steps", "4",
                            "--repeats", "2", "--no-mlflow"]) == 0

    payload = json.loads((isolated_outputs / "results" / "train-step.json").read_text())
    (row,) = payload["results"]["rows"]
    assert (row["data"], row["encoder"]) == ("synthetic", "pooling")
    assert row["items"] > 1000
    assert row["logits"] == ("bfloat16" if native_bf16() else "float32")
    assert [len(v) for v in row["runs"].values()] == [2, 2]
    assert row["before_ex_s"] > 0 and row["after_ex_s"] > 0
    assert row["speedup"] == pytest.approx(row["after_ex_s"] / row["before_ex_s"])
    # Same weights, same batches: after 9 steps the two losses are close, not the same run.
    assert row["after_loss"] == pytest.approx(row["before_loss"], rel=0.05)
    section = (isolated_outputs / "BENCHMARKS.md").read_text().split(
        "<!-- bench:train-step -->")[1].split("<!-- /bench:train-step -->")[0]
    assert "| synthetic |" in section and "speed-up" in section


def test_the_variants_differ_in_their_kernels() -> None:
    before, after = step_bench.variants()
    assert (before.logits, before.fused) == (torch.float32, False)
    assert after.fused and after.logits == (torch.bfloat16 if native_bf16() else torch.float32)


def test_bad_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        step_bench.main(["--steps", "0", "--no-mlflow"])
