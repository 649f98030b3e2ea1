"""The ``store:`` data kind: the events a shop posted to the event store (features/event_store.py),
as canonical events, optionally above a canonical events file (``base=PATH``), so
`make train DATA=store:` retrains on what the shop sent; the items added to the catalog while
serving (``features.item_store``) are item metadata beside the base file's (an ``items=`` file
still wins)."""

from __future__ import annotations

from dataclasses import replace

import pandas as pd

from features.event_store import EventStore
from features.infra import DataError
from features.item_store import added_items
from features.readers import merge_items, read_event_file
from features.schema import EventData
from features.spec import ReadOptions
from features.validate import validate_events


def read_store(url: str | None, options: ReadOptions, *, source: str = "") -> EventData:
    """The stored events (and the ``base`` file's beneath them) as canonical events."""
    store = EventStore(url, create=False)
    try:
        stored = store.since()
        added = added_items(store)
        where = store.safe_url
    finally:
        store.close()
    frame = pd.DataFrame({"user_id": stored["user_id"], "item_id": stored["item_id"],
                          "event": stored["event"],
                          "timestamp": _epoch_ms(stored["timestamp"])})
    items = added.astype({c: "string" for c in added.columns if c != "available"})
    if options.base_path:
        base = read_event_file(options.base_path, replace(options, base_path=None),
                               source=options.base_path)
        if not base.has_time:
            raise DataError("a store's base file needs timestamps (stored events have them)",
                            path=options.base_path)
        below = base.events
        items = merge_items(base.items, items) if len(items) else base.items
        frame = pd.concat([pd.DataFrame({
            "user_id": below["user_id"].astype(str), "item_id": below["item_id"].astype(str),
            "event": below["event"].astype(str),
            "timestamp": _epoch_ms(below["timestamp"])}), frame], ignore_index=True)
    if frame.empty:
        raise DataError("no events in the event store", path=where)
    data = validate_events(frame, where, ReadOptions(), source=source or where)
    return replace(data, items=merge_items(data.items, items)) if len(items) else data


def _epoch_ms(timestamps: pd.Series) -> pd.Series:
    return (timestamps - pd.Timestamp(0, tz="UTC")) // pd.Timedelta(milliseconds=1)
