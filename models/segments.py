"""Learned shopper segments: spherical k-means (FAISS) over the user-tower vectors, each segment
described by its size, top categories and top items, so a person can name it.

Training is seeded and single-threaded, so ``make segments`` and every service worker learn the
same centroids from the same bundle.
"""

from __future__ import annotations

from dataclasses import dataclass

import faiss
import numpy as np

from features.history import Histories

N_TOP = 5


@dataclass(frozen=True)
class LearnedSegments:
    centroids: np.ndarray    # (n_segments, dim) float32, unit length

    def __len__(self) -> int:
        return len(self.centroids)

    def assign(self, vectors: np.ndarray) -> np.ndarray:
        """The nearest centroid (cosine) of each vector; -1 for a zero vector (no history)."""
        if not len(vectors):
            return np.zeros(0, dtype=np.int64)
        best = np.argmax(vectors @ self.centroids.T, axis=1).astype(np.int64)
        return np.where(np.abs(vectors).sum(1) > 0, best, -1)


def learn_segments(vectors: np.ndarray, n_segments: int, seed: int = 0,
                   iterations: int = 25) -> LearnedSegments:
    """k-means over the rows of ``vectors`` that are not zero."""
    data = np.ascontiguousarray(vectors[np.abs(vectors).sum(1) > 0], dtype=np.float32)
    if len(data) < n_segments:
        raise ValueError(f"{n_segments} segments need at least as many shoppers with a history, "
                         f"got {len(data)}")
    threads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)    # one thread: the same centroids wherever they are learned
    try:
        kmeans = faiss.Kmeans(data.shape[1], n_segments, niter=iterations, seed=seed,
                              spherical=True, verbose=False, max_points_per_centroid=100_000)
        kmeans.train(data)
    finally:
        faiss.omp_set_num_threads(threads)
    centroids = kmeans.centroids / np.maximum(
        np.linalg.norm(kmeans.centroids, axis=1, keepdims=True), 1e-12)
    return LearnedSegments(centroids.astype(np.float32))


def describe(assignment: np.ndarray, hist: Histories, n_segments: int,
             categories: np.ndarray | None, item_ids: np.ndarray) -> list[dict]:
    """Per segment: size, share of shoppers, and the categories and items its shoppers'
    histories hold most (share of their events)."""
    owner_segment = np.repeat(assignment, hist.lengths)
    total = max(int((assignment >= 0).sum()), 1)
    out = []
    for s in range(n_segments):
        events = hist.item_idx[owner_segment == s]
        size = int((assignment == s).sum())
        profile = {"segment": s, "shoppers": size, "share": round(size / total, 4),
                   "events": int(len(events))}
        if len(events):
            rows, counts = np.unique(events, return_counts=True)
            top = np.argsort(-counts, kind="stable")[:N_TOP]
            profile["top_items"] = [{"item_id": str(item_ids[r]),
                                     "share": round(float(c) / len(events), 4)}
                                    for r, c in zip(rows[top], counts[top], strict=True)]
            if categories is not None:
                names, counts = np.unique(categories[events], return_counts=True)
                keep = names != ""
                names, counts = names[keep], counts[keep]
                top = np.argsort(-counts, kind="stable")[:N_TOP]
                profile["top_categories"] = [
                    {"category_id": str(n), "share": round(float(c) / len(events), 4)}
                    for n, c in zip(names[top], counts[top], strict=True)]
        out.append(profile)
    return out
