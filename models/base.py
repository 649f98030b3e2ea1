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
    # torch.topk is stable enough and multi-threaded; sorted=True gives best first.
    values, indices = torch.topk(torch.from_numpy(scores), k_eff, dim=1, sorted=True)
    values, indices = values.numpy(), indices.numpy().astype(np.int64)
    indices = np.where(np.isneginf(values), -1, indices)
    if k_eff < k:
        pad = k - k_eff
        indices = np.pad(indices, ((0, 0), (0, pad)), constant_values=-1)
        values = np.pad(values, ((0, 0), (0, pad)), constant_values=-np.inf)
    return indices, values
