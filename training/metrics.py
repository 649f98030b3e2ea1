"""Top-K ranking metrics, vectorized over users: pure functions over ranked item rows.

A ranking is an int matrix ``ranked`` (n_users, K_max) of item rows, best first, with -1 where
fewer than K_max items could be recommended (``models.base.top_k`` pads that way). Targets are
given per user, either as a list of arrays or as CSR arrays ``(offsets, items)``; relevance is
binary. Per-user metric functions return float64 arrays so callers can average over batches of
users without losing precision (coverage is counted by ``training.evaluate``).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

# A tuple is CSR ``(offsets, items)``; a list (any other sequence) has one array per user.
Targets = Sequence[np.ndarray] | tuple[np.ndarray, np.ndarray]


def targets_to_csr(targets: Targets) -> tuple[np.ndarray, np.ndarray]:
    """Per-user targets as int64 CSR arrays ``(offsets, items)``.

    A ``tuple`` is taken to be CSR already (offsets of length n_users + 1, then items); any
    other sequence holds one array of item rows per user.
    """
    if isinstance(targets, tuple):
        offsets, items = (np.asarray(t, dtype=np.int64) for t in targets)
        if offsets.ndim != 1 or offsets.size < 1 or offsets[0] != 0 \
                or offsets[-1] != items.size or np.any(np.diff(offsets) < 0):
            raise ValueError("CSR targets need offsets from 0 to len(items), non-decreasing")
        return offsets, items
    arrays = [np.asarray(t, dtype=np.int64).ravel() for t in targets]
    lengths = np.array([len(a) for a in arrays], dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    items = np.concatenate(arrays) if arrays else np.array([], dtype=np.int64)
    return offsets, items


def hit_matrix(ranked: np.ndarray, targets: Targets) -> np.ndarray:
    """Boolean (n_users, K): is the item at rank r one of the user's targets. Padding never hits."""
    ranked = np.asarray(ranked, dtype=np.int64)
    n_users, k = ranked.shape
    offsets, items = targets_to_csr(targets)
    if len(offsets) - 1 != n_users:
        raise ValueError(f"{n_users} ranked rows but targets for {len(offsets) - 1} users")
    # One key per (user, item): membership of every ranked key in the set of target keys.
    width = int(max(ranked.max(initial=-1), items.max(initial=-1))) + 2
    owner = np.repeat(np.arange(n_users, dtype=np.int64), np.diff(offsets))
    target_keys = owner * width + items
    ranked_keys = np.arange(n_users, dtype=np.int64)[:, None] * width + ranked
    hits = np.isin(ranked_keys, target_keys)
    return hits & (ranked >= 0)


def n_targets(targets: Targets) -> np.ndarray:
    offsets, _ = targets_to_csr(targets)
    return np.diff(offsets)


def _check_k(hits: np.ndarray, k: int) -> None:
    if k < 1 or k > hits.shape[1]:
        raise ValueError(f"k={k} must be in 1..{hits.shape[1]} (the ranked depth)")


def hit_rate_at_k(hits: np.ndarray, k: int) -> np.ndarray:
    """1.0 where any target is in the top ``k``."""
    _check_k(hits, k)
    return hits[:, :k].any(axis=1).astype(np.float64)


def recall_at_k(hits: np.ndarray, n_relevant: np.ndarray, k: int) -> np.ndarray:
    """Hits in the top ``k`` over min(|targets|, k): 1.0 is reachable for every user."""
    _check_k(hits, k)
    denom = np.minimum(np.asarray(n_relevant, dtype=np.float64), k)
    found = hits[:, :k].sum(axis=1).astype(np.float64)
    return np.divide(found, denom, out=np.zeros_like(found), where=denom > 0)


def ndcg_at_k(hits: np.ndarray, n_relevant: np.ndarray, k: int) -> np.ndarray:
    """Binary-relevance NDCG; the ideal DCG puts min(|targets|, k) hits at the top."""
    _check_k(hits, k)
    discounts = 1.0 / np.log2(np.arange(2, k + 2, dtype=np.float64))
    dcg = hits[:, :k].astype(np.float64) @ discounts
    ideal_cum = np.concatenate([[0.0], np.cumsum(discounts)])
    idcg = ideal_cum[np.minimum(np.asarray(n_relevant, dtype=np.int64), k)]
    return np.divide(dcg, idcg, out=np.zeros_like(dcg), where=idcg > 0)


