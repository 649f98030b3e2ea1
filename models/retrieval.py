"""Two-stage ranking for large catalogs: retrieve a few hundred candidates, re-rank only them.

Full scoring (``Recommender.recommend``) computes the ranking stack's score for every item of
the catalog: exact, and cheapest while the catalog is small, but its cost grows with the catalog
(a 1M-item catalog is a 1M-wide score row per request). Above ``TWO_STAGE_MIN_ITEMS`` items
``models.ranking`` ranks in two stages instead:

1. **Candidates** per history: the FAISS index's top ``RETRIEVE`` items for the user vector;
   the shopper's ``RECENT`` most recent distinct items and, for each, its ``NEIGHBOURS``
   strongest neighbours in every item-kNN signal of the stack (what the sparse signals would
   score high); and the ``POPULAR`` most popular items (the signals' filler).
2. **Re-ranking**: the same recommender scores only those (``score_items``: the stack's formula
   over the listed items), and the top k come back, ties in item order as in full scoring.

An item outside the candidates can only be missed if the full score would have put it in the
top k without the towers, the shopper's own items, their neighbours or popularity putting it
there: `make bench-large` measures how often that changes the top 10.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from features.history import Histories, most_recent_distinct
from models.base import top_k
from models.index import ItemIndex
from models.sparse_scores import top_n_per_row

TWO_STAGE_MIN_ITEMS = 200_000   # measured: BENCHMARKS.md "Serving", large catalogs
RETRIEVE = 400
RECENT = 10
NEIGHBOURS = 50
POPULAR = 100
GROUP = 32   # histories re-ranked together over the union of their candidates


def neighbour_tables(sources: dict) -> list[sp.csr_matrix]:
    """Each item-kNN signal's similarity kept to every item's ``NEIGHBOURS`` strongest."""
    tables = []
    for source in sources.values():
        sim = getattr(source, "similarity", None)
        if sim is None:
            continue
        sim = sim.tocsr()
        rows = np.repeat(np.arange(sim.shape[0], dtype=np.int64), np.diff(sim.indptr))
        tables.append(top_n_per_row(rows, sim.indices.astype(np.int64), sim.data, NEIGHBOURS,
                                    sim.shape))
    return tables


def candidates(history_items: np.ndarray, retrieved: np.ndarray, popular: np.ndarray,
               neighbours: list[sp.csr_matrix]) -> np.ndarray:
    """One history's candidate rows: retrieved, its recent items, their neighbours, popular."""
    recent = most_recent_distinct(history_items, RECENT)
    parts = [retrieved[retrieved >= 0], recent, popular]
    for table in neighbours:
        parts += [table.indices[table.indptr[i]:table.indptr[i + 1]] for i in recent]
    return np.unique(np.concatenate(parts).astype(np.int64))


def first_allowed(rows: np.ndarray, allowed: np.ndarray, n: int) -> np.ndarray:
    """The first ``n`` of ``rows`` that ``allowed`` admits, reading no more of ``rows`` than
    it takes (the popular order of a 1M-item catalog is 1M long)."""
    take = 4 * n
    while True:
        head = rows[:take]
        found = head[allowed[head]]
        if len(found) >= n or take >= len(rows):
            return found[:n]
        take *= 4


def two_stage(recommender, index: ItemIndex, user_vectors: np.ndarray, histories: Histories,
              k: int, exclude: list[np.ndarray] | None, allowed: np.ndarray,
              popular: np.ndarray, neighbours: list[sp.csr_matrix]
              ) -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` rows and scores per history (as ``Recommender.recommend``), from candidates."""
    n = len(histories)
    retrieved, _ = index.search(user_vectors, RETRIEVE, exclude=exclude, allowed=allowed)
    popular = first_allowed(popular, allowed, POPULAR)
    out_rows = np.full((n, k), -1, dtype=np.int64)
    out_scores = np.full((n, k), -np.inf, dtype=np.float32)
    for start in range(0, n, GROUP):
        group = np.arange(start, min(n, start + GROUP))
        found = [candidates(histories.items_of(i), retrieved[i], popular, neighbours)
                 for i in group]
        union = np.unique(np.concatenate(found))
        union = union[allowed[union]]
        scores = recommender.score_items(histories.select(group), union)
        # Each history keeps its own candidates only; the union is scored once for the group.
        mine = np.zeros(scores.shape, dtype=bool)
        for j, rows in enumerate(found):
            mine[j, np.searchsorted(union, rows[np.isin(rows, union)])] = True
        scores = np.where(mine, scores, -np.inf).astype(np.float32)
        excl = None
        if exclude is not None:   # exclusions as columns of the union
            excl = [np.searchsorted(union, e[np.isin(e, union)]) for e in
                    (exclude[i] for i in group)]
        cols, top = top_k(scores, k, exclude=excl)
        out_rows[group] = np.where(cols >= 0, union[np.maximum(cols, 0)], -1)
        out_scores[group] = top
    return out_rows, out_scores
