"""The endpoint logic in-process (serving/recommend.py) on a tiny trained bundle."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient
from pydantic import ValidationError

from features.history import build_histories
from features.rules import Rules
from features.split import sort_events
from models.bundle import load_index
from models.index import INDEX_FILE
from models.merchandising import Plan, make_plan
from models.ranking import PURCHASE, popular_items, rank
from serving.api import ItemRequest, RecommendRequest, RequestError, SimilarRequest
from serving.engine import Engine, bundle_label, model_version
from serving.recommend import also_bought, model_card, similar_items
from serving.recommend import recommend as serve_recommend
from tests.helpers import history_events, make_events
from tests.serving.conftest import variant


def recommend(engine: Engine, request: RecommendRequest):
    """The endpoint in the model's own order (diversity 0) unless a test asks otherwise: these
    tests check ranking and strategies; merchandising has tests of its own."""
    if request.diversity is None:
        request = request.model_copy(update={"diversity": 0.0})
    return serve_recommend(engine, request)


def model_order(engine: Engine) -> Plan:
    return make_plan(Rules(diversity=0.0), engine.catalog)


def ids(response) -> list[str]:
    return [item.item_id for item in response.items]


def shopper_with_purchase(engine: Engine) -> str:
    """A stored shopper whose recent history holds a purchase of a known item."""
    h = engine.bundle.histories
    purchases = h.count(h.event_code == PURCHASE)
    return str(h.user_ids[np.argmax(purchases)])


def expected(engine: Engine, user: str, k: int, *, exclude_purchased: bool = True,
             extra: pd.DataFrame | None = None) -> list[str]:
    """The bundle's recommender on the same history (built by ``build_histories`` from the
    stored events plus ``extra``), independently of serving.recommend."""
    bundle = engine.bundle
    events = history_events(bundle.histories.of([user]), bundle.item_vocab.ids)
    now = bundle.now
    if extra is not None:
        events = pd.concat([events, extra.assign(seq=len(events) + np.arange(len(extra)))],
                           ignore_index=True)
        now = extra["timestamp"].max() + pd.Timedelta(milliseconds=1)
    hist = build_histories(sort_events(events), bundle.item_vocab,
                           max_len=bundle.model.cfg.history_len, now=now)
    exclude = [hist.item_idx[hist.event_code == PURCHASE]] if exclude_purchased else None
    rows, _ = engine.bundle.recommender.recommend(hist, k, exclude=exclude,
                                                  allowed=engine.available)
    return list(engine.ids[rows[0][rows[0] >= 0]])


# --- the index ships inside the bundle --------------------------------------------------------

def test_training_saves_the_index_into_the_bundle(bundle_dir: Path, engine: Engine) -> None:
    assert (bundle_dir / INDEX_FILE).is_file()
    assert engine.index_source == "bundle" and engine.index.n_items == len(engine.ids)
    # a bundle whose index does not match its vectors gets one built at load
    index, source = load_index(bundle_dir, engine.bundle.item_vectors[:-1])
    assert source == "built at load" and index.n_items == len(engine.ids) - 1


# --- /recommend ---------------------------------------------------------------------------------

def test_returning_shopper_is_ranked_from_their_history(engine: Engine) -> None:
    user = shopper_with_purchase(engine)
    out = recommend(engine, RecommendRequest(user_id=user, k=10))
    assert out.strategy == "history:full_scoring" and out.model_version == engine.version
    assert ids(out) == expected(engine, user, 10)
    assert [i.rank for i in out.items] == list(range(1, 11))
    scores = [i.score for i in out.items]
    assert scores == sorted(scores, reverse=True)
    assert all(i.title and i.category_id for i in out.items)
    # purchased items come back only when asked for
    hist = engine.bundle.histories.of([user])
    bought = set(engine.ids[hist.item_idx[hist.event_code == PURCHASE]])
    assert bought and not bought & set(ids(out))
    keep = recommend(engine, RecommendRequest(user_id=user, k=10, exclude_purchased=False))
    assert ids(keep) == expected(engine, user, 10, exclude_purchased=False)


def test_session_events_change_the_answer_without_retraining(engine: Engine) -> None:
    user = shopper_with_purchase(engine)
    before = recommend(engine, RecommendRequest(user_id=user, k=10))
    # a burst of interest in a category the shopper's recommendations do not show
    shown = {engine.categories[engine.bundle.item_vocab.row(i)] for i in ids(before)}
    other = next(c for c in engine.popular_rows if engine.categories[c] not in shown)
    session = [{"item_id": engine.ids[other], "event": e} for e in ("view", "view", "addtocart")]
    after = recommend(engine, RecommendRequest(user_id=user, k=10, recent_events=session))
    assert after.strategy == "history+session:full_scoring"
    assert ids(after) != ids(before)
    extra = make_events([(user, engine.ids[other], event, engine.bundle.now +
                          pd.Timedelta(milliseconds=i))
                         for i, event in enumerate(("view", "view", "addtocart"))])
    assert ids(after) == expected(engine, user, 10, extra=extra)
    # nothing the engine holds changed: the same request answers as before
    assert ids(recommend(engine, RecommendRequest(user_id=user, k=10))) == ids(before)


def test_unknown_shopper_with_a_session_is_ranked_from_it(engine: Engine) -> None:
    item = engine.ids[engine.popular_rows[5]]
    request = RecommendRequest(user_id="first-visit", k=5, recent_events=[
        {"item_id": item, "event": "view", "timestamp": "2026-07-01T10:00:00Z"},
        {"item_id": item, "event": "purchase", "timestamp": 1782900060}])
    out = recommend(engine, request)
    assert out.strategy == "session:full_scoring" and len(out.items) == 5
    assert item not in ids(out)  # bought in the session
    popular = recommend(engine, RecommendRequest(user_id="first-visit", k=5))
    assert ids(out) != ids(popular)


def test_unknown_shopper_without_events_gets_popular_items(engine: Engine) -> None:
    out = recommend(engine, RecommendRequest(user_id="nobody-at-all", k=7))
    rows, counts = popular_items(engine.bundle)
    assert out.strategy == "popular" and ids(out) == list(engine.ids[rows[:7]])
    assert [i.score for i in out.items] == list(counts[:7])
    # session events on items the model does not know leave nothing to rank from either
    unknown = recommend(engine, RecommendRequest(user_id="nobody-at-all", k=7, recent_events=[
        {"item_id": "no-such-item", "event": "view"}]))
    assert unknown.strategy == "popular" and ids(unknown) == ids(out)


def test_category_narrows_every_strategy(engine: Engine) -> None:
    category = engine.categories[engine.popular_rows[0]]
    out = recommend(engine, RecommendRequest(user_id="nobody-at-all", k=5, category=category))
    assert out.strategy == "popular:category"
    assert {i.category_id for i in out.items} == {category}
    in_category = [r for r in engine.popular_rows if engine.categories[r] == category]
    assert ids(out) == list(engine.ids[in_category[:5]])
    parent = engine.parents[engine.popular_rows[0]]
    user = shopper_with_purchase(engine)
    mine = recommend(engine, RecommendRequest(user_id=user, k=5, category=parent))
    assert mine.strategy.startswith("history")
    rows = [engine.bundle.item_vocab.row(i) for i in ids(mine)]
    assert len(rows) == 5 and {engine.parents[r] for r in rows} == {parent}
    with pytest.raises(RequestError) as err:
        recommend(engine, RecommendRequest(user_id=user, category="no-such-category"))
    assert err.value.status == 404 and err.value.field == "category"


def test_exclusions_and_unavailable_items_never_come_back(engine: Engine) -> None:
    user = shopper_with_purchase(engine)
    top = ids(recommend(engine, RecommendRequest(user_id=user, k=10)))
    out = recommend(engine, RecommendRequest(user_id=user, k=10, exclude_items=top[:3] + ["zz"]))
    assert ids(out)[:7] == top[3:]
    # mark the shopper's favourites and the most popular items unavailable
    items = engine.bundle.items.copy()
    gone = [engine.bundle.item_vocab.row(i) for i in top[:5]] + list(engine.popular_rows[:5])
    items.loc[gone, "available"] = False
    shop = variant(engine, items=items)
    assert not set(engine.ids[gone]) & set(ids(recommend(shop, RecommendRequest(user_id=user))))
    assert not set(engine.ids[gone]) & set(ids(recommend(shop, RecommendRequest(user_id="new"))))


def test_index_path_ranks_exactly_like_the_towers(towers_engine: Engine) -> None:
    engine = towers_engine
    assert engine.method == "index"
    users = sorted(engine.known_users)[:300]
    hist = engine.bundle.histories.of(users)
    allowed = engine.available.copy()
    allowed[engine.popular_rows[:50]] = False
    exclude = [hist.items_of(i) for i in range(len(users))]
    got = rank(engine, hist, 20, exclude=exclude, allowed=allowed, plan=model_order(engine))
    want_rows, want_scores = engine.recommender.recommend(hist, 20, exclude=exclude,
                                                          allowed=allowed)
    assert got.personal.all()
    np.testing.assert_allclose(got.scores, want_scores, rtol=1e-4, atol=1e-4)
    same = (got.rows == want_rows).mean()
    assert same > 0.99   # equal up to the order of exactly tied scores
    out = recommend(engine, RecommendRequest(user_id=users[0], k=5))
    assert out.strategy == "history:index"


# --- /also_bought and /similar_items ------------------------------------------------------------

def test_also_bought_a_printer_starts_with_its_ink(engine: Engine, shop) -> None:
    _, truth = shop
    out = also_bought(engine, ItemRequest(item_id=truth.printer_item, k=30))
    assert out.items[0].item_id == truth.printer_ink and out.items[0].source == "bought_together"
    assert out.strategy == "bought_together+embedding" and len(out.items) == 30
    assert truth.printer_item not in ids(out) and len(set(ids(out))) == 30
    sources = [i.source for i in out.items]
    n_pairs = sources.count("bought_together")
    assert sources == ["bought_together"] * n_pairs + ["embedding"] * (30 - n_pairs)
    table = engine.bundle.bought_together
    pairs = table[table["item_id"] == truth.printer_item]
    assert ids(out)[:n_pairs] == list(pairs["other_item_id"])[:n_pairs]
    assert all(engine.available[engine.bundle.item_vocab.row(i)] for i in ids(out))


def test_also_bought_without_pairs_is_embedding_neighbours(engine: Engine) -> None:
    counts = np.diff(engine.bt_offsets)
    lonely = engine.ids[int(np.flatnonzero(counts == 0)[0])]
    out = also_bought(engine, ItemRequest(item_id=lonely, k=5))
    near = similar_items(engine, SimilarRequest(item_id=lonely, k=5))
    assert out.strategy == "embedding" and ids(out) == ids(near)


def test_similar_items_are_the_nearest_available_vectors(engine: Engine) -> None:
    row = int(engine.popular_rows[3])
    out = similar_items(engine, SimilarRequest(item_id=engine.ids[row], k=8))
    vectors = engine.bundle.item_vectors
    cosine = vectors @ vectors[row]
    cosine[row] = -np.inf
    cosine[~engine.available] = -np.inf
    assert ids(out) == list(engine.ids[np.argsort(-cosine, kind="stable")[:8]])
    np.testing.assert_allclose([i.score for i in out.items],
                               np.sort(cosine)[::-1][:8], rtol=1e-5)
    assert out.strategy == "embedding:index"


def test_unknown_item_is_404_naming_the_field(engine: Engine) -> None:
    for handler in (also_bought, similar_items):
        with pytest.raises(RequestError) as err:
            handler(engine, SimilarRequest(item_id="no-such-item"))
        assert err.value.status == 404 and err.value.field == "item_id"
        body = err.value.body()
        assert body["detail"][0]["loc"] == ["item_id"] and "no-such-item" in body["error"]


# --- "the same brand": answers that share attribute values ------------------------------------

def test_similar_items_with_same_share_the_items_values(engine: Engine) -> None:
    parents = engine.bundle.items["parent_category_id"].astype("string").to_numpy(dtype=object)
    row = int(engine.popular_rows[3])
    plain = similar_items(engine, SimilarRequest(item_id=engine.ids[row], k=20))
    out = similar_items(engine, SimilarRequest(item_id=engine.ids[row], k=20,
                                               same=["parent_category_id"]))
    got = engine.rows_of(ids(out))
    assert len(got) == 20 and (parents[got] == parents[row]).all()
    assert out.strategy == "embedding:index:same=parent_category_id"
    # the same ranking, narrowed: the plain answers of that parent come first, in order
    plain_same = [i for i in ids(plain) if parents[engine.item_rows[i]] == parents[row]]
    assert ids(out)[:len(plain_same)] == plain_same
    assert (parents[engine.rows_of(ids(plain))] != parents[row]).any()   # it did narrow


def test_recommend_with_same_keeps_the_shoppers_own_values(engine: Engine) -> None:
    user = shopper_with_purchase(engine)
    hist = engine.bundle.histories.of([user])
    parents = engine.bundle.items["parent_category_id"].astype("string").to_numpy(dtype=object)
    own = set(parents[hist.item_idx])
    out = recommend(engine, RecommendRequest(user_id=user, k=30, same=["parent_category_id"]))
    assert len(out.items) == 30
    assert set(parents[engine.rows_of(ids(out))]) <= own
    # a session item from another parent widens what counts as the shopper's own
    other = next(r for r in engine.popular_rows if parents[r] not in own)
    widened = recommend(engine, RecommendRequest(
        user_id=user, k=200, same=["parent_category_id"],
        recent_events=[{"item_id": engine.ids[other], "event": "view"}]))
    assert parents[other] in set(parents[engine.rows_of(ids(widened))])
    # a shopper without history has no values: nothing matches
    assert recommend(engine, RecommendRequest(user_id="nobody", same=["category_id"])).items == []


def test_same_with_an_unknown_attribute_or_no_value_is_an_error(engine: Engine) -> None:
    item = engine.ids[int(engine.popular_rows[0])]
    with pytest.raises(RequestError) as err:
        similar_items(engine, SimilarRequest(item_id=item, same=["scent"]))
    assert err.value.status == 400 and err.value.field == "same"
    assert "'scent'" in err.value.message and "parent_category_id" in err.value.message
    with pytest.raises(RequestError) as err:
        recommend(engine, RecommendRequest(user_id="nobody", same=["popularity"]))
    assert err.value.status == 400 and "'popularity'" in err.value.message   # derived, not metadata
    items = engine.bundle.items.copy()
    items.loc[int(engine.popular_rows[0]), "category_id"] = pd.NA
    with pytest.raises(RequestError) as err:
        similar_items(variant(engine, items=items), SimilarRequest(item_id=item,
                                                                   same=["category_id"]))
    assert err.value.status == 422 and "'category_id'" in err.value.message


# --- request validation -------------------------------------------------------------------------

@pytest.mark.parametrize(("body", "field"), [
    ({"k": 5}, "user_id"),
    ({"user_id": ""}, "user_id"),
    ({"user_id": "u", "k": 0}, "k"),
    ({"user_id": "u", "k": 1001}, "k"),
    ({"user_id": "u", "k": "5"}, "k"),
    ({"user_id": "u", "k": 2.5}, "k"),
    ({"user_id": "u", "exclude_purchased": "no"}, "exclude_purchased"),
    ({"user_id": "u", "recent_events": [{"item_id": "i1", "event": "click"}]}, "event"),
    ({"user_id": "u", "recent_events": [{"item_id": "i1"}]}, "event"),
    ({"user_id": "u", "recent_events": [{"item_id": "i1", "event": "view",
                                         "timestamp": "yesterday"}]}, "timestamp"),
    ({"user_id": "u", "recent_events": "i1"}, "recent_events"),
    ({"user_id": "u", "kk": 5}, "kk"),
])
def test_bad_requests_name_the_field(body: dict, field: str) -> None:
    with pytest.raises(ValidationError) as err:
        RecommendRequest.model_validate(body)
    assert field in err.value.errors()[0]["loc"]


def test_valid_requests_are_normalized() -> None:
    request = RecommendRequest.model_validate({"user_id": 123, "k": 1000})
    assert request.user_id == "123" and request.k == 1000 and request.exclude_purchased
    assert ItemRequest.model_validate({"item_id": " i1 "}).item_id == "i1"
    # event times pandas and the store can hold, else a 400 naming the field (not a 500)
    for bad in ("9999-12-31T00:00:00", "1000-01-01T00:00:00Z", -1, 10**14):
        with pytest.raises(ValidationError, match="timestamp"):
            RecommendRequest.model_validate({"user_id": "u", "recent_events": [
                {"item_id": "i1", "event": "view", "timestamp": bad}]})
    with pytest.raises(ValidationError):
        ItemRequest.model_validate({"item_id": "i1", "k": 1001})


# --- /model -------------------------------------------------------------------------------------

def test_model_card_reports_version_training_and_test_metrics(engine: Engine) -> None:
    card = model_card(engine)
    assert card.model_version == engine.version
    # no host path on the card: a bundle folder served as MODEL is named by its label, a
    # registered model by its version and alias
    shown = model_card(engine).model_dump_json()
    assert str(engine.bundle.path) not in shown and "bundle_path" not in shown
    assert card.model_version == card.model_ref == bundle_label(engine.bundle.path)
    registered = Engine(engine.bundle, engine.index, version="tailor/1", ref="champion")
    shown = model_card(registered).model_dump_json()
    assert str(engine.bundle.path) not in shown and "bundle_path" not in shown
    assert pd.Timestamp(card.trained_at) <= pd.Timestamp.now(tz="UTC")
    assert 0 < card.test_metrics["tailor"]["ndcg@10"] <= 1
    assert card.index["factory"] == "Flat" and card.index["source"] == "bundle"
    assert card.data["spec"] == "synthetic" and card.items == len(engine.ids)
    assert card.known_shoppers == len(set(engine.bundle.histories.user_ids)) > 0
    assert card.fit["epochs"] == 1 and "history" not in card.fit


def test_model_version_names_registry_versions_else_the_reference(
        bundle_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    # configure() sets MLflow's process-wide URI; put it back for the tests after this one.
    monkeypatch.setattr("mlflow.tracking._tracking_service.utils._tracking_uri", None,
                        raising=False)
    label = model_version(str(bundle_dir), bundle_dir)
    assert label == bundle_label(bundle_dir) and re.fullmatch(r"bundle-[0-9a-f]{12}", label)
    copied = shutil.copytree(bundle_dir, tmp_path / "elsewhere")   # one bundle, one label
    assert model_version(str(copied), copied) == label
    assert model_version("champion", bundle_dir) == "champion"   # no such alias in this store
    assert model_version("0123456789abcdef0123456789abcdef", bundle_dir) == \
        "0123456789abcdef0123456789abcdef"
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    client.create_registered_model("tailor")
    for _ in range(2):
        client.create_model_version("tailor", source=str(bundle_dir))
    client.set_registered_model_alias("tailor", "champion", "1")
    assert model_version("champion", bundle_dir) == "tailor/1"
    assert model_version("2", bundle_dir) == "tailor/2"
