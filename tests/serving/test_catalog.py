"""POST /admin/items (serving/catalog.py): a new item is stored, placed at once on the worker that
answers and within seconds on the others, found by /similar_items and recommendable; bad items
are refused whole, naming the field."""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import pytest

from features.event_store import URL_ENV, EventStore
from features.experiments import Experiment, Variant
from features.item_features import metadata_columns
from features.item_store import added_items
from serving.api import RecommendRequest, RequestError, SimilarRequest
from serving.catalog import ItemsRequest, post_items
from serving.engine import Engine, load_engine
from serving.experiments import Runner
from serving.process import free_port, served
from serving.recommend import recommend, similar_items
from serving.swap import EngineHolder, ModelWatcher


@pytest.fixture
def store(tmp_path: Path) -> Iterator[EventStore]:
    store = EventStore(f"sqlite:///{tmp_path / 'events.db'}")
    yield store
    store.close()


def worker(bundle_dir: Path, store: EventStore) -> ModelWatcher:
    """One serving worker's engine holder and watcher (the service's, without HTTP)."""
    holder = EngineHolder(load_engine(str(bundle_dir), store=store), str(bundle_dir))
    return ModelWatcher(holder, lambda ref: load_engine(ref, store=store), store)


def twin_of(engine: Engine, row: int, item_id: str) -> dict:
    """A new item with the metadata of item ``row``, as a shop would post it."""
    meta = engine.bundle.items.iloc[row]
    fields = {c: meta[c] for c in metadata_columns(engine.bundle.items) if pd.notna(meta[c])}
    return {"item_id": item_id, **{k: v.item() if hasattr(v, "item") else v
                                   for k, v in fields.items()}}


def test_a_posted_item_is_served_at_once_and_by_every_worker(bundle_dir: Path,
                                                              store: EventStore) -> None:
    first, second = worker(bundle_dir, store), worker(bundle_dir, store)
    engine = first.holder.engine
    n = len(engine.ids)
    twin = twin_of(engine, 3, "new-soap")
    answer = post_items(first, ItemsRequest(items=[twin, twin_of(engine, 0, engine.ids[0])]))
    assert answer.placed == ["new-soap"] and answer.known == [engine.ids[0]]
    assert answer.stored == 2 and answer.generation == 1
    served = first.holder.engine
    assert served is not engine and served.item_rows["new-soap"] == n
    assert "new-soap" not in engine.item_rows       # requests on the old engine are undisturbed
    # found by /similar_items, in both directions
    near = similar_items(served, SimilarRequest(item_id="new-soap", k=5))
    assert len(near.items) == 5 and "new-soap" not in [i.item_id for i in near.items]
    twin_near = similar_items(served, SimilarRequest(item_id=engine.ids[3], k=10))
    assert "new-soap" in [i.item_id for i in twin_near.items]
    # recommendable: a shopper who carted it is shown it (their own-item signals count it)
    carted = recommend(served, RecommendRequest(
        user_id="new-visitor", k=10, recent_events=[{"item_id": "new-soap", "event": "view"},
                                                     {"item_id": "new-soap",
                                                      "event": "addtocart"}]))
    assert "new-soap" in [i.item_id for i in carted.items]
    # the other worker places it on its next check, and a model loaded later has it too
    assert "new-soap" not in second.holder.engine.item_rows
    assert second.check() and second.holder.engine.item_rows["new-soap"] == n
    assert not second.check()
    assert "new-soap" in load_engine(str(bundle_dir), store=store).item_rows
    assert added_items(store)["item_id"].tolist() == sorted(["new-soap", engine.ids[0]])
    # an item posted as unavailable is in the catalog but never recommended; values of any
    # JSON type are kept as the items file would hold them (text), so later placements work
    hidden = {**twin_of(engine, 3, "hidden-soap"), "available": False, "title": 7}
    assert post_items(first, ItemsRequest(items=[hidden])).placed == ["hidden-soap"]
    served = first.holder.engine
    assert not served.available[served.item_rows["hidden-soap"]]
    near = similar_items(served, SimilarRequest(item_id=engine.ids[3], k=50))
    assert "hidden-soap" not in [i.item_id for i in near.items]
    assert added_items(store).set_index("item_id").loc["hidden-soap", "title"] == "7"


