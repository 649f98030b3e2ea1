"""User histories: for each user and a cut time, the most recent L events, as jagged arrays.

This is the input of the user tower (training, batch scoring and the service alike), so a user is
described by what they did, not by an id row: a new shopper with a few events gets a history,
and deleting a user's events deletes their influence.

The one builder of shopper histories: ``build_histories`` from event frames (evaluation, batch,
the bundle's stored histories) and ``append_events`` for a request's session events on top of a
stored history (the service), which gives what ``build_histories`` would give on all the events.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from functools import cached_property

import numpy as np
import pandas as pd

from features.schema import EVENT_TYPES
from features.vocab import Vocabulary

NAT_MS = np.iinfo(np.int64).min   # NaT as int64 epoch milliseconds (sorts first, like NaT)
DAY_MS = 86_400_000.0


@dataclass(frozen=True, eq=False)
class Histories:
    """CSR layout: user ``u``'s events are ``[offsets[u], offsets[u+1])``, oldest first."""

    user_ids: np.ndarray      # object array of raw user ids, one per history
    offsets: np.ndarray       # int64, len(user_ids) + 1
    item_idx: np.ndarray      # int64 rows in the item vocabulary (unknown items are dropped)
    event_code: np.ndarray    # int8 index into EVENT_TYPES
    age_days: np.ndarray      # float32 days between the event and the cut; NaN without time
    steps_back: np.ndarray    # int32: 0 for the most recent event, 1 for the one before, ...
    ts_ms: np.ndarray         # int64 epoch milliseconds (UTC) of the event; NaT as NAT_MS

    def __len__(self) -> int:
        return len(self.user_ids)

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    @cached_property
    def positions(self) -> dict[str, int]:
        """Raw user id -> position, for look-ups at the boundary (built once)."""
        return {u: i for i, u in enumerate(self.user_ids)}

    def count(self, mask: np.ndarray) -> np.ndarray:
        """Per history, how many of its events ``mask`` (one bool per event) marks."""
        owner = np.repeat(np.arange(len(self)), self.lengths)
        return np.bincount(owner, weights=mask, minlength=len(self)).astype(np.int64)

    def items_of(self, position: int) -> np.ndarray:
        return self.item_idx[self.offsets[position]:self.offsets[position + 1]]

    def select(self, positions: np.ndarray) -> Histories:
        """The histories at ``positions``, in that order (vectorized gather)."""
        positions = np.asarray(positions, dtype=np.int64)
        return _gather(self, self.user_ids[positions], self.offsets[positions],
                       self.offsets[positions + 1])

    def keep(self, mask: np.ndarray) -> Histories:
        """The same histories with only the events ``mask`` marks (one bool per event); steps
        back are counted anew among the kept events."""
        mask = np.asarray(mask, dtype=bool)
        owner = np.repeat(np.arange(len(self)), self.lengths)[mask]
        offsets = np.r_[0, np.cumsum(np.bincount(owner, minlength=len(self)))].astype(np.int64)
        steps_back = offsets[owner + 1] - 1 - np.arange(len(owner))
        return Histories(self.user_ids, offsets, self.item_idx[mask], self.event_code[mask],
                         self.age_days[mask], steps_back.astype(np.int32), self.ts_ms[mask])

    def of(self, users: np.ndarray | list[str]) -> Histories:
        """The histories of ``users`` (raw ids), in that order; unknown users get empty ones."""
        return _reorder(self, np.asarray(users, dtype=object))


def build_histories(events: pd.DataFrame, item_vocab: Vocabulary, *, max_len: int,
                    cut: pd.Timestamp | None = None, users: np.ndarray | None = None,
                    now: pd.Timestamp | None = None) -> Histories:
    """Most recent ``max_len`` known-item events per user strictly before ``cut``.

    ``events`` must be sorted per user oldest first (``features.split.sort_events``). Without
    ``cut`` every event counts and ages are measured from the newest event in ``events``.
    ``users`` (raw ids) fixes the output order and includes users with no events (empty rows).
    ``now`` is the reference time of the ages (default: ``cut``).
    """
    has_time = events["timestamp"].notna().any()
    if cut is not None and has_time:
        events = events[events["timestamp"] < cut]
    item_idx = item_vocab.lookup(events["item_id"])
    known = item_idx >= 0
    events, item_idx = events[known], item_idx[known]
    per_user = events.groupby("user_id", sort=False, observed=True)
    steps_back = per_user.cumcount(ascending=False).to_numpy()
    keep = steps_back < max_len
    events, item_idx, steps_back = events[keep], item_idx[keep], steps_back[keep]

    ref = None
    if has_time:
        ref = epoch_ms(now) if now is not None else epoch_ms(cut) if cut is not None else \
            data_end_ms(events["timestamp"])
    codes = events["event"].cat.codes.to_numpy(dtype=np.int8) if hasattr(events["event"], "cat") \
        else pd.Categorical(events["event"], categories=EVENT_TYPES).codes.astype(np.int8)
    hist = histories_from_rows(events["user_id"].to_numpy(dtype=object), item_idx, codes,
                               timestamps_ms(events["timestamp"]), now_ms=ref)
    if users is None:
        return hist
    return _reorder(hist, np.asarray(users, dtype=object))


def most_recent_distinct(item_idx: np.ndarray, n: int) -> np.ndarray:
    """The last ``n`` distinct items of one history's ``item_idx`` (oldest first), most recent
    first: a shopper's latest interests."""
    recent = item_idx[::-1]
    _, first = np.unique(recent, return_index=True)
    return recent[np.sort(first)][:n]


