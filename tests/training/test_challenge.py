"""Scoring a model on another run's test data (training/challenge.py), for promotion."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import training.train as train
from features.config import FeatureConfig
from features.pipeline import prepare
from features.spec import parse_spec
from models.bundle import Bundle
from tests.conftest import TINY
from tests.models.recommender_contract import empty_histories
from training.challenge import InThisVocabulary, champion_saw, per_user_on


class Fixed:
    """A stand-in inner recommender: the same scores for everyone over its 3 items."""

    name = "fixed"
    n_items = 3

    def score(self, histories):
        return np.tile(np.array([0.1, 0.3, 0.2], dtype=np.float32), (len(histories), 1))


def test_scores_land_on_this_vocabularys_rows() -> None:
    # Here: 4 items; row 0 is their item 2, row 1 unknown to them, row 2 their 0, row 3 their 1.
    mapped = InThisVocabulary(Fixed(), np.array([2, -1, 0, 1]))
    scores = mapped.score(empty_histories(2))
    np.testing.assert_array_equal(scores[0], np.array([0.2, -np.inf, 0.1, 0.3], np.float32))
    items, _ = mapped.recommend(empty_histories(1), 4)
    assert items.tolist() == [[3, 0, 2, -1]]      # what they do not know never comes back


def test_a_bundle_scored_on_its_own_data_matches_its_logged_test_metric(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The model of the evaluation (--no-refit): the refitted one has seen the test window.
    monkeypatch.setenv("TAILOR_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("RANK", raising=False)
    folder = tmp_path / "evaluated"
    with contextlib.redirect_stdout(io.StringIO()):
        assert train.main([*TINY, "--no-refit", "--out", str(folder)]) == 0
    bundle = Bundle.load(folder)
    prepared = prepare(parse_spec("synthetic"), FeatureConfig(**bundle.info["features"]))
    logged = json.loads((folder / "bundle.json").read_text())["metrics"]["test"]
    values = per_user_on(bundle, prepared, "ndcg@10")   # what promotion's bootstrap pairs
    assert len(values) == logged["tailor"]["users"]
    got = float(values.mean())
    assert got == pytest.approx(logged["tailor"]["ndcg@10"], abs=1e-6)
    assert 0.1 < got < 1.0


def test_a_refitted_champion_is_not_graded_on_what_it_trained_on() -> None:
    from types import SimpleNamespace

    start = pd.Timestamp("2026-06-10", tz="UTC")
    prepared = SimpleNamespace(split=SimpleNamespace(test_start=start))
    refitted = lambda last: SimpleNamespace(info={"refit": {"last_event": last}})  # noqa: E731
    assert champion_saw(SimpleNamespace(info={}), prepared) is None   # not refitted
    assert champion_saw(refitted("2026-06-09 23:00:00+00:00"), prepared) is None
    assert "ends" in champion_saw(refitted("2026-06-10 08:00:00+00:00"), prepared)
    timeless = SimpleNamespace(split=SimpleNamespace(test_start=None))
    assert champion_saw(refitted(None), timeless) is not None
