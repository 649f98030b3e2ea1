"""The ranking stack: weights chosen on validation switch useful signals on and useless ones off."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from features.pipeline import Prepared
from features.vocab import Vocabulary
from models.base import Recommender
from models.blend import (
    BlendConfig,
    BlendedRecommender,
    BlendWeights,
    load_sources,
    save_sources,
    signal,
)
from tests.helpers import one_event_histories
from tests.models.recommender_contract import Planted, RecommenderContract, pairs_prepared

N_USERS, N_ITEMS = 200, 50


def test_signal_is_unit_free_and_saturating() -> None:
    raw = np.array([[0.0, 1.0, 10.0, 100.0, -1.0]])
    assert np.allclose(signal(raw, 10.0), signal(raw * 3, 30.0))
    out = signal(raw, 1.0)[0]
    assert out[0] == 0.0 and out[4] == 0.0 and np.all(np.diff(out[:4]) > 0)
    assert out[3] < 5.0  # log, not linear



def test_sources_round_trip(tmp_path: Path) -> None:
    from models.baselines import ItemKNN, ItemKNNConfig
    from tests.helpers import make_events

    events = make_events([("u1", "a", "purchase"), ("u1", "b", "purchase"),
                          ("u2", "a", "purchase"), ("u2", "b", "purchase"),
                          ("u3", "c", "purchase")], with_time=False)
    vocab = Vocabulary.fit(events["item_id"])
    knn = ItemKNN.fit(events, vocab, config=ItemKNNConfig(shrink=0.0))
    save_sources({"item-knn": knn}, tmp_path / "sources")
    loaded = load_sources(tmp_path / "sources", vocab)["item-knn"]
    assert loaded.config == knn.config
    assert (loaded.similarity != knn.similarity).nnz == 0
    hist = one_event_histories(1)
    assert np.array_equal(loaded.score(hist), knn.score(hist))
    assert BlendWeights(**BlendWeights({"item-knn": 2.0}, {"item-knn": 1.5}).to_dict()).active \
        == {"item-knn": 2.0}


def test_repeat_sources_split_by_event_type(tmp_path: Path) -> None:
    from models.blend import SOURCES, fit_source
    from tests.models.recommender_contract import pairs_prepared, query

    prepared = pairs_prepared()
    hist = query(prepared, (("a1", "view"), ("b2", "addtocart"), ("a3", "view")))
    row = {item: prepared.item_vocab.row(item) for item in ("a1", "b2", "a3", "b4")}
    own = {}
    for name in ("repeat-view", "repeat-cart", "repeat-purchase"):
        scores = fit_source(name, prepared, "test").score(hist)[0]
        own[name] = {item for item, r in row.items() if scores[r] > 1e-6}  # above the fill
    assert own == {"repeat-view": {"a1", "a3"}, "repeat-cart": {"b2"}, "repeat-purchase": set()}
    # Each one round-trips through the bundle with its own settings.
    sources = {name: fit_source(name, prepared, "test") for name in ("repeat-cart", "item-knn")}
    save_sources(sources, tmp_path / "sources")
    loaded = load_sources(tmp_path / "sources", prepared.item_vocab)
    assert loaded["repeat-cart"].config == SOURCES["repeat-cart"][1]
    np.testing.assert_array_equal(loaded["repeat-cart"].score(hist),
                                  sources["repeat-cart"].score(hist))


def test_long_repeat_sources_remember_older_visits() -> None:
    """Three views of a1 20 days before the cut against one view of a3 a day before: a week's
    memory ranks the fresh one first (3 e^(-20/7) = 0.17 < e^(-1/7) = 0.87), a month's the one
    the shopper kept coming back to (3 e^(-20/30) = 1.54 > e^(-1/30) = 0.97)."""
    from features.history import build_histories
    from models.blend import fit_source
    from tests.models.recommender_contract import DAY, HOUR, frame

    prepared = pairs_prepared()
    end = prepared.split.test_start
    rows = [("query-user", "a1", "view", end - 20 * DAY - h * HOUR) for h in (3, 2, 1)]
    rows.append(("query-user", "a3", "view", end - DAY))
    hist = build_histories(frame(rows), prepared.item_vocab, max_len=50, now=end)
    a1, a3 = prepared.item_vocab.row("a1"), prepared.item_vocab.row("a3")
    week = fit_source("repeat-view", prepared, "test").score(hist)[0]
    month = fit_source("repeat-view-long", prepared, "test").score(hist)[0]
    assert week[a3] > week[a1] > 0
    assert month[a1] > month[a3] > 0
    ages = 20 + np.array([3, 2, 1]) / 24
    np.testing.assert_allclose(month[[a1, a3]], [np.exp(-ages / 30).sum(), np.exp(-1 / 30)],
                               rtol=1e-5)
    assert fit_source("repeat-cart-long", prepared, "test").score(hist)[0][a1] < 1e-6  # views


def test_unknown_source_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown ranking-stack source.*repeat-cart"):
        BlendConfig(sources=("repeat", "reapet"))


class TestBlended(RecommenderContract):
    """The ranking stack, the model that is served, through the shared recommender contract: tiny
    trained towers plus item-kNN and sequential item-kNN at fixed weights."""

    PLANTED = (
        Planted("next-after-a-is-b", pairs_prepared, (("a3", "view"),), "b3", within=3),
        Planted("most-recent-pair-leads", pairs_prepared,
                (("a1", "view"), ("b1", "addtocart"), ("a4", "view")), "b4", within=3),
    )

    def make_recommender(self, prepared: Prepared) -> Recommender:
        from models.blend import fit_source
        from models.scoring import recommender_for
        from tests.models.test_two_tower import train

        names = ("item-knn", "seq-item-knn")
        sources = {name: fit_source(name, prepared, "test") for name in names}
        blend = BlendWeights({name: 2.0 for name in names}, {name: 1.0 for name in names})
        rec = recommender_for(train(prepared), prepared.item_features, sources, blend)
        assert isinstance(rec, BlendedRecommender)
        return rec