def test_bad_items_are_refused_whole_naming_the_field(bundle_dir: Path, store: EventStore) -> None:
    first = worker(bundle_dir, store)
    with pytest.raises(RequestError) as err:
        post_items(first, ItemsRequest(items=[{"item_id": "ok"},
                                              {"item_id": "bad", "scent": "rose"}]))
    assert (err.value.status, err.value.field) == (400, "items[1].scent")
    assert "unknown item attribute 'scent'" in err.value.message
    assert added_items(store).empty                  # nothing of the batch was stored
    with pytest.raises(RequestError) as err:         # the model's prices are numbers
        post_items(first, ItemsRequest(items=[{"item_id": "x", "price": "cheap"}]))
    assert (err.value.status, err.value.field) == (400, "items[0].price")
    # an item with nothing but its id is placed (no category, no price: NaN, in no range)
    assert post_items(first, ItemsRequest(items=[{"item_id": "bare"}])).placed == ["bare"]
    row = first.holder.engine.item_rows["bare"]
    assert np.isnan(first.holder.engine.catalog.price[row])
    without_store = ModelWatcher(EngineHolder(load_engine(str(bundle_dir)), str(bundle_dir)),
                                 lambda ref: load_engine(ref), None)
    with pytest.raises(RequestError) as err:
        post_items(without_store, ItemsRequest(items=[{"item_id": "x"}]))
    assert (err.value.status, err.value.field) == (503, "store")


@pytest.mark.slow
def test_a_real_server_places_a_posted_item_on_every_worker(
        bundle_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(URL_ENV, f"sqlite:///{tmp_path / 'events.db'}")
    engine = load_engine(str(bundle_dir))
    twin = twin_of(engine, 3, "new-soap")
    with served(bundle_dir, free_port(), tmp_path / "serve.log") as server, \
            httpx.Client(base_url=server.url, timeout=30) as http:
        bad = http.post("/admin/items", json={"items": [{"item_id": "x", "scent": "rose"}]})
        assert bad.status_code == 400 and bad.json()["detail"][0]["loc"] == ["items[0].scent"]
        bad = http.post("/admin/items", json={"items": [{"item_id": "x", "title": {"a": 1}}]})
        assert bad.status_code == 400 and "title" in str(bad.json()["detail"][0]["loc"])
        posted = http.post("/admin/items", json={"items": [twin]})
        assert posted.status_code == 200, posted.text
        assert posted.json()["placed"] == ["new-soap"]
        # every worker: fresh connections spread over them; each finds the item
        deadline, found = time.monotonic() + 60, []
        while time.monotonic() < deadline:
            found = [httpx.post(f"{server.url}/similar_items", timeout=30,
                                json={"item_id": "new-soap", "k": 3}).status_code
                     for _ in range(8)]
            if set(found) == {200}:
                break
            time.sleep(0.5)
        assert set(found) == {200}


def test_an_experiments_other_model_places_a_posted_item_too(bundle_dir: Path, tmp_path: Path,
                                                              store: EventStore) -> None:
    # The experiment's second model is another bundle (here a copy under another path); the
    # served model's variant follows the served engine itself.
    other = str(shutil.copytree(bundle_dir, tmp_path / "other-model"))
    first = worker(bundle_dir, store)
    now = datetime.now(UTC)
    test = Experiment("exp", "recommend", now - timedelta(hours=1), now + timedelta(days=1),
                      (Variant("served", "model", 0.5, str(bundle_dir)),
                       Variant("other", "model", 0.5, other)))
    runner = Runner([test], store, lambda ref: load_engine(ref, store=store),
                    {str(bundle_dir): first.holder.engine})
    first.on_catalog_grew.append(runner.grow_catalog)
    twin = twin_of(first.holder.engine, 3, "new-soap")
    assert "new-soap" not in runner.engines[other].item_rows
    assert post_items(first, ItemsRequest(items=[twin])).placed == ["new-soap"]
    for variant in test.variants:
        assert "new-soap" in runner.engine_for(variant, first.holder.engine).item_rows
    carted = recommend(runner.engines[other], RecommendRequest(
        user_id="new-visitor", k=10, recent_events=[{"item_id": "new-soap", "event": "view"},
                                                     {"item_id": "new-soap",
                                                      "event": "addtocart"}]))
    assert "new-soap" in [i.item_id for i in carted.items]
