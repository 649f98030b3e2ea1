"""Sparse history scores: a batch of histories as (history, item, value) entries, their
product with an item-item similarity table, and the scatter of such entries into dense score
rows. The history baselines (``models.baselines``) and the two-stage candidates
(``models.retrieval``) build on these.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from features.history import Histories


def largest_per_cell(rows: np.ndarray, cols: np.ndarray, vals: np.ndarray
                      ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The entries with the largest value per (row, col): repeats do not add up."""
    if not len(rows):
        return rows, cols, vals
    order = np.lexsort((vals, cols, rows))
    rows, cols, vals = rows[order], cols[order], vals[order]
    last = np.r_[(rows[1:] != rows[:-1]) | (cols[1:] != cols[:-1]), True]
    return rows[last], cols[last], vals[last]


def max_per_cell(rows: np.ndarray, cols: np.ndarray, vals: np.ndarray,
                  shape: tuple[int, int]) -> sp.csr_matrix:
    """CSR matrix holding the largest value per (row, col)."""
    rows, cols, vals = largest_per_cell(rows, cols, vals)
    return sp.csr_matrix((vals, (rows, cols)), shape=shape)


def history_entries(histories: Histories, values: np.ndarray | None = None, *,
                    reduce: str = "max") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(history, item, value) entries of the histories' events. values: one per event
    (default 1.0). reduce: 'max' keeps the largest value per (history, item) (a repeated view
    does not count twice); 'sum' keeps every event, whose values add up in any product."""
    rows = np.repeat(np.arange(len(histories), dtype=np.int64), histories.lengths)
    cols = histories.item_idx.astype(np.int64)
    vals = np.ones(len(cols)) if values is None else np.asarray(values, dtype=np.float64)
    return (rows, cols, vals) if reduce == "sum" else largest_per_cell(rows, cols, vals)


def history_matrix(histories: Histories, n_items: int, values: np.ndarray | None = None, *,
                   reduce: str = "max") -> sp.csr_matrix:
    """(len(histories), n_items) sparse matrix of the histories' events (``history_entries``;
    duplicates of 'sum' add up)."""
    rows, cols, vals = history_entries(histories, values, reduce=reduce)
    return sp.csr_matrix((vals, (rows, cols)), shape=(len(histories), n_items))


# A few histories (a request, its explanations) are scored by scattering into a dense array:
# scipy's sparse product costs ~0.1 ms of bookkeeping per call, more than the arithmetic here.
# Above this many cells (batches, evaluation) the sparse product, which needs no float64 copy.
DENSE_CELLS = 4_000_000


def scatter_scores(rows: np.ndarray, cols: np.ndarray, vals: np.ndarray, n: int, n_items: int,
                   columns: np.ndarray | None = None) -> np.ndarray:
    """(n, n_items) float32 sums of ``vals`` at (rows, cols); only ``columns`` (in that order,
    repeats allowed) when given."""
    if columns is None:
        return np.bincount(rows * n_items + cols, weights=vals,
                           minlength=n * n_items).reshape(n, n_items).astype(np.float32)
    wanted, inverse = np.unique(columns, return_inverse=True)
    m = len(wanted)
    # Positions by binary search, not an n_items-long look-up table: a large catalog would
    # pay for that table on every call.
    position = np.minimum(np.searchsorted(wanted, cols), max(m - 1, 0))
    keep = wanted[position] == cols if m else np.zeros(len(cols), dtype=bool)
    dense = np.bincount(rows[keep] * m + position[keep], weights=vals[keep],
                        minlength=n * m).reshape(n, m).astype(np.float32)
    return dense[:, inverse]


def times_similarity(entries: tuple[np.ndarray, np.ndarray, np.ndarray], n: int,
                     similarity: sp.csr_matrix, columns: np.ndarray | None = None) -> np.ndarray:
    """Dense (n, items or ``columns``) float32 product of the histories' entries (a sparse
    (n, items) matrix) with an item-item ``similarity`` (CSR)."""
    rows, cols, vals = entries
    n_items = similarity.shape[1]
    if n * (n_items if columns is None else len(columns)) > DENSE_CELLS:
        h = sp.csr_matrix((vals.astype(np.float32), (rows, cols)), shape=(n, similarity.shape[0]))
        product = (h @ similarity).toarray()
        return product if columns is None else product[:, columns]
    starts = similarity.indptr[cols]
    lengths = similarity.indptr[cols + 1] - starts
    take = np.repeat(starts - np.r_[0, np.cumsum(lengths)[:-1]], lengths) + \
        np.arange(int(lengths.sum()))
    return scatter_scores(np.repeat(rows, lengths), similarity.indices[take].astype(np.int64),
                          np.repeat(vals, lengths) * similarity.data[take], n, n_items, columns)


def top_n_per_row(rows: np.ndarray, cols: np.ndarray, vals: np.ndarray, n: int,
                  shape: tuple[int, int]) -> sp.csr_matrix:
    """Keep the ``n`` largest positive values of each row (ties: lower column first)."""
    keep = vals > 0
    rows, cols, vals = rows[keep], cols[keep], vals[keep]
    order = np.lexsort((cols, -vals, rows))
    rows, cols, vals = rows[order], cols[order], vals[order]
    starts = np.searchsorted(rows, rows, side="left")
    rank = np.arange(len(rows)) - starts
    keep = rank < n
    return sp.csr_matrix((vals[keep].astype(np.float32), (rows[keep], cols[keep])), shape=shape)
