"""`make train > train.log 2>&1`: the file reads as lines (no progress bars, MLflow's included)
and shows where the long steps start and end."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import TINY_MODEL

ROOT = Path(__file__).resolve().parents[2]
PHASES = ("stack", "evaluate")   # the silent steps of a run on the embedded shop


@pytest.mark.slow
def test_a_redirected_run_writes_lines_only(tmp_path: Path) -> None:
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path}/mlflow.db",
           "TAILOR_CACHE": str(tmp_path / "cache")}
    env.pop("RANK", None)
    env.pop("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", None)
    flags = [f for f in TINY_MODEL if f != "--no-progress"]   # the default: bars on a terminal
    log = tmp_path / "train.log"
    with log.open("w") as out:   # a file, as `> train.log 2>&1` gives it
        done = subprocess.run([sys.executable, "-m", "training.train", *flags, "--epochs", "1",
                               "--valid-users", "300", "--stack-users", "500"],
                              cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
                              timeout=600)
    text = log.read_text()
    assert done.returncode == 0, text[-3000:]
    assert "\r" not in text
    assert "registry  tailor v1" in text   # MLflow logged the model: its download bars ran
    lines = text.splitlines()
    for label in PHASES:
        starts = [i for i, line in enumerate(lines) if line.startswith(f"{label:<9} ")
                  and line.endswith(" ...")]
        ends = [i for i, line in enumerate(lines) if line.startswith(f"{label:<9} ")
                and ": done in " in line]
        assert len(starts) == 1 and len(ends) == 1 and starts[0] < ends[0], label
