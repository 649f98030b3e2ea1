"""The serving tests' fixtures, around the session's tiny real bundle (``tests/conftest.py``:
the embedded shop, a small pooling model, saved with its FAISS index, no MLflow).

``towers_engine`` is the same bundle ranked by the towers alone with the interest term off: the
configuration served from the index.
"""

from __future__ import annotations

import copy
from dataclasses import replace
from pathlib import Path

import pytest

from features.readers import read_events
from features.schema import EventData
from features.spec import parse_spec
from features.synthetic import ShopTruth, generate_with_truth
from models.bundle import Bundle, load_index
from serving.engine import Engine, load_engine


@pytest.fixture(scope="session")
def bundle_dir(tiny_bundle: Path) -> Path:
    """The session's tiny bundle (tests/conftest.py), read-only for the serving tests."""
    return tiny_bundle


@pytest.fixture(scope="session")
def second_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Another tiny bundle of the embedded shop (another training seed): a model to swap to."""
    import contextlib
    import io

    import training.train as train
    from tests.conftest import TINY

    out = tmp_path_factory.mktemp("second") / "bundle"
    with pytest.MonkeyPatch.context() as mp, contextlib.redirect_stdout(io.StringIO()):
        mp.setenv("TAILOR_CACHE", str(out.parent / "cache"))
        mp.delenv("RANK", raising=False)
        assert train.main([*TINY, "--train-seed", "7", "--out", str(out)]) == 0
    return out


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
