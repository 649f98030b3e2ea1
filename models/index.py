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
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

import faiss
import numpy as np

from features.schema import DataError

INDEX_FILE = "index.faiss"
INFO_FILE = "index.json"
FORMAT_VERSION = 1


class IndexBuildError(DataError):
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


def auto_factory(n_items: int, exact_max_items: int) -> str:
    """Exact up to ``exact_max_items``; else IVF with ~4·sqrt(n) lists (a power of two).

    IVF rather than HNSW by default: it trains and adds fast on few cores, its recall can be
    raised all the way to exact by nprobe, and filtered search (ID selector) stays cheap; an
    HNSW factory ("HNSW32,Flat") can still be forced and gets its efSearch tuned the same way.
    """
    if n_items <= exact_max_items:
        return "Flat"
    nlist = 2 ** round(math.log2(4 * math.sqrt(n_items)))
    return f"IVF{min(max(nlist, 64), 65536)},Flat"


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

    def save(self, folder: str | os.PathLike) -> Path:
        """Write ``index.faiss`` + ``index.json`` into ``folder`` (each replaced atomically)."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        for name, write in ((INDEX_FILE, lambda p: faiss.write_index(self.index, str(p))),
                            (INFO_FILE, lambda p: p.write_text(json.dumps(self.info, indent=2)))):
            tmp = folder / f".{name}.tmp"
            write(tmp)
            os.replace(tmp, folder / name)
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


def build_index(vectors: np.ndarray, cfg: IndexConfig = IndexConfig()) -> ItemIndex:
    """Index ``vectors`` (row r = item row r); approximate indexes must pass the recall gate."""
    started = time.perf_counter()
    x = _check_vectors(vectors)
    n, dim = x.shape
    _set_threads(cfg.threads)
    factory = cfg.factory or auto_factory(n, cfg.exact_max_items)
    index = _make(x, factory, cfg.seed)
    item_index = ItemIndex(index, {
        "format": FORMAT_VERSION, "factory": factory, "metric": "inner_product",
        "n_items": n, "dim": dim, "exact": isinstance(faiss.downcast_index(index), faiss.IndexFlat),
        "selector": _supports_selector(index, dim), "search_params": {},
        "faiss_version": faiss.__version__,
    })
    info = item_index.info
    info.update(recall=1.0, recall_k=min(cfg.recall_k, n), recall_queries=0,
                min_recall=cfg.min_recall, seed=cfg.seed, tuning=[])
    info["index_seconds"] = round(time.perf_counter() - started, 3)     # train + add
    if not info["exact"]:
        _tune(item_index, x, cfg)
    info["build_seconds"] = round(time.perf_counter() - started, 3)    # + recall gate
    return item_index


def stand_in_queries(x: np.ndarray, n_queries: int, seed: int) -> np.ndarray:
    """Seeded queries like a shopper's: half are items themselves, half noisy mixes of two."""
    rng = np.random.default_rng(seed)
    n, dim = x.shape
    half = n_queries // 2
    own = x[rng.integers(0, n, half)]
    mixed = x[rng.integers(0, n, n_queries - half)] + x[rng.integers(0, n, n_queries - half)]
    mixed /= np.maximum(np.linalg.norm(mixed, axis=1, keepdims=True), 1e-12)
    mixed += rng.standard_normal(mixed.shape).astype(np.float32) * (0.3 / math.sqrt(dim))
    return np.ascontiguousarray(np.vstack([own, mixed]), dtype=np.float32)


def recall_at_k(found: np.ndarray, queries: np.ndarray, x: np.ndarray,
                exact_scores: np.ndarray) -> float:
    """Share of the k exact neighbours the approximate search found, ties counted as found.

    A result counts when its true score reaches the exact k-th score, so an index returning a
    different one of several equally close items is not punished; true scores are recomputed
    from the vectors because lossy codes (PQ) report approximate ones.
    """
    k = exact_scores.shape[1]
    valid = found >= 0
    true = np.einsum("qd,qkd->qk", queries, x[np.where(valid, found, 0)])
    tol = 1e-5 * np.maximum(1.0, np.abs(exact_scores[:, -1:]))
    hits = valid & (true >= exact_scores[:, -1:] - tol)
    return float(np.minimum(hits.sum(axis=1), k).mean() / k)


# -- build internals ----------------------------------------------------------------------------


def _check_vectors(vectors: np.ndarray) -> np.ndarray:
    x = np.ascontiguousarray(vectors, dtype=np.float32)
    if x.ndim != 2 or x.shape[0] == 0 or x.shape[1] == 0:
        raise IndexBuildError(f"item vectors must be a non-empty (n_items, dim) matrix, "
                              f"got shape {x.shape}")
    bad = ~np.isfinite(x).all(axis=1)
    if bad.any():
        raise IndexBuildError("item vector has NaN or infinite values", row=int(bad.argmax()))
    return x


