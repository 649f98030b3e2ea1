"""MLflow as a reviewer reads it: two finished runs, `make mlflow-ui`, the run-compare page in
headless Chromium. The headline metric of both runs must be on the page, with the values the
runs logged, in the runs' order (`benchmarks/mlflow_compare.py`, which also draws the README's
screenshot)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from benchmarks import mlflow_compare


@pytest.mark.slow
def test_compare_page_shows_both_runs_headline_metric(tmp_path: Path) -> None:
    if mlflow_compare.chromium() is None:
        message = "Debian's chromium is not installed: `make install-browser` (make test does)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    found = mlflow_compare.capture(tmp_path / "compare.png", tmp_path / "work")
    assert len(found["run_ids"]) == len(found["shown"]) == len(found["logged"]) == 2
    # The page rounds to 3 decimals below 10 (MLflow's formatMetric).
    for shown, logged in zip(found["shown"], found["logged"], strict=True):
        assert float(shown) == pytest.approx(logged, abs=5e-4), (shown, logged)
    assert found["logged"][0] != found["logged"][1]   # two different runs, each in its column
    assert (tmp_path / "compare.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
