"""Small, hand-written canonical event tables with answers worked out by hand."""

from __future__ import annotations

import pandas as pd

from features.schema import EVENT_DTYPE, TIMESTAMP_DTYPE


def make_events(rows: list[tuple], *, with_time: bool = True, **extra: list) -> pd.DataFrame:
    """rows: (user_id, item_id, event[, 'YYYY-MM-DD HH:MM'])  ->  canonical frame, seq = order."""
    users = [r[0] for r in rows]
    items = [r[1] for r in rows]
    events = [r[2] for r in rows]
    if with_time:
        ts = pd.to_datetime([r[3] for r in rows], utc=True).astype(TIMESTAMP_DTYPE)
    else:
        ts = pd.Series(pd.NaT, index=range(len(rows)), dtype=TIMESTAMP_DTYPE)
    frame = pd.DataFrame({
        "user_id": pd.array(users, dtype="string"),
        "item_id": pd.array(items, dtype="string"),
        "event": pd.Categorical(events, dtype=EVENT_DTYPE),
        "timestamp": pd.Series(ts).reset_index(drop=True),
        "seq": pd.Series(range(len(rows)), dtype="int64"),
    })
    for name, values in extra.items():
        frame[name] = values
    return frame
