"""The one contract every recommender shares (two-tower and baselines alike).

A recommender is fitted on a prepared data set and then scores users described by their
histories (``features.history.Histories``), never by an id row, so a shopper the model has not
seen is scored the same way as one it has. ``recommend`` returns ``(item_idx, scores)``: rows of
the item vocabulary, best first, and their scores; -1 / -inf pad rows when fewer than ``k``
items are allowed.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np
import torch

from features.history import Histories


class Recommender(ABC):
    name: str = "recommender"

    @property
    @abstractmethod
    def n_items(self) -> int:
        """Size of the item vocabulary the scores are over."""

    @abstractmethod
    def score(self, histories: Histories) -> np.ndarray:
        """Dense float32 scores, shape (len(histories), n_items); higher is better."""

    def score_items(self, histories: Histories, rows: np.ndarray) -> np.ndarray:
        """The scores of the distinct item ``rows`` only, (len(histories), len(rows)): what
        ``score`` gives in those columns. Explanations score a few items for many histories;
        recommenders override this where the columns alone cost less."""
        return self.score(histories)[:, np.asarray(rows, dtype=np.int64)]

    def recommend(self, histories: Histories, k: int, *, exclude: list[np.ndarray] | None = None,
                  allowed: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` item rows per history.

        exclude: per history, item rows that must not come back (e.g. already bought).
        allowed: boolean mask over items (e.g. available items); others never come back.
        """
        scores = self.score(histories).astype(np.float32, copy=False)
        return top_k(scores, k, exclude=exclude, allowed=allowed)


def top_k(scores: np.ndarray, k: int, *, exclude: list[np.ndarray] | None = None,
          allowed: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Row-wise top-k of a dense score matrix with masking (deterministic on CPU)."""
    n_rows, n_items = scores.shape
    scores = np.array(scores, dtype=np.float32, copy=True)
    if allowed is not None:
        scores[:, ~np.asarray(allowed, dtype=bool)] = -np.inf
    if exclude is not None:
        rows = np.repeat(np.arange(n_rows), [len(e) for e in exclude])
        cols = np.concatenate([np.asarray(e, dtype=np.int64) for e in exclude]) if exclude \
            else np.array([], dtype=np.int64)
        keep = (cols >= 0) & (cols < n_items)
        scores[rows[keep], cols[keep]] = -np.inf
    k_eff = min(k, n_items)
    values, indices = _top_k_lowest_index_first(scores, k_eff)
    indices = np.where(np.isneginf(values), -1, indices)
    if k_eff < k:
        pad = k - k_eff
        indices = np.pad(indices, ((0, 0), (0, pad)), constant_values=-1)
        values = np.pad(values, ((0, 0), (0, pad)), constant_values=-np.inf)
    return indices, values


TIE_MARGIN = 8   # extra candidates fetched so that ties at the k-th score can be settled


def _top_k_lowest_index_first(scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Row-wise top-k, best first, equal scores in item order: the same answer on any machine
    and thread count (torch.topk alone orders ties as its kernel happens to meet them, and
    float32 scores tie often, e.g. events on the same day).

    torch.topk (multi-threaded) fetches ``k + TIE_MARGIN`` candidates; when the k-th score is
    above the last candidate's, every item scoring at least the k-th is among them and sorting
    them by (score, item) settles the ties. Rows where the tie runs past the candidates are
    sorted whole (stable), which only happens for rows with masses of equal scores.
    """
    n_rows, n_items = scores.shape
    if k == 0 or n_rows == 0:
        return (np.zeros((n_rows, k), dtype=np.float32), np.zeros((n_rows, k), dtype=np.int64))
    fetch = min(n_items, k + TIE_MARGIN)
    values, indices = torch.topk(torch.from_numpy(scores), fetch, dim=1, sorted=True)
    values, indices = values.numpy(), indices.numpy().astype(np.int64)
    order = np.lexsort((indices, -values), axis=1)[:, :k]
    out_values = np.take_along_axis(values, order, axis=1)
    out_indices = np.take_along_axis(indices, order, axis=1)
    if fetch < n_items:
        unsettled = np.flatnonzero(values[:, k - 1] == values[:, -1])
        if len(unsettled):
            full = np.argsort(-scores[unsettled], axis=1, kind="stable")[:, :k]
            out_indices[unsettled] = full
            out_values[unsettled] = np.take_along_axis(scores[unsettled], full, axis=1)
    return out_values, out_indices
