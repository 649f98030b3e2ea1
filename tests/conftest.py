"""Fixtures shared across the test packages."""

from __future__ import annotations

import contextlib
import gc
import io
from collections.abc import Iterator
from pathlib import Path

import pytest

import training.train as train
from features.event_store import URL_ENV


@pytest.fixture(scope="session", autouse=True)
def own_event_store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The tests' event store: a SQLite file of the session, never the project's own
    (``events/events.db``); servers the tests start inherit it."""
    url = f"sqlite:///{tmp_path_factory.mktemp('store') / 'events.db'}"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(URL_ENV, url)
        yield url


@pytest.fixture(autouse=True)
def unfrozen_heap() -> Iterator[None]:
    """A model swap freezes the heap (``serving.swap.settle_heap``), in a test process too:
    thaw it after each test, so no test inherits another's frozen objects."""
    yield
    gc.unfreeze()


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
