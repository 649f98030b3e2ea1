"""Training from the event store: the ``store:`` data spec (alone or above a base file), the
export, and `make train DATA=store:` on what a shop posted."""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

import pandas as pd
import pytest

from features.event_store import URL_ENV, EventStore
from features.infra import DataError
from features.item_store import add_items
from features.readers import read_events
from features.spec import parse_spec
from features.store_cli import main as store_cli
from tests.conftest import TINY


def canonical(events: pd.DataFrame) -> list[dict]:
    return [{"user_id": r.user_id, "item_id": r.item_id, "event": r.event,
             "ts_ms": int(r.timestamp.value // 1_000_000), "event_id": f"e{i}"}
            for i, r in enumerate(events.itertuples())]


@pytest.fixture
def store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> EventStore:
    url = f"sqlite:///{tmp_path / 'events.db'}"
    monkeypatch.setenv(URL_ENV, url)
    store = EventStore(url)
    yield store
    store.close()


def test_the_store_reads_as_canonical_events(store: EventStore, tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no events in the event store"):
        read_events(parse_spec("store:"))
    t0 = 1_780_000_000_000   # 2026-05-28, in ms
    store.add([{"user_id": "u1", "item_id": "i1", "event": "view", "ts_ms": t0 + 2_000},
               {"user_id": "u1", "item_id": "i2", "event": "purchase", "ts_ms": t0 + 3_000}])
    data = read_events(parse_spec("store:"))
    assert list(data.events["item_id"]) == ["i1", "i2"] and data.has_time
    assert list(data.events["event"]) == ["view", "purchase"]
    base = tmp_path / "base.csv"
    base.write_text("user_id,item_id,event,timestamp\nu0,i9,view,2026-05-01T10:00:00Z\n"
                    "u1,i9,addtocart,2026-05-02T10:00:00Z\n")
    both = read_events(parse_spec(f"store:{store.url}?base={base}"))
    assert list(both.events.sort_values("timestamp")["item_id"]) == ["i9", "i9", "i1", "i2"]
    with pytest.raises(DataError, match="base"):
        parse_spec(f"events:{base}?base={base}")


def test_items_added_while_serving_are_item_metadata(store: EventStore, tmp_path: Path) -> None:
    t0 = 1_780_000_000_000
    store.add([{"user_id": "u1", "item_id": "new-1", "event": "view", "ts_ms": t0}])
    add_items(store, [{"item_id": "new-1", "category_id": "soap", "price": 3.5}])
    items = read_events(parse_spec("store:")).items.set_index("item_id")
    assert items.loc["new-1", "category_id"] == "soap" and items.loc["new-1", "price"] == "3.5"
    base = tmp_path / "base.csv"
    base.write_text("user_id,item_id,event,timestamp\nu0,i9,view,2026-05-01T10:00:00Z\n")
    catalog = tmp_path / "items.csv"   # an explicit items file wins over what was posted
    catalog.write_text("item_id,category_id\nnew-1,bath\ni9,toys\n")
    both = read_events(parse_spec(f"store:{store.url}?base={base}&items={catalog}"))
    assert both.items.set_index("item_id")["category_id"].to_dict() == \
        {"new-1": "bath", "i9": "toys"}


def test_export_writes_every_stored_event(store: EventStore, tmp_path: Path) -> None:
    store.add([{"user_id": "u1", "item_id": "i1", "event": "view", "request_id": "r1"}])
    out = tmp_path / "events.parquet"
    with contextlib.redirect_stdout(io.StringIO()):
        assert store_cli(["export", "--out", str(out)]) == 0
    frame = pd.read_parquet(out)
    assert list(frame.columns) == ["user_id", "item_id", "event", "timestamp", "event_id",
                                   "request_id", "received_at"]
    assert frame["request_id"].tolist() == ["r1"]


@pytest.mark.slow
def test_train_on_what_the_shop_posted(store: EventStore, tmp_path: Path) -> None:
    import training.train as train

    events = read_events(parse_spec("synthetic")).events
    store.add(canonical(events))
    spec = ["--data", "store:"] + [a for a in TINY if a not in ("--data", "synthetic")]
    with contextlib.redirect_stdout(io.StringIO()) as out:
        assert train.main([*spec, "--out", str(tmp_path / "bundle")]) == 0
    assert "store" in out.getvalue()
    # forgetting a shopper changes the data (and the cache key) of the next run
    user = events["user_id"].iloc[0]
    with contextlib.redirect_stdout(io.StringIO()):
        store_cli(["forget", "--user", user, "--by", "test"])
    assert user not in set(read_events(parse_spec("store:")).events["user_id"])
