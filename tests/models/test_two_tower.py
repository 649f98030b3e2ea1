"""The two-tower recommender (a tiny model trained for a few epochs) against the shared contract,
plus what is particular to it: user vectors, the interest term and ``recommender_for``."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from features.pipeline import Prepared
from models.base import Recommender
from models.scoring import TwoTowerRecommender, compute_item_vectors, recommender_for
from models.two_tower import TwoTower, TwoTowerConfig
from tests.models.recommender_contract import (
    Planted,
    RecommenderContract,
    empty_histories,
    pairs_prepared,
    query,
)
from training.fit import TrainConfig, fit

# Tiny on purpose: 12 items, dim 16, one layer, six epochs take well under a second.
TRAIN = TrainConfig(epochs=6, batch_tokens=320, lr=1e-2, seed=0, threads=1, progress=False)


def tiny_config(prepared: Prepared, **overrides: object) -> TwoTowerConfig:
    settings = dict(n_items=len(prepared.item_vocab), dim=16, history_len=10, n_layers=1,
                    dropout=0.0)
    return TwoTowerConfig(**{**settings, **overrides})


def train(prepared: Prepared, **overrides: object) -> TwoTower:
    # fit sets torch's thread count for the run (one thread: on a small model more threads only
    # contend); put it back so later tests in the process are not affected.
    threads = torch.get_num_threads()
    try:
        return fit(prepared, tiny_config(prepared, **overrides), TRAIN).model
    finally:
        torch.set_num_threads(threads)


class TestTwoTower(RecommenderContract):
    PLANTED = (
        # Held-out shoppers (never in training): after a_i always came b_i.
        Planted("next-after-a-is-b", pairs_prepared, (("a3", "view"),), "b3", within=3),
        Planted("most-recent-pair-leads", pairs_prepared,
                (("a1", "view"), ("b1", "addtocart"), ("a4", "view")), "b4", within=3),
    )

    def make_recommender(self, prepared: Prepared) -> Recommender:
        return recommender_for(train(prepared), prepared.item_features)


@pytest.fixture(scope="module")
def trained() -> tuple[Prepared, TwoTowerRecommender]:
    p = pairs_prepared()
    rec = TestTwoTower().built(p)   # the fit the contract tests use: trained once
    assert isinstance(rec, TwoTowerRecommender)
    return p, rec


def test_training_beats_an_untrained_model_on_the_planted_pairs(trained) -> None:
    # The planted answer comes from training, not from the interest term or chance: the same
    # architecture untrained does not put b_i first for every a_i.
    p, trained_rec = trained
    rows = [query(p, ((f"a{i}", "view"),)) for i in range(6)]
    want = p.item_vocab.lookup([f"b{i}" for i in range(6)])

    def firsts(rec: Recommender) -> np.ndarray:
        return np.array([rec.recommend(h, 1)[0][0, 0] for h in rows])

    torch.manual_seed(0)
    untrained = recommender_for(TwoTower(tiny_config(p)), p.item_features)
    assert (firsts(trained_rec) == want).sum() >= 5
    assert (firsts(untrained) == want).sum() <= 2


def test_user_vectors_are_unit_length_and_zero_for_empty_histories(trained) -> None:
    p, rec = trained
    hist = query(p, (("a2", "view"), ("b2", "addtocart")))
    vecs = rec.user_vectors(hist)
    assert vecs.shape == (1, 16) and vecs.dtype == np.float32
    assert np.linalg.norm(vecs, axis=1) == pytest.approx(1.0, abs=1e-5)
    np.testing.assert_array_equal(rec.user_vectors(empty_histories(2)), 0.0)
    np.testing.assert_allclose(np.linalg.norm(rec.item_vectors, axis=1), 1.0, atol=1e-5)


def test_score_is_tower_dot_product_plus_interest_on_history_items(trained) -> None:
    p, rec = trained
    hist = query(p, (("a2", "view"), ("b5", "addtocart")))
    tower = rec.user_vectors(hist) @ rec.item_vectors.T / rec.model.cfg.temperature
    extra = rec.score(hist) - tower
    in_history = np.zeros(rec.n_items, dtype=bool)
    in_history[p.item_vocab.lookup(["a2", "b5"])] = True
    # The interest boost touches the history's items only, and it is a boost (log1p > 0 times a
    # scale the training has kept positive on this data).
    np.testing.assert_allclose(extra[0, ~in_history], 0.0, atol=1e-4)
    assert (np.abs(extra[0, in_history]) > 1e-4).all()


def test_interest_off_gives_the_pure_tower_score(trained) -> None:
    p, _ = trained
    model = TwoTower(tiny_config(p, interest=False))
    rec = recommender_for(model, p.item_features)
    hist = query(p, (("a2", "view"), ("b5", "addtocart")))
    tower = rec.user_vectors(hist) @ rec.item_vectors.T / model.cfg.temperature
    np.testing.assert_allclose(rec.score(hist), tower, rtol=1e-5, atol=1e-4)


def test_recommender_for_uses_the_models_item_vectors(trained) -> None:
    p, rec = trained
    np.testing.assert_array_equal(rec.item_vectors, compute_item_vectors(rec.model,
                                                                         p.item_features))
    assert rec.n_items == len(p.item_vocab) and not rec.model.training


def test_history_beyond_history_len_is_cut_to_the_most_recent(trained) -> None:
    # history_len 10: eleven older events in front of the same last ten change nothing.
    p, rec = trained
    last = tuple((f"a{i % 6}", "view") for i in range(10))
    longer = tuple((f"b{i % 6}", "addtocart") for i in range(11)) + last
    a, b = query(p, last), query(p, longer)
    assert a.lengths[0] == 10 and b.lengths[0] == 21
    np.testing.assert_allclose(rec.score(a), rec.score(b), rtol=1e-5, atol=1e-5)
