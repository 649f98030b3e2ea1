"""Hot model swap (serving/swap.py): a reload request or a moved alias makes every worker load
the new model beside the old one and switch between requests."""

from __future__ import annotations

import gc
import threading
import time
import weakref
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from features.event_store import URL_ENV, EventStore
from serving.api import RecommendRequest, ReloadRequest, RequestError
from serving.engine import Engine, bundle_label, load_engine
from serving.process import free_port, served
from serving.recommend import recommend
from serving.swap import EngineHolder, ModelWatcher, request_reload, settle_heap


@pytest.fixture
def store(tmp_path: Path) -> Iterator[EventStore]:
    store = EventStore(f"sqlite:///{tmp_path / 'events.db'}")
    yield store
    store.close()


def test_a_reload_request_swaps_the_engine(bundle_dir: Path, second_bundle: Path,
                                           store: EventStore) -> None:
    holder = EngineHolder(load_engine(str(bundle_dir)), str(bundle_dir))
    watcher = ModelWatcher(holder, lambda ref: load_engine(ref), store)
    first = holder.engine
    assert not watcher.check()                       # nothing asked: nothing loads
    done = request_reload(store, ReloadRequest(model=str(second_bundle)))
    assert done.generation == 1
    frozen = gc.get_freeze_count()
    assert watcher.check() and holder.engine is not first
    assert gc.get_freeze_count() > frozen            # the new engine is settled (settle_heap)
    # the answers name the bundle by its label, the holder keeps the operator's reference
    assert holder.engine.version == bundle_label(second_bundle)
    assert holder.ref == str(second_bundle)
    assert not watcher.check()                       # handled once
    # a model that does not load leaves the served one in place
    store.bump("reload", str(bundle_dir / "missing"))
    served_now = holder.engine
    with pytest.raises(Exception, match="missing"):
        watcher.check()
    assert holder.engine is served_now
    with pytest.raises(RequestError) as err:
        request_reload(store, ReloadRequest(model="no-such-alias-or-path/x"))
    assert (err.value.status, err.value.field) == (404, "model")


class _Node:
    """An object in a reference cycle, which only the cyclic collector frees."""

    def __init__(self) -> None:
        self.me = self


def test_a_settled_heap_keeps_the_engine_out_of_the_collector(bundle_dir: Path) -> None:
    engine = load_engine(str(bundle_dir))
    settle_heap()
    # the engine's objects are no longer among those a collection walks
    assert gc.get_freeze_count() > 10_000
    walked = {id(o) for o in gc.get_objects()}
    assert id(engine.__dict__) not in walked and id(engine.bundle.__dict__) not in walked
    # what is created afterwards is collected as usual, cycles included
    new = _Node()
    new_alive = weakref.ref(new)
    del new
    gc.collect()
    assert new_alive() is None


def test_a_dropped_engine_leaves_nothing_for_the_collector(bundle_dir: Path) -> None:
    """Frozen objects are freed by reference counting only: an engine with reference cycles
    would leak at every swap. It has none."""
    engine = load_engine(str(bundle_dir))
    recommend(engine, RecommendRequest(user_id="anyone", k=3))   # lazily built parts too
    alive = weakref.ref(engine)
    gc.collect()
    gc.freeze()
    del engine
    assert alive() is None                # freed at once, by reference counting
    gc.unfreeze()
    assert gc.collect() == 0              # and no cycle of it was left behind


def test_a_restarted_worker_keeps_a_reload_asked_since_the_server_started(
        bundle_dir: Path, second_bundle: Path, store: EventStore) -> None:
    store.bump("reload", str(second_bundle))
    asked = store.control("reload")[2]

    def watcher(started_ms: int) -> ModelWatcher:
        holder = EngineHolder(load_engine(str(bundle_dir)), str(bundle_dir))
        return ModelWatcher(holder, lambda ref: load_engine(ref), store,
                            server_started_ms=started_ms)

    restarted = watcher(asked - 60_000)   # the server started before the reload was asked
    assert restarted.check() and \
        restarted.holder.engine.version == bundle_label(second_bundle)
    fresh = watcher(asked + 1)             # a server started after it: the old ask is history
    assert not fresh.check() and fresh.holder.engine.version == bundle_label(bundle_dir)


@pytest.mark.slow
def test_swap_under_load_fails_no_request_and_mixes_no_answers(
        bundle_dir: Path, second_bundle: Path, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(URL_ENV, f"sqlite:///{tmp_path / 'events.db'}")
    user = "swap-visitor"
    session = [{"item_id": "i000010", "event": "view"}, {"item_id": "i000011", "event": "view"}]
    expected: dict[str, list[str]] = {}
    for path in (bundle_dir, second_bundle):
        engine: Engine = load_engine(str(path))
        answer = recommend(engine, RecommendRequest(user_id=user, k=5, recent_events=session))
        expected[engine.version] = [i.item_id for i in answer.items]
    new = bundle_label(second_bundle)
    assert expected[bundle_label(bundle_dir)] != expected[new]

    answers: list[tuple[int, str, list[str]]] = []
    stop = threading.Event()
    counter = iter(range(10**9))

    def load(url: str) -> None:
        with httpx.Client(base_url=url, timeout=30) as http:
            while not stop.is_set():
                # A new visitor each time with the same session: the same answer from one
                # model (a shopper shown the same items again and again would see them demoted)
                r = http.post("/recommend", json={"user_id": f"{user}-{next(counter)}", "k": 5,
                                                  "recent_events": session})
                body = r.json() if r.status_code == 200 else {}
                answers.append((r.status_code, body.get("model_version", ""),
                                [i["item_id"] for i in body.get("items", [])]))

    with served(bundle_dir, free_port(), tmp_path / "serve.log") as server, \
            httpx.Client(base_url=server.url, timeout=30) as http:
        threads = [threading.Thread(target=load, args=(server.url,)) for _ in range(3)]
        for thread in threads:
            thread.start()
        time.sleep(1.0)
        reload = http.post("/admin/reload", json={"model": str(second_bundle)})
        assert reload.status_code == 200, reload.text
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            recent = [version for _, version, _ in answers[-30:]]
            if len(recent) == 30 and set(recent) == {new}:
                break
            time.sleep(0.5)
        stop.set()
        for thread in threads:
            thread.join(timeout=60)
        # Every worker switches within a few seconds: /model, on fresh connections (spread over
        # the workers), shows the new model on every call.
        deadline, shown = time.monotonic() + 60, []
        while time.monotonic() < deadline:
            shown = [httpx.post(f"{server.url}/model", timeout=30).json()["model_version"]
                     for _ in range(8)]
            if set(shown) == {new}:
                break
            time.sleep(0.5)
    assert set(shown) == {new}
    assert answers and all(status == 200 for status, _, _ in answers)
    versions = {version for _, version, _ in answers}
    assert versions == {bundle_label(bundle_dir), new}
    for _, version, items in answers:   # each answer wholly from one model
        assert items == expected[version]
