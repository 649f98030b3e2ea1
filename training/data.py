"""Training examples: next-item prediction over each shopper's timeline.

A user's train-fold events e_0..e_{n-1} (oldest first) give targets e_1..e_{n-1}, each predicted
from the events before it. Long timelines are cut into windows of L targets, right-aligned like
the histories the service sees, so one causal forward pass scores L examples.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from features.history import run_starts
from features.vocab import Vocabulary
from models.inputs import TowerInputs, age_days, encode_positions


@dataclass(frozen=True)
class Windows:
    inputs: np.ndarray         # (W, L) int64 item rows, -1 padded
    events: np.ndarray         # (W, L) int64 event codes of the inputs
    input_time: np.ndarray     # (W, L) float64 ms of each input (NaN without time)
    targets: np.ndarray        # (W, L) int64 item row predicted after each input, -1 if none
    target_events: np.ndarray  # (W, L) int64 event code of the target
    target_time: np.ndarray    # (W, L) float64 ms of the target (NaN without time)

    def __len__(self) -> int:
        return self.inputs.shape[0]

    @property
    def n_examples(self) -> int:
        return int((self.targets >= 0).sum())


def timeline_order(train: pd.DataFrame, ordered: bool, rng: np.random.Generator) -> pd.DataFrame:
    """Ordered data keeps its order. Unordered multi-behaviour logs (no time, a predefined split)
    are shuffled within each behaviour and laid out views -> carts -> purchases: a fresh
    permutation per epoch, and the layout the evaluation's history has."""
    if ordered:
        return train
    key = rng.random(len(train))
    codes = train["event"].cat.codes.to_numpy()
    order = np.lexsort((key, codes, train["user_id"].to_numpy(dtype=object)))
    return train.iloc[order]


