"""`make bench-train` end to end: one process against torchrun on the embedded shop."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import benchmarks.train as train_bench

pytestmark = pytest.mark.slow
TRAIN_ARGS = "--dim 16 --batch-tokens 8192 --valid-users 300 --stack-users 500"


def test_train_bench_measures_one_and_two_processes(
        isolated_outputs: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TAILOR_CACHE", str(isolated_outputs / "cache"))
    assert train_bench.main(["--data", "synthetic", "--epochs", "1", "--nproc", "1", "2",
                             "--train-args", TRAIN_ARGS, "--no-mlflow"]) == 0

    rows = json.loads((isolated_outputs / "results" / "train.json").read_text())["results"]["rows"]
    assert [(r["spec"], r["nproc"], r["epochs"]) for r in rows] == [("synthetic", 1, 1),
                                                                    ("synthetic", 2, 1)]
    one, two = rows
    # Both runs train on every example of the epoch exactly once (ranks split each batch).
    assert one["examples"] == two["examples"] > 10_000
    for row in rows:
        assert row["wall_s"] > row["fit_s"] > 0
        assert row["examples_per_s"] > 0 and 0 < row["ndcg@10"] <= 1
        assert row["peak_mb"] > 200          # torch + torchrec alone take more than that
    assert two["peak_mb"] > one["peak_mb"]   # two ranks hold two copies of the model
    assert one["speedup"] == 1.0 and two["speedup"] == pytest.approx(one["wall_s"] /
                                                                      two["wall_s"])
    body = (isolated_outputs / "BENCHMARKS.md").read_text().split("<!-- bench:train -->")[1]
    assert "| synthetic |" in body.split("<!-- /bench:train -->")[0]


def test_bad_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="at least one value"):
        train_bench.main(["--nproc", "0", "--no-mlflow"])
