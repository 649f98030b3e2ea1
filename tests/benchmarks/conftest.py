"""Benchmark tests never write the project's own results (the tiny bundle: tests/conftest.py)."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(autouse=True)
def isolated_outputs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every benchmark test writes its JSON, BENCHMARKS.md and MLflow runs under tmp_path, never
    into the project's own files."""
    import benchmarks.common as common

    monkeypatch.setattr(common, "RESULTS_DIR", tmp_path / "results")
    monkeypatch.setattr(common, "BENCH_MD", tmp_path / "BENCHMARKS.md")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    return tmp_path
