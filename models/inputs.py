"""The one encoder of the towers' inputs, for training windows (``training/data.py``) and
served histories (``history_batch``) alike, so what is served is exactly what was trained; and
``ItemTable``, every item's inputs of the item tower (category, attribute bag).

A position holds an item row, its event code and its "gap": hours from the event to the event it
predicts (the next one; for the newest event of a served history, "now"). ``encode_positions``
turns right-aligned (B, L) arrays into the tensors ``TwoTower.user_embed`` takes, and ``age_days``
measures the interest term's distance from a history event to the moment it is scored for.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from functools import cached_property

import numpy as np
import pandas as pd
import torch

from features.history import DAY_MS, NAT_MS, Histories
from features.item_attributes import AttributeTable

HOUR_MS = 3_600_000.0


@dataclass(frozen=True)
class TowerInputs:
    """Right-aligned (B, L) inputs of ``TwoTower.user_embed``, in its argument order."""

    items: torch.Tensor       # int64 item rows, 0 where padded
    events: torch.Tensor      # int64 event codes, 0 where padded
    gaps: torch.Tensor        # float32 hours to the predicted event; NaN without time or padded
    mask: torch.Tensor        # bool, True for real events

    def __iter__(self) -> Iterator[torch.Tensor]:
        return iter((self.items, self.events, self.gaps, self.mask))

    def __len__(self) -> int:
        return self.items.shape[0]


@dataclass(frozen=True)
class ItemInputs:
    """Inputs of ``TwoTower.item_embed`` for some items, in its argument order: item rows,
    category rows (-1 unknown), the distinct attribute bags among them (values, and a length per
    bag) and each item's bag."""

    items: torch.Tensor
    categories: torch.Tensor
    attribute_values: torch.Tensor
    attribute_lengths: torch.Tensor
    attribute_sets: torch.Tensor

    def __iter__(self) -> Iterator[torch.Tensor]:
        return iter((self.items, self.categories, self.attribute_values, self.attribute_lengths,
                     self.attribute_sets))


@dataclass(frozen=True)
class ItemTable:
    """Every item's tower inputs (vocabulary order), from ``item_features``."""

    categories: np.ndarray     # int64 category row of each item, -1 unknown
    attributes: AttributeTable

    @classmethod
    def from_features(cls, item_features: pd.DataFrame) -> ItemTable:
        cats = item_features["category_idx"].to_numpy(dtype=np.int64, copy=True) \
            if "category_idx" in item_features else np.full(len(item_features), -1, np.int64)
        return cls(cats, AttributeTable.from_features(item_features))

    def __len__(self) -> int:
        return len(self.categories)

    @cached_property
    def all(self) -> ItemInputs:
        """Every item's inputs (a full-catalog softmax takes them at each step)."""
        return self.take()

    def take(self, rows: np.ndarray | torch.Tensor | None = None) -> ItemInputs:
        """The inputs of items ``rows`` (every item when None)."""
        rows = np.arange(len(self), dtype=np.int64) if rows is None else \
            np.asarray(rows, dtype=np.int64)
        values, lengths, sets = self.attributes.take_sets(rows)
        return ItemInputs(torch.from_numpy(rows.copy()), torch.from_numpy(self.categories[rows]),
                          torch.from_numpy(values), torch.from_numpy(lengths),
                          torch.from_numpy(sets))


def encode_positions(items: np.ndarray, events: np.ndarray, times_ms: np.ndarray,
                     next_ms: np.ndarray) -> TowerInputs:
    """(B, L) item rows (-1 padded), event codes, each event's time and the time of the event it
    predicts (epoch ms as float, NaN without time) -> the user tower's tensors."""
    mask = items >= 0
    gaps = np.where(mask, (next_ms - times_ms) / HOUR_MS, np.nan).astype(np.float32)
    return TowerInputs(items=torch.from_numpy(np.where(mask, items, 0).astype(np.int64)),
                       events=torch.from_numpy(np.where(mask, events, 0).astype(np.int64)),
                       gaps=torch.from_numpy(gaps), mask=torch.from_numpy(mask))


def age_days(query_ms: np.ndarray, event_ms: np.ndarray) -> np.ndarray:
    """Days from each history event to the moment its history is scored for (float32)."""
    return ((query_ms - event_ms) / DAY_MS).astype(np.float32)


@dataclass(frozen=True)
class HistoryBatch:
    """A batch of served histories: the tower's inputs and the interest term's event list."""

    inputs: TowerInputs
    # Interest term: one entry per history event.
    query: torch.Tensor       # int64 history index in the batch
    hist_items: torch.Tensor
    hist_events: torch.Tensor
    steps_back: torch.Tensor
    age_days: torch.Tensor

    def __len__(self) -> int:
        return len(self.inputs)


def history_batch(hist: Histories, history_len: int, *, trim: bool = False) -> HistoryBatch:
    """Vectorized: the last ``history_len`` events of each history, right-aligned. ``trim``: as
    wide as the longest of them rather than ``history_len``, for a tower whose output ignores the
    padding (``TwoTower.ignores_padding``); the positions keep their ids, counted from the right."""
    lengths = np.minimum(hist.lengths, history_len)
    n = len(hist)
    # A served history is short (Sports: 8 events on average): at the full width the tower's
    # work per request is mostly padding.
    width = max(int(lengths.max(initial=0)), 1) if trim else history_len
    ends = hist.offsets[1:]
    starts = ends - lengths
    take = np.repeat(starts - np.concatenate([[0], np.cumsum(lengths)[:-1]]), lengths) + \
        np.arange(lengths.sum())
    rows = np.repeat(np.arange(n), lengths)
    cols = width - np.repeat(lengths, lengths) + (np.arange(lengths.sum()) -
                                                  np.repeat(np.cumsum(lengths) - lengths, lengths))
    shape = (n, width)
    items = np.full(shape, -1, dtype=np.int64)
    events = np.zeros(shape, dtype=np.int64)
    times = np.full(shape, np.nan)
    next_times = np.full(shape, np.nan)
    ts = hist.ts_ms[take]
    age = hist.age_days[take]
    event_ms = np.where(ts == NAT_MS, np.nan, ts.astype(np.float64))
    # Each event predicts the next one of its history; the newest predicts "now" (its age on).
    newest = hist.steps_back[take] == 0
    predicted = np.where(newest, event_ms + age.astype(np.float64) * DAY_MS,
                         np.r_[event_ms[1:], np.nan])
    items[rows, cols] = hist.item_idx[take]
    events[rows, cols] = hist.event_code[take]
    times[rows, cols] = event_ms
    next_times[rows, cols] = predicted
    return HistoryBatch(
        inputs=encode_positions(items, events, times, next_times),
        query=torch.from_numpy(rows.astype(np.int64)),
        hist_items=torch.from_numpy(hist.item_idx[take].astype(np.int64)),
        hist_events=torch.from_numpy(hist.event_code[take].astype(np.int64)),
        steps_back=torch.from_numpy(hist.steps_back[take].astype(np.int64)),
        age_days=torch.from_numpy(age.astype(np.float32)),
    )