def make_windows(train: pd.DataFrame, item_vocab: Vocabulary, history_len: int) -> Windows:
    """``train`` sorted per user, oldest first; every item must be in ``item_vocab``."""
    users = train["user_id"].to_numpy(dtype=object)
    items = item_vocab.lookup(train["item_id"])
    events = train["event"].cat.codes.to_numpy().astype(np.int64)
    has_time = bool(train["timestamp"].notna().any())
    times = (train["timestamp"].astype("int64").to_numpy().astype(np.float64) if has_time
             else np.full(len(train), np.nan))
    starts = run_starts(users)
    n_per_user = np.diff(np.r_[starts, len(users)])
    position = np.arange(len(users)) - np.repeat(starts, n_per_user)
    count = np.repeat(n_per_user, n_per_user)
    win_per_user = np.maximum(0, (n_per_user - 1 + history_len - 1) // history_len)
    win_offset = np.repeat(np.r_[0, np.cumsum(win_per_user)[:-1]], n_per_user)
    n_windows = int(win_per_user.sum())

    is_target = position >= 1
    p = np.flatnonzero(is_target)           # global row of each target
    r = count[p] - 1 - position[p]          # targets from the end
    w = win_offset[p] + r // history_len
    col = history_len - 1 - r % history_len
    shape = (n_windows, history_len)
    out = Windows(
        inputs=np.full(shape, -1, dtype=np.int64), events=np.zeros(shape, dtype=np.int64),
        input_time=np.full(shape, np.nan),
        targets=np.full(shape, -1, dtype=np.int64), target_events=np.zeros(shape, np.int64),
        target_time=np.full(shape, np.nan))
    out.inputs[w, col] = items[p - 1]
    out.events[w, col] = events[p - 1]
    out.input_time[w, col] = times[p - 1]
    out.targets[w, col] = items[p]
    out.target_events[w, col] = events[p]
    out.target_time[w, col] = times[p]
    return out


@dataclass(frozen=True)
class WindowBatch:
    inputs: TowerInputs            # every position predicts its target (models/inputs.py)
    targets: torch.Tensor          # (P,) item rows of the positions with a target
    target_events: torch.Tensor    # (P,)
    position: torch.Tensor         # (P,) flat index b * L + col of each target position
    # Interest term pairs: (target position p, earlier input j in the same window).
    pair_query: torch.Tensor
    pair_items: torch.Tensor
    pair_events: torch.Tensor
    pair_steps: torch.Tensor
    pair_age_days: torch.Tensor


def collate(win: Windows, idx: np.ndarray) -> WindowBatch:
    """Tensors of windows ``idx``, trimmed on the left to their longest real length."""
    full = win.inputs.shape[1]
    length = max(1, int(window_lengths(win)[idx].max())) if len(idx) else 1
    cols = slice(full - length, full)
    win = Windows(*(getattr(win, f)[:, cols] for f in Windows.__dataclass_fields__))
    inputs = win.inputs[idx]
    mask = inputs >= 0
    target_time = win.target_time[idx]
    input_time = win.input_time[idx]
    targets = win.targets[idx]
    has_target = targets >= 0
    flat_pos = np.flatnonzero(has_target.ravel())
    # Position p (a target) sees inputs j <= p of its window: all pairs in the lower triangle.
    qi, ji = np.tril_indices(length)
    b = np.repeat(np.arange(len(idx)), len(qi))
    q = np.tile(qi, len(idx))
    j = np.tile(ji, len(idx))
    keep = has_target[b, q] & mask[b, j]
    b, q, j = b[keep], q[keep], j[keep]
    query_rank = np.full(len(idx) * length, -1, dtype=np.int64)
    query_rank[flat_pos] = np.arange(len(flat_pos))
    return WindowBatch(
        inputs=encode_positions(inputs, win.events[idx], input_time, target_time),
        targets=torch.from_numpy(targets.ravel()[flat_pos]),
        target_events=torch.from_numpy(win.target_events[idx].ravel()[flat_pos]),
        position=torch.from_numpy(flat_pos),
        pair_query=torch.from_numpy(query_rank[b * length + q]),
        pair_items=torch.from_numpy(inputs[b, j]),
        pair_events=torch.from_numpy(win.events[idx][b, j]),
        pair_steps=torch.from_numpy((q - j).astype(np.int64)),
        pair_age_days=torch.from_numpy(age_days(target_time[b, q], input_time[b, j])),
    )


def window_lengths(win: Windows) -> np.ndarray:
    """Number of real (non-padded) input positions of each window."""
    return (win.inputs >= 0).sum(axis=1)


def length_bucketed_batches(win: Windows, batch_tokens: int,
                            rng: np.random.Generator) -> list[np.ndarray]:
    """Batches of windows of similar length, about ``batch_tokens`` padded positions each.

    Most shoppers have short timelines: padding every window to L would make the encoder spend
    most of its time on padding. Windows are sorted by length (random tie-break), cut into
    batches whose padded size stays near the budget, and the batch order is shuffled.
    """
    lengths = window_lengths(win)
    order = np.lexsort((rng.random(len(lengths)), lengths))
    sorted_len = np.maximum(lengths[order], 1)
    batches, start = [], 0
    while start < len(order):
        # Sorted ascending: the last window of a batch sets its padded length.
        size = max(1, batch_tokens // int(sorted_len[min(start + 1, len(order) - 1)]))
        end = min(len(order), start + size)
        while end - start > 1 and (end - start) * int(sorted_len[end - 1]) > batch_tokens:
            end -= 1
        batches.append(order[start:end])
        start = end
    return [batches[i] for i in rng.permutation(len(batches))]


def sample_windows(win: Windows, max_examples: int, rng: np.random.Generator) -> Windows:
    """A random subset of whole windows holding about ``max_examples`` targets (all if fewer).

    Big logs (millions of view events) would make one epoch take longer than the whole
    training budget; a fresh sample per epoch still visits every window over the epochs.
    """
    if max_examples <= 0 or win.n_examples <= max_examples:
        return win
    order = rng.permutation(len(win))
    per_window = (win.targets[order] >= 0).sum(axis=1)
    take = np.sort(order[:int(np.searchsorted(np.cumsum(per_window), max_examples)) + 1])
    return Windows(*(getattr(win, f)[take] for f in Windows.__dataclass_fields__))
