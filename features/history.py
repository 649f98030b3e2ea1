"""User histories: for each user and a cut time, the most recent L events, as jagged arrays.

This is the input of the user tower (training, batch scoring and the service alike), so a user is
described by what they did, not by an id row: a new shopper with a few events gets a history,
and deleting a user's events deletes their influence.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from features.schema import EVENT_TYPES
from features.vocab import Vocabulary


@dataclass(frozen=True, eq=False)
class Histories:
    """CSR layout: user ``u``'s events are ``[offsets[u], offsets[u+1])``, oldest first."""

    user_ids: np.ndarray      # object array of raw user ids, one per history
    offsets: np.ndarray       # int64, len(user_ids) + 1
    item_idx: np.ndarray      # int64 rows in the item vocabulary (unknown items are dropped)
    event_code: np.ndarray    # int8 index into EVENT_TYPES
    age_days: np.ndarray      # float32 days between the event and the cut; NaN without time
    steps_back: np.ndarray    # int32: 0 for the most recent event, 1 for the one before, ...

    def __len__(self) -> int:
        return len(self.user_ids)

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def position(self) -> dict[str, int]:
        """Raw user id -> position, for look-ups at the boundary."""
        return {u: i for i, u in enumerate(self.user_ids)}

    def items_of(self, position: int) -> np.ndarray:
        return self.item_idx[self.offsets[position]:self.offsets[position + 1]]

    def select(self, positions: np.ndarray) -> Histories:
        """The histories at ``positions``, in that order (vectorized gather)."""
        positions = np.asarray(positions, dtype=np.int64)
        return _gather(self, self.user_ids[positions], self.offsets[positions],
                       self.offsets[positions + 1])


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

    if has_time:
        ref = now if now is not None else cut if cut is not None else \
            events["timestamp"].max() + pd.Timedelta(milliseconds=1)
        age = ((ref - events["timestamp"]) / pd.Timedelta(days=1)).to_numpy(dtype=np.float32)
    else:
        age = np.full(len(events), np.nan, dtype=np.float32)
    codes = events["event"].cat.codes.to_numpy(dtype=np.int8) if hasattr(events["event"], "cat") \
        else pd.Categorical(events["event"], categories=EVENT_TYPES).codes.astype(np.int8)

    user_col = events["user_id"].to_numpy(dtype=object)
    # Rows are grouped by user already (sorted input): boundaries where the user changes.
    change = np.flatnonzero(np.r_[True, user_col[1:] != user_col[:-1]]) if len(user_col) else \
        np.array([], dtype=np.int64)
    present = user_col[change]
    bounds = np.r_[change, len(user_col)].astype(np.int64)
    hist = Histories(present, bounds, item_idx.astype(np.int64), codes, age,
                     steps_back.astype(np.int32))
    if users is None:
        return hist
    return _reorder(hist, np.asarray(users, dtype=object))


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
                     hist.age_days[gather], hist.steps_back[gather])
