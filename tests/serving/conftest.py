"""One tiny real training run shared by the serving tests (a few seconds of training).

The bundle is trained on the embedded shop with a small pooling model and saved with its FAISS
index (``--out``); nothing is logged to MLflow. ``towers_engine`` is the same bundle ranked by
the towers alone with the interest term off: the configuration served from the index.
"""

from __future__ import annotations

import contextlib
import copy
import io
from dataclasses import replace
from pathlib import Path

import pytest

import training.train as train
from features.readers import read_events
from features.schema import EventData
from features.spec import parse_spec
from features.synthetic import ShopTruth, generate_with_truth
from models.bundle import Bundle
from serving.bundle_index import load_index
from serving.recommend import Engine, load_engine

TINY = ["--data", "synthetic", "--epochs", "1", "--dim", "16", "--encoder", "pooling",
        "--batch-tokens", "8192", "--valid-users", "300", "--stack-users", "500",
        "--no-progress", "--no-mlflow"]


@pytest.fixture(scope="session")
def bundle_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("serving")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TAILOR_CACHE", str(root / "cache"))
        mp.delenv("RANK", raising=False)
        with contextlib.redirect_stdout(io.StringIO()):
            assert train.main([*TINY, "--out", str(root / "bundle")]) == 0
    return root / "bundle"


@pytest.fixture(scope="session")
def engine(bundle_dir: Path) -> Engine:
    return load_engine(str(bundle_dir))


@pytest.fixture(scope="session")
def towers_engine(engine: Engine) -> Engine:
    """The bundle without the ranking stack and with the interest term off."""
    model = copy.deepcopy(engine.bundle.model)
    model.cfg = replace(model.cfg, interest=False)
    model.interest_scale.data.zero_()
    bundle = replace(engine.bundle, model=model, sources={}, blend=None)
    index, _ = load_index(engine.bundle.path, bundle.item_vectors)
    return Engine(bundle, index, version="towers")


@pytest.fixture(scope="session")
def shop() -> tuple[EventData, ShopTruth]:
    return generate_with_truth("small")


@pytest.fixture(scope="session")
def synthetic_events() -> EventData:
    return read_events(parse_spec("synthetic"))


def variant(engine: Engine, **changes: object) -> Engine:
    """The engine of a copy of its bundle with ``changes`` (e.g. other items)."""
    bundle: Bundle = replace(engine.bundle, **changes)
    return Engine(bundle, engine.index, version=engine.version)