def histories_from_rows(user_ids: np.ndarray, item_idx: np.ndarray, event_code: np.ndarray,
                        ts_ms: np.ndarray, *, now_ms: int | None) -> Histories:
    """Histories of event rows already grouped by user, oldest first (one row per event, as
    kept: no cut, no length limit), ages measured from ``now_ms``."""
    starts = run_starts(user_ids)
    offsets = np.r_[starts, len(user_ids)].astype(np.int64)
    steps_back = np.repeat(offsets[1:], np.diff(offsets)) - 1 - np.arange(len(user_ids))
    return Histories(user_ids[starts], offsets, np.asarray(item_idx, dtype=np.int64),
                     np.asarray(event_code, dtype=np.int8), _ages(ts_ms, now_ms),
                     steps_back.astype(np.int32), np.asarray(ts_ms, dtype=np.int64))


def run_starts(values: np.ndarray) -> np.ndarray:
    """Positions where a run of equal values begins (the first row of each user in rows grouped
    by user)."""
    if len(values) == 0:
        return np.array([], dtype=np.int64)
    return np.flatnonzero(np.r_[True, values[1:] != values[:-1]])


def _reorder(hist: Histories, users: np.ndarray) -> Histories:
    """Histories in the order of ``users``; unknown users get empty histories."""
    lookup = pd.Index(hist.user_ids).get_indexer(users)
    # One extra offset so the look-up also indexes when nobody has an event (offsets == [0]).
    offsets = np.append(hist.offsets, hist.offsets[-1])
    starts = np.where(lookup >= 0, offsets[np.maximum(lookup, 0)], 0)
    ends = np.where(lookup >= 0, offsets[np.maximum(lookup, 0) + 1], 0)
    return _gather(hist, users, starts, ends)


def _gather(hist: Histories, user_ids: np.ndarray, starts: np.ndarray,
            ends: np.ndarray) -> Histories:
    """New CSR histories made of the slices ``[starts[i], ends[i])`` of ``hist``."""
    lengths = ends - starts
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    gather = np.repeat(starts - offsets[:-1], lengths) + np.arange(offsets[-1])
    return Histories(user_ids, offsets, hist.item_idx[gather], hist.event_code[gather],
                     hist.age_days[gather], hist.steps_back[gather], hist.ts_ms[gather])


def append_events(stored: Histories, user_id: str, item_idx: np.ndarray, event_code: np.ndarray,
                  ts_ms: np.ndarray, *, max_len: int, now_ms: int | None) -> Histories:
    """``user_id``'s stored history with new events on top, as one history.

    Gives what ``build_histories`` gives on the shopper's events plus the new ones: merged by
    time (NaT first; ties: stored events first, new ones in their order), unknown items
    (``item_idx`` -1) dropped, the last ``max_len`` kept, ages measured from ``now_ms`` or, when
    a new event is later, from 1 ms after the newest one. Arrays only: this is the service's
    per-request path.
    """
    position = stored.positions.get(user_id)
    start, end = (stored.offsets[position], stored.offsets[position + 1]) \
        if position is not None else (0, 0)
    new_ts = np.asarray(ts_ms, dtype=np.int64)
    items = np.concatenate([stored.item_idx[start:end], np.asarray(item_idx, dtype=np.int64)])
    codes = np.concatenate([stored.event_code[start:end], np.asarray(event_code, dtype=np.int8)])
    ts = np.concatenate([stored.ts_ms[start:end], new_ts])
    order = np.argsort(ts, kind="stable")
    known = items[order] >= 0
    order = order[known][-max_len:]
    items, codes, ts = items[order], codes[order], ts[order]
    new_timed = new_ts[new_ts != NAT_MS]
    if len(new_timed):
        latest = int(new_timed.max()) + 1
        now_ms = latest if now_ms is None else max(now_ms, latest)
    length = len(items)
    return Histories(np.array([user_id], dtype=object), np.array([0, length], dtype=np.int64),
                     items, codes, _ages(ts, now_ms),
                     np.arange(length - 1, -1, -1, dtype=np.int32), ts)


def timestamps_ms(timestamps: pd.Series) -> np.ndarray:
    """Epoch milliseconds (UTC) of a timestamp column; NaT as ``NAT_MS``."""
    values = pd.to_datetime(timestamps, utc=True)
    ms = values.dt.tz_localize(None).to_numpy(dtype="datetime64[ms]").view(np.int64)
    return np.where(values.isna().to_numpy(), NAT_MS, ms)


def epoch_ms(ts: pd.Timestamp | datetime) -> int:
    """Epoch milliseconds of one timestamp; one without a zone is UTC."""
    stamp = pd.Timestamp(ts)
    return (stamp.tz_localize("UTC") if stamp.tzinfo is None else stamp).value // 1_000_000


def data_end_ms(timestamps: pd.Series) -> int | None:
    """1 ms after the newest timestamp: "now" for data that ends there; None without time."""
    newest = timestamps.max()
    return None if pd.isna(newest) else epoch_ms(newest) + 1


def _ages(ts_ms: np.ndarray, now_ms: int | None) -> np.ndarray:
    """Days from each event to ``now_ms``, float32; NaN for NaT events or without a now."""
    if now_ms is None:
        return np.full(len(ts_ms), np.nan, dtype=np.float32)
    missing = ts_ms == NAT_MS
    age = ((now_ms - np.where(missing, now_ms, ts_ms)) / DAY_MS).astype(np.float32)
    age[missing] = np.nan
    return age
