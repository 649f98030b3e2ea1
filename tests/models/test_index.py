"""models/index.py against brute-force numpy answers, on small seeded vectors and real FAISS."""

from __future__ import annotations

import numpy as np
import pytest

from features.infra import DataError, TailorError
from models.base import top_k
from models.index import (
    INDEX_FILE,
    INFO_FILE,
    IndexBuildError,
    IndexConfig,
    IndexRecallError,
    ItemIndex,
)
from models.index_build import build_index


def unit_rows(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def random_vectors(n: int, dim: int, seed: int) -> np.ndarray:
    return unit_rows(np.random.default_rng(seed).standard_normal((n, dim)))


def clustered_vectors(n: int, dim: int, clusters: int, seed: int) -> np.ndarray:
    """Items around ``clusters`` centres: the structure real item embeddings have."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, dim))
    return unit_rows(centres[rng.integers(0, clusters, n)] + 0.4 * rng.standard_normal((n, dim)))


def numpy_top_k(queries: np.ndarray, vectors: np.ndarray, k: int):
    """The brute-force answer: argsort of q @ V.T (k best first)."""
    scores = queries @ vectors.T
    if k < scores.shape[1]:     # only the k best need sorting (keeps the 60k case fast)
        scores = np.where(scores >= -np.partition(-scores, k - 1, axis=1)[:, k - 1:k],
                          scores, -np.inf)
    rows = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return rows, np.take_along_axis(scores, rows, 1)


@pytest.fixture(scope="module")
def big():
    """60k clustered items: over the default exact_max_items, so the approximate path."""
    vectors = clustered_vectors(60_000, 32, 400, seed=1)
    return vectors, build_index(vectors, IndexConfig(recall_queries=500, threads=2))


def test_exact_search_equals_numpy_top_k():
    vectors = random_vectors(500, 16, seed=0)
    queries = random_vectors(40, 16, seed=1) * 3.0      # user vectors need not be unit length
    index = build_index(vectors)
    rows, scores = index.search(queries, 10)
    want_rows, want_scores = numpy_top_k(queries, vectors, 10)
    assert rows.dtype == np.int64 and scores.dtype == np.float32
    np.testing.assert_array_equal(rows, want_rows)
    np.testing.assert_allclose(scores, want_scores, rtol=1e-5, atol=1e-5)
    assert index.exact and index.info["factory"] == "Flat" and index.info["recall"] == 1.0


def test_k_larger_than_catalog_pads_with_minus_one_and_minus_inf():
    vectors = random_vectors(7, 8, seed=2)
    queries = random_vectors(3, 8, seed=3)
    rows, scores = build_index(vectors).search(queries, 10)
    want_rows, want_scores = numpy_top_k(queries, vectors, 7)
    np.testing.assert_array_equal(rows[:, :7], want_rows)
    np.testing.assert_allclose(scores[:, :7], want_scores, rtol=1e-5, atol=1e-6)
    assert (rows[:, 7:] == -1).all() and np.isneginf(scores[:, 7:]).all()
    empty_rows, empty_scores = build_index(vectors).search(queries, 0)
    assert empty_rows.shape == (3, 0) and empty_scores.shape == (3, 0)


def test_exclude_and_allowed_are_honoured_and_still_give_k():
    rng = np.random.default_rng(4)
    vectors = random_vectors(300, 16, seed=5)
    queries = random_vectors(40, 16, seed=6)
    allowed = rng.random(300) < 0.7
    exact_rows, _ = numpy_top_k(queries, vectors, 300)
    exclude = [exact_rows[i, :i] for i in range(40)]   # each query loses its own best items
    exclude[3] = exact_rows[3, :200]      # far more than the first fetch: forces a re-query
    exclude[4] = np.arange(300)           # nothing left: all padding
    exclude[5] = np.array([-1, 300, 10_000, exact_rows[5, 0]])   # out-of-range rows ignored
    exclude[6] = np.flatnonzero(allowed)[5:]    # only 5 allowed items remain: 5 + padding
    rows, scores = build_index(vectors).search(queries, 10, exclude=exclude, allowed=allowed)
    want_rows, want_scores = top_k(queries @ vectors.T, 10, exclude=exclude, allowed=allowed)
    np.testing.assert_array_equal(rows, want_rows)
    np.testing.assert_allclose(scores, want_scores, rtol=1e-5, atol=1e-6)
    full = [i for i in range(40) if i not in (4, 6)]
    assert (rows[full] >= 0).all()
    assert (rows[4] == -1).all() and np.isneginf(scores[4]).all()
    assert (rows[6, :5] >= 0).all() and (rows[6, 5:] == -1).all()
    got = rows[rows >= 0]
    assert allowed[got].all()
    for i in range(40):
        assert not np.isin(rows[i], exclude[i][exclude[i] >= 0]).any()


def test_approximate_index_passes_recall_gate_and_reports_it(big):
    vectors, index = big
    info = index.info
    assert not index.exact and info["factory"].startswith("IVF")
    assert info["recall"] >= 0.95 and info["recall_k"] == 10 and info["recall_queries"] == 500
    assert info["search_params"]["nprobe"] == info["tuning"][-1]["nprobe"]
    assert all(t["recall"] < 0.95 for t in info["tuning"][:-1])   # cheapest passing setting kept
    assert info["build_seconds"] > 0
    queries = vectors[:200] + 0.05 * np.random.default_rng(7).standard_normal((200, 32))
    rows, scores = index.search(queries.astype(np.float32), 10)
    want_rows, _ = numpy_top_k(queries, vectors, 10)
    overlap = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(rows, want_rows, strict=True)])
    assert overlap >= 0.9
    assert (np.diff(scores, axis=1) <= 1e-6).all()    # best first


def test_approximate_index_honours_a_sparse_allowed_mask(big):
    vectors, index = big
    rng = np.random.default_rng(8)
    allowed = rng.random(len(vectors)) < 0.01      # ~600 of 60k: the probed lists run short
    queries = vectors[rng.integers(0, len(vectors), 50)]
    exclude = [np.flatnonzero(allowed)[:20] for _ in range(50)]
    rows, _ = index.search(queries, 20, exclude=exclude, allowed=allowed)
    assert (rows >= 0).all()                      # widened until every query had 20
    assert allowed[rows].all()
    assert not np.isin(rows, exclude[0]).any()


def test_a_weak_index_is_refused_by_the_recall_gate():
    # 8 bits per item cannot tell 5000 items apart, however many lists are probed.
    vectors = clustered_vectors(5_000, 32, 100, seed=9)
    cfg = IndexConfig(factory="IVF16,PQ2x4", recall_queries=200, nprobe=(1, 4, 16))
    with pytest.raises(IndexRecallError) as caught:
        build_index(vectors, cfg)
    message = str(caught.value)
    assert "\n" not in message and "'IVF16,PQ2x4'" in message and "nprobe=16" in message
    assert "recall@10 0." in message and "min_recall 0.95" in message
    assert isinstance(caught.value, TailorError)  # one line, exit 2 from a command


def test_an_unbuildable_factory_is_a_one_line_error():
    vectors = random_vectors(500, 16, seed=10)
    with pytest.raises(IndexBuildError, match=r"'IVF4096,PQ4'.*500 x 16") as caught:
        build_index(vectors, IndexConfig(factory="IVF4096,PQ4"))
    assert "\n" not in str(caught.value)
    with pytest.raises(IndexBuildError, match="row 3"):
        build_index(np.where(np.arange(500)[:, None] == 3, np.nan, vectors))


def test_hnsw_factory_gets_its_ef_search_tuned():
    vectors = clustered_vectors(5_000, 16, 50, seed=11)
    index = build_index(vectors, IndexConfig(factory="HNSW16,Flat", recall_queries=200))
    assert index.info["recall"] >= 0.95 and "efSearch" in index.info["search_params"]
    allowed = np.zeros(5_000, dtype=bool)
    allowed[::100] = True                        # 50 allowed items scattered over the graph
    rows, _ = index.search(vectors[:5], 30, allowed=allowed)
    assert (rows >= 0).all() and allowed[rows].all()


@pytest.mark.parametrize("which", ["exact", "approximate"])
def test_save_load_round_trip_gives_identical_results(tmp_path, big, which):
    vectors, index = big if which == "approximate" else (None, None)
    if which == "exact":
        vectors = random_vectors(400, 16, seed=12)
        index = build_index(vectors)
    index.save(tmp_path)
    assert (tmp_path / INDEX_FILE).is_file() and (tmp_path / INFO_FILE).is_file()
    loaded = ItemIndex.load(tmp_path, threads=1)
    assert loaded.info == index.info
    queries = vectors[:64]
    allowed = np.random.default_rng(13).random(len(vectors)) < 0.5
    exclude = [vectors[:0, 0].astype(np.int64) + i for i in range(64)]
    for kwargs in ({}, {"allowed": allowed, "exclude": exclude}):
        a_rows, a_scores = index.search(queries, 15, **kwargs)
        b_rows, b_scores = loaded.search(queries, 15, **kwargs)
        np.testing.assert_array_equal(a_rows, b_rows)
        np.testing.assert_array_equal(a_scores, b_scores)


def test_load_of_a_missing_index_names_the_file(tmp_path):
    with pytest.raises(DataError, match=INDEX_FILE):
        ItemIndex.load(tmp_path)


def test_bad_search_arguments_are_clear_errors():
    index = build_index(random_vectors(50, 8, seed=14))
    with pytest.raises(ValueError, match=r"shape \(n, 8\)"):
        index.search(np.zeros((2, 9), dtype=np.float32), 5)
    with pytest.raises(ValueError, match="bool mask"):
        index.search(np.zeros((2, 8), dtype=np.float32), 5, allowed=np.ones(49, dtype=bool))
    with pytest.raises(ValueError, match="2 queries"):
        index.search(np.zeros((2, 8), dtype=np.float32), 5, exclude=[np.array([1])])
