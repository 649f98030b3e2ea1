"""Scoring a model on another run's test data (training/challenge.py), for promotion."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from features.config import FeatureConfig
from features.pipeline import prepare
from features.spec import parse_spec
from models.bundle import Bundle
from tests.models.recommender_contract import empty_histories
from training.challenge import InThisVocabulary, score_bundle_on


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
        tiny_bundle: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TAILOR_CACHE", str(tmp_path / "cache"))
    bundle = Bundle.load(tiny_bundle)
    prepared = prepare(parse_spec("synthetic"), FeatureConfig(**bundle.info["features"]))
    logged = json.loads((tiny_bundle / "bundle.json").read_text())["metrics"]["test"]
    got = score_bundle_on(bundle, prepared, "ndcg@10")
    assert got == pytest.approx(logged["tailor"]["ndcg@10"], abs=1e-6)
    assert 0.1 < got < 1.0