def _make(x: np.ndarray, factory: str, seed: int) -> faiss.Index:
    n, dim = x.shape
    try:
        index = faiss.index_factory(dim, factory, faiss.METRIC_INNER_PRODUCT)
        ivf = faiss.try_extract_index_ivf(index)
        if ivf is not None:
            # Coarse lists only need to be roughly balanced: 10 k-means rounds, not 25, keep
            # recall (the gate checks it) and cut training time by more than half.
            ivf.cp.seed, ivf.cp.niter = seed, 10
        if not index.is_trained:
            # k-means wants >= 39 points per centroid (FAISS warns below); more only costs time.
            n_train = min(n, max(50 * (ivf.nlist if ivf is not None else 256), 20_000))
            sample = np.random.default_rng(seed).choice(n, n_train, replace=False)
            index.train(x[np.sort(sample)])
        index.add(x)
    except RuntimeError as err:
        reason = str(err).strip().splitlines()[-1].split("Error: ")[-1][:200]
        raise IndexBuildError(f"cannot build FAISS index {factory!r} over {n} x {dim} vectors: "
                              f"{reason}") from None
    return index


def _tune(item_index: ItemIndex, x: np.ndarray, cfg: IndexConfig) -> None:
    """Keep the cheapest search setting whose recall@k passes the gate, or raise."""
    info, index = item_index.info, item_index.index
    k = info["recall_k"]
    queries = stand_in_queries(x, cfg.recall_queries, cfg.seed)
    exact_scores, _ = faiss.knn(queries, x, k, metric=faiss.METRIC_INNER_PRODUCT)
    if item_index._ivf is not None:
        settings = [{"nprobe": p} for p in sorted(set(cfg.nprobe)) if p <= item_index._ivf.nlist]
        settings = settings or [{"nprobe": item_index._ivf.nlist}]
    elif item_index._hnsw is not None:
        settings = [{"efSearch": e} for e in sorted(set(cfg.ef_search))]
    else:
        settings = [{}]    # nothing to tune (e.g. PQ): one measurement decides
    best: dict = {}
    for setting in settings:
        item_index.info["search_params"] = setting
        started = time.perf_counter()
        _, found = index.search(queries, k, params=item_index._params(None, k, 1))
        ms = 1000 * (time.perf_counter() - started) / len(queries)
        recall = recall_at_k(found, queries, x, exact_scores)
        info["tuning"].append({**setting, "recall": round(recall, 4), "ms_per_query": round(ms, 4)})
        if not best or recall > best["recall"]:
            best = {"setting": setting, "recall": recall}
        if recall >= cfg.min_recall:
            break
    info.update(search_params=best["setting"], recall=round(best["recall"], 4),
                recall_queries=len(queries))
    if best["recall"] < cfg.min_recall:
        strongest = ", ".join(f"{name}={value}" for name, value in settings[-1].items())
        raise IndexRecallError(
            f"approximate index {info['factory']!r} reaches recall@{k} {best['recall']:.3f} < "
            f"min_recall {cfg.min_recall} (tried up to {strongest or 'its only setting'}); "
            f"use a stronger factory, a lower min_recall, or exact search (exact_max_items)")


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


# --- the index inside a bundle folder ------------------------------------------------------------
# Built once at training time and saved with the bundle (``Bundle.save``), so it is part of the
# logged MLflow model; serving loads it. A bundle without one (or with one that does not match
# its item vectors) gets it built in memory at load time; logged artifacts are never written to.

DEFAULT_CONFIG = IndexConfig()


def save_index(bundle_dir: str | Path, item_vectors: np.ndarray,
               cfg: IndexConfig = DEFAULT_CONFIG) -> ItemIndex:
    """Build the index over ``item_vectors`` (recall gate included) into ``bundle_dir``."""
    index = build_index(item_vectors, cfg)
    index.save(bundle_dir)
    return index


def load_index(bundle_dir: str | Path | None, item_vectors: np.ndarray,
               cfg: IndexConfig = DEFAULT_CONFIG) -> tuple[ItemIndex, str]:
    """The bundle's index and where it came from: ``"bundle"`` or ``"built at load"``."""
    n, dim = item_vectors.shape
    if bundle_dir is not None and (Path(bundle_dir) / INDEX_FILE).is_file():
        try:
            index = ItemIndex.load(bundle_dir, threads=cfg.threads)
        except DataError:  # unreadable: rebuilding is cheaper than refusing to serve
            index = None
        if index is not None and (index.n_items, index.dim) == (n, dim):
            return index, "bundle"
    return build_index(item_vectors, cfg), "built at load"
