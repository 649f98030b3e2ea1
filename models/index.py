"""The FAISS index over item vectors that serving searches instead of scoring every item.

Item vectors are float32 ``(n_items, dim)``, L2-normalized, row r = item row r of the vocabulary;
the index stores them in that order so FAISS ids *are* item rows (no IndexIDMap needed) and
inner product is the metric (cosine for normalized rows, and what the two-tower scores are).

Small catalogs get an exact ``IndexFlatIP``. Larger ones get an approximate index (auto:
``IVF{nlist},Flat`` with nlist growing with the catalog; any factory string can be forced).
An approximate index is only shipped after its recall@k against exact search, measured on
seeded stand-in queries, passes ``min_recall``: the search setting (nprobe / efSearch) is raised
step by step and the cheapest one that passes is kept; if none does, ``IndexRecallError``.

``ItemIndex.search`` honours per-query exclusions and an ``allowed`` mask exactly: the mask goes
to FAISS as an ID selector (and is re-checked on the results, which also covers index types
without selectors, e.g. IndexPQ) and exclusions are removed from an over-fetched result;
queries left with fewer than k items are searched again, only them, with a larger k (and a
wider search) until they have k or nothing more can be found.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import faiss
import numpy as np

from features.infra import DataError, TailorError, atomic_path

INDEX_FILE = "index.faiss"
INFO_FILE = "index.json"
FORMAT_VERSION = 1


class IndexBuildError(TailorError):
    """The index cannot be built from these vectors / settings (one-line message)."""


class IndexRecallError(IndexBuildError):
    """The approximate index misses the recall gate even at its strongest search setting."""


@dataclass(frozen=True)
class IndexConfig:
    exact_max_items: int = 50_000   # up to this many items: exact IndexFlatIP
    factory: str | None = None      # FAISS index_factory string; None = choose by catalog size
    min_recall: float = 0.95        # recall@recall_k an approximate index must reach
    recall_k: int = 10
    recall_queries: int = 1000      # seeded stand-in queries for the recall measurement
    seed: int = 0
    threads: int | None = None      # faiss.omp_set_num_threads; None leaves FAISS's default
    # Search settings tried in this order (cheapest first) until the recall gate passes.
    nprobe: tuple[int, ...] = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
    ef_search: tuple[int, ...] = (16, 32, 64, 128, 256, 512)

    def __post_init__(self) -> None:
        if not 0.0 <= self.min_recall <= 1.0:
            raise ValueError(f"min_recall must be in [0, 1], got {self.min_recall}")
        for name in ("exact_max_items", "recall_k", "recall_queries"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not self.nprobe or not self.ef_search or min(*self.nprobe, *self.ef_search) < 1:
            raise ValueError("nprobe and ef_search must be non-empty tuples of positive ints")


# The settings a bundle's index is built and searched with unless a caller says otherwise.
DEFAULT_CONFIG = IndexConfig()


class ItemIndex:
    """A built (or loaded) index plus its ``info``: factory, search params, recall, timings."""

    def __init__(self, index: faiss.Index, info: dict) -> None:
        self.index = index
        self.info = info
        self._ivf = faiss.try_extract_index_ivf(index)
        self._hnsw = _hnsw_of(index)

    @property
    def n_items(self) -> int:
        return int(self.index.ntotal)

    @property
    def dim(self) -> int:
        return int(self.index.d)

    @property
    def exact(self) -> bool:
        return bool(self.info.get("exact", False))

    def search(self, queries: np.ndarray, k: int, exclude: list[np.ndarray] | None = None,
               allowed: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` item rows by inner product: ``(item_rows int64, scores float32)``, (n, k).

        exclude: per query, item rows that must not come back (out-of-range rows are ignored).
        allowed: boolean mask over items; the others never come back.
        Rows are padded with -1 / -inf when fewer than ``k`` items can be returned.
        """
        q = self._check_queries(queries)
        n_q, n = len(q), self.n_items
        if k < 0:
            raise ValueError(f"k must be >= 0, got {k}")
        out_ids = np.full((n_q, k), -1, dtype=np.int64)
        out_scores = np.full((n_q, k), -np.inf, dtype=np.float32)
        mask = None if allowed is None else self._check_allowed(allowed)
        n_allowed = n if mask is None else int(mask.sum())
        if k == 0 or n_q == 0 or n_allowed == 0:
            return out_ids, out_scores
        excl_keys, n_excl = _exclusion_keys(exclude, n_q, n, mask)
        # What each query can possibly get, and the fetch an exact search needs to get it.
        reachable = np.minimum(k, n_allowed - n_excl)
        need = k + n_excl
        use_selector = mask is not None and self.info.get("selector", False)
        cap = n_allowed if (use_selector or mask is None) else n
        if mask is not None and not use_selector:
            need = need + (n - n_allowed)
        bitmap = np.packbits(mask, bitorder="little") if use_selector else None
        selector = faiss.IDSelectorBitmap(n, faiss.swig_ptr(bitmap)) if use_selector else None
        # The first pass fetches enough for all but the queries with the longest exclusion lists;
        # those (and any query an approximate search left short) are searched again below.
        fetch = int(min(cap, max(k, np.quantile(need, 0.9, method="higher"))))
        widen = 1
        rows = np.arange(n_q)
        while True:
            params = self._params(selector, fetch, widen)
            scores, ids = self.index.search(q[rows], fetch, params=params)
            got_ids, got_scores, count = _keep(ids, scores, rows, k, n, mask, excl_keys)
            out_ids[rows], out_scores[rows] = got_ids, got_scores
            short = count < reachable[rows]
            exhausted = fetch >= cap and not self._can_widen(widen)
            if exhausted or not short.any():
                return out_ids, out_scores
            rows = rows[short]
            fetch = int(min(cap, max(2 * fetch, need[rows].max())))
            widen *= 2

    def with_vectors(self, vectors: np.ndarray) -> ItemIndex:
        """A copy holding ``vectors`` too, as rows ``n_items``, ``n_items + 1``, ... (items added
        to the catalog); this index is left as it is, for the requests still reading it. An IVF
        index files them under its trained centroids; the recall gate is not measured again."""
        vectors = self._check_queries(vectors)
        index = faiss.clone_index(self.index)
        index.add(vectors)
        return ItemIndex(index, {**self.info, "n_items": int(index.ntotal),
                                 "added_items": self.info.get("added_items", 0) + len(vectors)})

    def save(self, folder: str | os.PathLike) -> Path:
        """Write ``index.faiss`` + ``index.json`` into ``folder`` (each replaced atomically)."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        for name, write in ((INDEX_FILE, lambda p: faiss.write_index(self.index, str(p))),
                            (INFO_FILE, lambda p: p.write_text(json.dumps(self.info, indent=2)))):
            with atomic_path(folder / name) as tmp:
                write(tmp)
        return folder

    @classmethod
    def load(cls, folder: str | os.PathLike, threads: int | None = None) -> ItemIndex:
        folder = Path(folder)
        for name in (INDEX_FILE, INFO_FILE):
            if not (folder / name).is_file():
                raise DataError("index file missing", path=str(folder / name))
        try:
            info = json.loads((folder / INFO_FILE).read_text())
        except json.JSONDecodeError as err:
            raise DataError(f"not valid JSON ({err.msg})", path=str(folder / INFO_FILE)) from None
        try:
            index = faiss.read_index(str(folder / INDEX_FILE))
        except RuntimeError:
            raise DataError("not a readable FAISS index", path=str(folder / INDEX_FILE)) from None
        if index.ntotal != info.get("n_items") or index.d != info.get("dim"):
            raise DataError(f"index holds {index.ntotal} x {index.d} vectors but {INFO_FILE} says "
                            f"{info.get('n_items')} x {info.get('dim')}",
                            path=str(folder / INDEX_FILE))
        _set_threads(threads)
        return cls(index, info)

    # -- internals ----------------------------------------------------------------------------

    def _params(self, selector, fetch: int, widen: int) -> faiss.SearchParameters | None:
        """Search params for one pass: the tuned nprobe / efSearch, widened on re-queries."""
        tuned = self.info.get("search_params", {})
        if self._ivf is not None:
            nprobe = min(self._ivf.nlist, tuned.get("nprobe", self._ivf.nprobe) * widen)
            return faiss.SearchParametersIVF(sel=selector, nprobe=nprobe)
        if self._hnsw is not None:
            # HNSW's candidate list must be at least as long as the results asked for.
            ef = max(tuned.get("efSearch", self._hnsw.hnsw.efSearch) * widen, fetch)
            return faiss.SearchParametersHNSW(sel=selector, efSearch=ef)
        return None if selector is None else faiss.SearchParameters(sel=selector)

    def _can_widen(self, widen: int) -> bool:
        """Whether a wider search could still find items the last pass did not reach."""
        tuned = self.info.get("search_params", {})
        if self._ivf is not None:
            return tuned.get("nprobe", self._ivf.nprobe) * widen < self._ivf.nlist
        if self._hnsw is not None:
            # With a selector HNSW still walks disallowed nodes, so a sparse mask may need
            # efSearch up to the whole catalog before every allowed item is reachable.
            return tuned.get("efSearch", self._hnsw.hnsw.efSearch) * widen < self.n_items
        return False

    def _check_queries(self, queries: np.ndarray) -> np.ndarray:
        q = np.ascontiguousarray(queries, dtype=np.float32)
        if q.ndim != 2 or q.shape[1] != self.dim:
            raise ValueError(f"queries must have shape (n, {self.dim}), got {q.shape}")
        if not np.isfinite(q).all():
            raise ValueError("queries contain NaN or infinite values")
        return q

    def _check_allowed(self, allowed: np.ndarray) -> np.ndarray:
        mask = np.asarray(allowed)
        if mask.dtype != bool or mask.shape != (self.n_items,):
            raise ValueError(f"allowed must be a bool mask of shape ({self.n_items},), "
                             f"got {mask.dtype} {mask.shape}")
        return mask


def _hnsw_of(index: faiss.Index) -> faiss.IndexHNSW | None:
    core = faiss.downcast_index(index)
    if isinstance(core, faiss.IndexPreTransform):
        core = faiss.downcast_index(core.index)
    return core if isinstance(core, faiss.IndexHNSW) else None


def _supports_selector(index: faiss.Index, dim: int) -> bool:
    """Whether this index type filters by an ID selector (IndexPQ, for one, refuses)."""
    probe = ItemIndex(index, {"search_params": {}})
    keep = np.ones(1, dtype=np.uint8)
    selector = faiss.IDSelectorBitmap(1, faiss.swig_ptr(keep))
    try:
        index.search(np.zeros((1, dim), dtype=np.float32), 1, params=probe._params(selector, 1, 1))
    except RuntimeError:
        return False
    return True


def _set_threads(threads: int | None) -> None:
    if threads is not None:
        faiss.omp_set_num_threads(max(1, int(threads)))


# -- search internals ---------------------------------------------------------------------------


def _exclusion_keys(exclude: list[np.ndarray] | None, n_q: int, n: int,
                    mask: np.ndarray | None) -> tuple[np.ndarray | None, np.ndarray]:
    """Sorted unique keys ``query * n + item`` of the exclusions, and per query how many
    distinct excluded items would otherwise be eligible (in range and allowed)."""
    if exclude is None:
        return None, np.zeros(n_q, dtype=np.int64)
    if len(exclude) != n_q:
        raise ValueError(f"exclude has {len(exclude)} entries for {n_q} queries")
    lengths = [0 if e is None else np.size(e) for e in exclude]
    items = np.concatenate([np.asarray(e, dtype=np.int64).ravel() for e in exclude
                            if e is not None] or [np.empty(0, dtype=np.int64)])
    rows = np.repeat(np.arange(n_q, dtype=np.int64), lengths)
    keep = (items >= 0) & (items < n)
    if mask is not None:
        keep[keep] &= mask[items[keep]]
    keys = np.unique(rows[keep] * n + items[keep])
    return keys, np.bincount(keys // n, minlength=n_q).astype(np.int64)


def _keep(ids: np.ndarray, scores: np.ndarray, rows: np.ndarray, k: int, n: int,
          mask: np.ndarray | None, excl_keys: np.ndarray | None):
    """Drop padding, disallowed and excluded items; first ``k`` survivors per row, in order."""
    valid = ids >= 0
    if mask is not None:
        valid &= mask[np.where(valid, ids, 0)]
    if excl_keys is not None and len(excl_keys):
        valid &= ~np.isin(rows[:, None] * n + ids, excl_keys)
    count = valid.sum(axis=1)
    # A stable sort on "invalid" moves survivors to the front and keeps their score order.
    order = np.argsort(~valid, axis=1, kind="stable")[:, :k]
    ids, scores = np.take_along_axis(ids, order, 1), np.take_along_axis(scores, order, 1)
    ok = np.take_along_axis(valid, order, 1)
    width = ids.shape[1]
    if width < k:
        ids = np.pad(ids, ((0, 0), (0, k - width)))
        scores = np.pad(scores, ((0, 0), (0, k - width)))
        ok = np.pad(ok, ((0, 0), (0, k - width)))
    return (np.where(ok, ids, -1).astype(np.int64),
            np.where(ok, scores, -np.inf).astype(np.float32), count)
