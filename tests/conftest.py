"""Fixtures shared across the test packages."""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

import pytest

import training.train as train

# A tiny real model on the embedded shop: small, pooling, big batches (the shared flags), and the
# one-epoch run without MLflow most tests use.
TINY_MODEL = ["--data", "synthetic", "--dim", "16", "--n-layers", "1", "--encoder", "pooling",
              "--batch-tokens", "8192", "--no-progress"]
TINY = [*TINY_MODEL, "--epochs", "1", "--valid-users", "300", "--stack-users", "500",
        "--no-mlflow"]


@pytest.fixture(scope="session")
def tiny_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A bundle (with its FAISS index) trained once per test session (a few seconds)."""
    root = tmp_path_factory.mktemp("tiny")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TAILOR_CACHE", str(root / "cache"))
        mp.delenv("RANK", raising=False)
        with contextlib.redirect_stdout(io.StringIO()):
            assert train.main([*TINY, "--out", str(root / "bundle")]) == 0
    return root / "bundle"
