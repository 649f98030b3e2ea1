"""Building the FAISS index over item vectors: the factory a catalog size gets, and the recall
gate an approximate index must pass (``models/index.py`` describes the index and searches it).
"""

from __future__ import annotations

import math
import time
from contextlib import nullcontext

import faiss
import numpy as np

from features.infra import phase
from models.index import (
    DEFAULT_CONFIG,
    FORMAT_VERSION,
    IndexBuildError,
    IndexConfig,
    IndexRecallError,
    ItemIndex,
    _set_threads,
    _supports_selector,
)


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


def build_index(vectors: np.ndarray, cfg: IndexConfig = DEFAULT_CONFIG) -> ItemIndex:
    """Index ``vectors`` (row r = item row r); approximate indexes must pass the recall gate."""
    started = time.perf_counter()
    x = _check_vectors(vectors)
    n, dim = x.shape
    _set_threads(cfg.threads)
    factory = cfg.factory or auto_factory(n, cfg.exact_max_items)
    # Exact search is built at once; an approximate index trains, adds and passes the recall
    # gate, minutes on a large catalog: a log shows when that starts and how long it took.
    timed = nullcontext() if factory == "Flat" else \
        phase("index", f"building {factory} over {n:,} items, tuning it to recall@"
                       f"{min(cfg.recall_k, n)} >= {cfg.min_recall}")
    with timed:
        index = _make(x, factory, cfg.seed)
        item_index = ItemIndex(index, {
            "format": FORMAT_VERSION, "factory": factory, "metric": "inner_product",
            "n_items": n, "dim": dim,
            "exact": isinstance(faiss.downcast_index(index), faiss.IndexFlat),
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
