"""The ``store:`` data kind: the events a shop posted to the event store (features/event_store.py),
as canonical events, optionally above a canonical events file (``base=PATH``), so
`make train DATA=store:` retrains on what the shop sent."""

from __future__ import annotations

from dataclasses import replace

import pandas as pd

from features.event_store import EventStore
from features.infra import DataError
from features.readers import read_event_file
from features.schema import EventData
from features.spec import ReadOptions
from features.validate import validate_events


def read_store(url: str | None, options: ReadOptions, *, source: str = "") -> EventData:
    """The stored events (and the ``base`` file's beneath them) as canonical events."""
    store = EventStore(url, create=False)
    try:
        stored = store.since()
        where = store.safe_url
    finally:
        store.close()
    frame = pd.DataFrame({"user_id": stored["user_id"], "item_id": stored["item_id"],
                          "event": stored["event"],
                          "timestamp": _epoch_ms(stored["timestamp"])})
    if options.base_path:
        base = read_event_file(options.base_path, replace(options, base_path=None),
                               source=options.base_path)
        if not base.has_time:
            raise DataError("a store's base file needs timestamps (stored events have them)",
                            path=options.base_path)
        below = base.events
        frame = pd.concat([pd.DataFrame({
            "user_id": below["user_id"].astype(str), "item_id": below["item_id"].astype(str),
            "event": below["event"].astype(str),
            "timestamp": _epoch_ms(below["timestamp"])}), frame], ignore_index=True)
    if frame.empty:
        raise DataError("no events in the event store", path=where)
    return validate_events(frame, where, ReadOptions(), source=source or where)


def _epoch_ms(timestamps: pd.Series) -> pd.Series:
    return (timestamps - pd.Timestamp(0, tz="UTC")) // pd.Timedelta(milliseconds=1)
