"""Why an item is recommended, read off the ranking's own scores: leave one history item out.

For one shopper's history and the items recommended to them, each distinct history item is
removed in turn (all of its events) and the recommender scores again; an item's reason is the
history item whose removal lowers its score the most. That covers every component at once (the
user tower, the repeat signals, item-kNN in the ranking stack), because it asks the same
``score`` that ranked the list (``score_items``: the same formula over the listed items only).
Cost: one batched scoring of up to ``MAX_ITEMS`` histories over the listed items.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from features.history import Histories, most_recent_distinct
from models.base import Recommender

MAX_ITEMS = 20   # the most recent distinct history items tried


@dataclass(frozen=True)
class HistoryReason:
    item_idx: int       # the history item
    event_code: int     # the shopper's strongest event on it (index into EVENT_TYPES)
    score_drop: float   # the recommended item's score minus its score without that item


def without_each(history: Histories, items: np.ndarray) -> Histories:
    """One history per item of ``items``: ``history`` (a single one) without that item's
    events, steps counted again from the most recent."""
    keep = history.item_idx[None, :] != items[:, None]          # (J, L)
    lengths = keep.sum(axis=1)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    picked = np.nonzero(keep)[1]
    steps = np.concatenate([np.arange(n - 1, -1, -1, dtype=np.int32) for n in lengths]) \
        if len(items) else np.array([], dtype=np.int32)
    return Histories(np.repeat(history.user_ids[:1], len(items)), offsets,
                     history.item_idx[picked], history.event_code[picked],
                     history.age_days[picked], steps, history.ts_ms[picked])


def history_reasons(recommender: Recommender, history: Histories, rows: np.ndarray
                    ) -> list[HistoryReason | None]:
    """For each item row of ``rows`` (recommended to the single ``history``), the history item
    whose removal lowers its score the most; None when no removal lowers it."""
    rows = np.asarray(rows, dtype=np.int64)
    if not len(rows) or not len(history.item_idx):
        return [None] * len(rows)
    # A shopper's latest interests are tried first.
    items = most_recent_distinct(history.item_idx, MAX_ITEMS)
    strongest = np.array([history.event_code[history.item_idx == i].max() for i in items])
    # One scoring call for the whole history (row 0: "without" -1, an item it never holds) and
    # every history without one item; a history left empty has no reason left.
    variants = without_each(history, np.concatenate([[-1], items]))
    left = variants.lengths > 0
    scored = variants if left.all() else variants.select(np.flatnonzero(left))
    got = np.full((len(variants), len(rows)), -np.inf, dtype=np.float32)
    got[left] = recommender.score_items(scored, rows)
    base, scores = got[0], got[1:]
    drop = base[None, :] - scores
    best = np.argmax(drop, axis=0)
    out: list[HistoryReason | None] = []
    for col, j in enumerate(best):
        d = float(drop[j, col])
        out.append(HistoryReason(int(items[j]), int(strongest[j]), d) if d > 0 else None)
    return out
