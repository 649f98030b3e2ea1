"""Histories -> the user tower's tensors. One function, used by training, batch scoring and the
service alike, so what is served is exactly what was trained."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from features.history import Histories


@dataclass(frozen=True)
class HistoryBatch:
    """Right-aligned (B, L) inputs of the user tower and the interest term's event list."""

    items: torch.Tensor       # int64 item rows, 0 where padded
    events: torch.Tensor      # int64 event codes, 0 where padded
    gaps: torch.Tensor        # float32 hours to the next event (to "now" for the last); NaN
    mask: torch.Tensor        # bool, True for real events
    # Interest term: one entry per history event.
    query: torch.Tensor       # int64 history index in the batch
    hist_items: torch.Tensor
    hist_events: torch.Tensor
    steps_back: torch.Tensor
    age_days: torch.Tensor

    def __len__(self) -> int:
        return self.items.shape[0]


def history_batch(hist: Histories, history_len: int) -> HistoryBatch:
    """Vectorized: the last ``history_len`` events of each history, right-aligned."""
    lengths = np.minimum(hist.lengths, history_len)
    n = len(hist)
    ends = hist.offsets[1:]
    starts = ends - lengths
    take = np.repeat(starts - np.concatenate([[0], np.cumsum(lengths)[:-1]]), lengths) + \
        np.arange(lengths.sum())
    rows = np.repeat(np.arange(n), lengths)
    cols = history_len - np.repeat(lengths, lengths) + (np.arange(lengths.sum()) -
                                                         np.repeat(np.cumsum(lengths) - lengths,
                                                                   lengths))
    items = np.zeros((n, history_len), dtype=np.int64)
    events = np.zeros((n, history_len), dtype=np.int64)
    gaps = np.full((n, history_len), np.nan, dtype=np.float32)
    mask = np.zeros((n, history_len), dtype=bool)
    age = hist.age_days[take]
    items[rows, cols] = hist.item_idx[take]
    events[rows, cols] = hist.event_code[take]
    mask[rows, cols] = True
    # Hours to the next event of the same history; the newest event's gap is its age ("now").
    next_age = np.where(hist.steps_back[take] == 0, 0.0, np.r_[age[1:], 0.0])
    gaps[rows, cols] = (age - next_age) * 24.0
    return HistoryBatch(
        items=torch.from_numpy(items), events=torch.from_numpy(events),
        gaps=torch.from_numpy(gaps), mask=torch.from_numpy(mask),
        query=torch.from_numpy(rows.astype(np.int64)),
        hist_items=torch.from_numpy(hist.item_idx[take].astype(np.int64)),
        hist_events=torch.from_numpy(hist.event_code[take].astype(np.int64)),
        steps_back=torch.from_numpy(hist.steps_back[take].astype(np.int64)),
        age_days=torch.from_numpy(age.astype(np.float32)),
    )
