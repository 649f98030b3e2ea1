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
