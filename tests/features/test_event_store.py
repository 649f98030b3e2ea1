"""The event store suite, run on both back-ends against real servers: SQLite (a file) and a
PostgreSQL server started by the tests (tests/postgres.py). No mocks of the database."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pandas as pd
import pytest
import sqlalchemy as sa

from benchmarks.postgres import postgres_server
from features.event_store import EventStore, StoreError, drop_forgotten, user_hash
from features.item_store import add_items, added_items, items_generation
from features.store_schema import SCHEMA_VERSION, metadata


@pytest.fixture(scope="module")
def postgres_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with postgres_server(tmp_path_factory.mktemp("pg")) as url:
        yield url


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request, tmp_path: Path) -> Iterator[EventStore]:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'events.db'}"
    else:
        url = request.getfixturevalue("postgres_url")
    store = EventStore(url)
    yield store
    if request.param == "postgresql":   # one server for the module: empty it between tests
        with store.engine.begin() as conn:
            metadata.drop_all(conn)
    store.close()


def status(store: EventStore, user: str) -> tuple[bool, bool]:
    """(forgotten, opted out), as serving reads them."""
    found = store.shopper(user, None, 0)
    return found.forgotten, found.opted_out


def event(user: str, item: str, kind: str = "view", event_id: str | None = None,
          ts_ms: int | None = None) -> dict:
    return {"user_id": user, "item_id": item, "event": kind, "event_id": event_id,
            "ts_ms": ts_ms}


def impression(request_id: str, user: str, items: list[str], ts_ms: int) -> dict:
    return {"request_id": request_id, "experiment": None, "variant": None, "user_id": user,
            "endpoint": "recommend", "items": items, "ts_ms": ts_ms}


def test_a_retried_batch_is_stored_once(store: EventStore) -> None:
    batch = [event("u1", "i1", event_id="a", ts_ms=1000), event("u1", "i2", event_id="a"),
             event("u1", "i3", "addtocart", ts_ms=2000)]
    first = store.add(batch)
    assert (first.stored, first.duplicates, first.skipped_opted_out) == (2, 1, 0)
    again = store.add(batch[:1])
    assert (again.stored, again.duplicates) == (0, 1)
    assert store.count() == 2


def test_latest_events_of_a_shopper_oldest_first(store: EventStore) -> None:
    store.add([event("u1", f"i{n}", ts_ms=1000 + n) for n in range(5)]
              + [event("u2", "other", ts_ms=1002)])
    latest = store.shopper("u1", since_ms=1001, limit=2)
    assert latest.item_ids == ["i3", "i4"] and latest.ts_ms == [1003, 1004]
    assert store.shopper("u1", None, 200).item_ids == [f"i{n}" for n in range(5)]
    assert store.shopper("nobody", None, 200).item_ids == []
    every = store.since(1002)
    assert list(every["item_id"]) == ["i3", "i4"]
    assert {"user_id", "item_id", "event", "timestamp", "event_id", "request_id",
            "received_at"} <= set(every.columns)
    assert every["timestamp"].iloc[0] == pd.Timestamp(1003, unit="ms", tz="UTC")


def test_forgetting_deletes_and_leaves_an_audit_without_the_id(store: EventStore) -> None:
    store.add([event("alice", "i1"), event("alice", "i2"), event("bob", "i1")])
    assert store.forget("alice", by="privacy-desk") == 2
    assert store.shopper("alice", None, 200).item_ids == [] and store.count() == 1
    assert status(store, "alice") == (True, False) and status(store, "bob") == (False, False)
    audit = store.audit()
    assert list(audit["user_hash"]) == [user_hash("alice")]
    assert audit["forgotten_by"].iloc[0] == "privacy-desk"
    assert "alice" not in audit.astype(str).to_string()
    raw = pd.DataFrame({"user_id": ["alice", "bob", "alice"], "item_id": ["x", "y", "z"]})
    assert list(drop_forgotten(raw, store.forgotten())["user_id"]) == ["bob"]


def test_an_opted_out_shopper_is_not_stored_until_back_in(store: EventStore) -> None:
    store.set_consent("carol", personalized=False)
    skipped = store.add([event("carol", "i1"), event("dave", "i1")])
    assert (skipped.stored, skipped.skipped_opted_out) == (1, 1)
    assert status(store, "carol") == (False, True)
    store.set_consent("carol", personalized=True)
    assert store.add([event("carol", "i1")]).stored == 1 and status(store, "carol") == (False,
                                                                                     False)


def test_concurrent_writers_of_the_same_ids_store_each_once(store: EventStore) -> None:
    batches = [[event(f"u{n % 7}", f"i{n}", event_id=f"e{n}") for n in range(b, b + 50)]
               for b in range(0, 200, 25)]   # overlapping halves
    with ThreadPoolExecutor(max_workers=4) as pool:
        added = list(pool.map(store.add, batches))
    assert sum(a.stored for a in added) == store.count() == 225
    assert sum(a.stored + a.duplicates for a in added) == 400


def test_a_store_of_another_schema_version_is_a_clear_error(store: EventStore) -> None:
    with store.engine.begin() as conn:
        conn.execute(sa.text("UPDATE tailor_schema SET version = 99"))
    with pytest.raises(StoreError, match="schema version 99"):
        EventStore(store.url)
    with store.engine.begin() as conn:
        conn.execute(sa.text(f"UPDATE tailor_schema SET version = {SCHEMA_VERSION}"))


def reopened_as(store: EventStore, version: int, *statements: str) -> EventStore:
    """``store`` turned into what schema ``version`` wrote (``statements`` undo what came
    later), then opened anew: upgraded to this schema."""
    with store.engine.begin() as conn:
        for statement in statements:
            conn.execute(sa.text(statement))
        conn.execute(sa.text(f"UPDATE tailor_schema SET version = {version}"))
    upgraded = EventStore(store.url)
    with upgraded.engine.connect() as conn:
        assert conn.execute(sa.text("SELECT version FROM tailor_schema")).scalar() == \
            SCHEMA_VERSION
    return upgraded


def test_a_version_2_store_gets_the_impressions_index_by_shopper_and_time(
        store: EventStore) -> None:
    """Version 2 indexed impressions by user_id alone, so a shopper's latest impressions were
    found by reading and sorting all of theirs; opened now, the store is indexed by
    (user_id, ts_ms) instead, and its impressions stay."""
    store.add_impressions([impression(f"r{n}", "u1", [f"i{n}"], ts_ms=1000 + n)
                           for n in range(30)])
    upgraded = reopened_as(store, 2, "DROP INDEX impressions_user_time",
                           "CREATE INDEX impressions_user ON impressions (user_id)")
    with upgraded.engine.connect() as conn:
        indexes = {i["name"]: i["column_names"] for i in sa.inspect(conn).get_indexes(
            "impressions")}
    assert indexes.get("impressions_user_time") == ["user_id", "ts_ms"]
    assert "impressions_user" not in indexes
    shown = upgraded.shopper("u1", None, 0, shown_limit=3).shown
    assert shown == [["i29"], ["i28"], ["i27"]]   # the latest, newest first
    upgraded.close()


def test_a_version_1_store_gets_the_catalog_table_and_keeps_its_events(
        store: EventStore) -> None:
    store.add([event("u1", "i1", event_id="kept", ts_ms=1000)])
    upgraded = reopened_as(store, 1, "DROP TABLE catalog_items")
    with upgraded.engine.connect() as conn:
        assert sa.inspect(conn).has_table("catalog_items")
    assert upgraded.count() == 1
    assert add_items(upgraded, [{"item_id": "n1"}]) == 1
    upgraded.close()


def test_added_items_keep_their_first_order_and_their_latest_fields(store: EventStore) -> None:
    assert added_items(store).empty and items_generation(store) == 0
    assert add_items(store, [{"item_id": "n2", "category_id": "soap", "scent": "rose"},
                             {"item_id": "n1", "price": 3.5}]) == 1
    assert add_items(store, [{"item_id": "n2", "category_id": "soap", "scent": "lavender"},
                             {"item_id": "n3"}]) == 2
    got = added_items(store)
    # one post's items share a time, so they come in id order; a re-post keeps the first time
    assert got["item_id"].tolist() == ["n1", "n2", "n3"]
    assert got.set_index("item_id").loc["n2", "scent"] == "lavender"
    assert got.set_index("item_id").loc["n1", "price"] == 3.5
    assert pd.isna(got.set_index("item_id").loc["n3", "scent"])
    assert items_generation(store) == 2


def test_no_store_where_one_is_required(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="no event store"):
        EventStore(f"sqlite:///{tmp_path / 'missing.db'}", create=False)
    with pytest.raises(StoreError, match="cannot"):
        EventStore("nosuchdb://x")
