"""Choosing the ranking stack's weights on validation (``training.stack.choose_weights``), on
seeded data with a known answer: an oracle source and a noise source next to random towers."""

from __future__ import annotations

import numpy as np
import pytest

from features.history import Histories
from features.vocab import Vocabulary
from models.baselines import Baseline
from models.blend import BlendConfig, BlendedRecommender
from tests.helpers import one_event_histories
from training.stack import choose_weights

N_USERS, N_ITEMS = 200, 50


class FixedScores(Baseline):
    """A stand-in source/tower whose scores are given per history position."""

    name = "fixed"

    def __init__(self, scores: np.ndarray) -> None:
        super().__init__(Vocabulary.fit([f"i{i}" for i in range(scores.shape[1])]),
                         np.zeros(scores.shape[1], np.float32), object())
        self.scores = scores.astype(np.float32)

    def score(self, histories: Histories) -> np.ndarray:
        # Each history holds one event whose item row is the user's position.
        return self.scores[histories.item_idx]


@pytest.fixture()
def task():
    rng = np.random.default_rng(0)
    targets = rng.integers(0, N_ITEMS, N_USERS)
    offsets = np.arange(N_USERS + 1, dtype=np.int64)
    oracle = np.zeros((N_USERS, N_ITEMS))
    oracle[np.arange(N_USERS), targets] = 5.0          # knows every answer
    noise = rng.random((N_USERS, N_ITEMS)) * 5.0        # knows nothing
    towers = rng.normal(size=(N_USERS, N_ITEMS))        # weak, random towers
    return targets, (offsets, targets.astype(np.int64)), oracle, noise, towers


def test_useful_source_on_useless_off(task) -> None:
    _, csr, oracle, noise, towers = task
    hist = one_event_histories(N_USERS)
    sources = {"oracle": FixedScores(oracle), "noise": FixedScores(noise)}
    blend = choose_weights(FixedScores(towers), sources, hist, csr, None, BlendConfig())
    assert blend.weights["oracle"] > 0
    assert blend.weights["noise"] == 0.0
    assert blend.valid_ndcg == pytest.approx(1.0)
    assert blend.towers_valid_ndcg < 0.3
    assert blend.active == {"oracle": blend.weights["oracle"]}

    rec = BlendedRecommender(FixedScores(towers), sources, blend)
    assert set(rec.sources) == {"oracle"}
    top, _ = rec.recommend(hist, 1)
    assert (top[:, 0] == csr[1]).all()


def test_exclusions_are_respected_while_choosing(task) -> None:
    targets, csr, oracle, _, towers = task
    hist = one_event_histories(N_USERS)
    # Excluding every target makes any weight useless: the stack stays the towers alone.
    blend = choose_weights(FixedScores(towers), {"oracle": FixedScores(oracle)}, hist, csr, csr,
                           BlendConfig())
    assert blend.weights == {"oracle": 0.0}
    assert blend.valid_ndcg == blend.towers_valid_ndcg == 0.0
