"""A tiny trained bundle for the benchmark tests (a few seconds of training, no MLflow)."""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

import pytest

import training.train as train

TINY = ["--data", "synthetic", "--epochs", "1", "--dim", "16", "--encoder", "pooling",
        "--batch-tokens", "8192", "--valid-users", "300", "--stack-users", "500",
        "--no-progress", "--no-mlflow"]


@pytest.fixture(scope="session")
def tiny_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("bench")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TAILOR_CACHE", str(root / "cache"))
        mp.delenv("RANK", raising=False)
        with contextlib.redirect_stdout(io.StringIO()):
            assert train.main([*TINY, "--out", str(root / "bundle")]) == 0
    return root / "bundle"


@pytest.fixture(autouse=True)
def isolated_outputs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every benchmark test writes its JSON, BENCHMARKS.md and MLflow runs under tmp_path, never
    into the project's own files."""
    import benchmarks.common as common

    monkeypatch.setattr(common, "RESULTS_DIR", tmp_path / "results")
    monkeypatch.setattr(common, "BENCH_MD", tmp_path / "BENCHMARKS.md")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    return tmp_path
