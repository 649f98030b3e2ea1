"""Learned segments (models/segments.py): k-means finds planted clusters of user vectors, and
each segment is described by what its shoppers' histories hold."""

from __future__ import annotations

import numpy as np
import pytest

from models.segments import describe, learn_segments
from tests.helpers import one_event_histories


def planted(n_per: int = 60, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Three tight groups of unit vectors around orthogonal directions, and their labels."""
    rng = np.random.default_rng(seed)
    centres = np.eye(8, dtype=np.float32)[:3]
    labels = np.repeat(np.arange(3), n_per)
    vectors = centres[labels] + rng.normal(0, 0.05, (len(labels), 8)).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True), labels


def test_kmeans_recovers_the_planted_groups() -> None:
    vectors, labels = planted()
    segments = learn_segments(vectors, 3, seed=0)
    got = segments.assign(vectors)
    # one learned segment per planted group, whatever the numbering
    assert {(int(a), int(b)) for a, b in zip(labels, got, strict=True)} == \
        {(g, int(got[labels == g][0])) for g in range(3)}
    assert len(set(got)) == 3
    np.testing.assert_allclose(np.linalg.norm(segments.centroids, axis=1), 1.0, rtol=1e-5)


def test_same_data_and_seed_give_the_same_centroids_and_zero_vectors_get_none() -> None:
    vectors, _ = planted()
    with_empty = np.vstack([vectors, np.zeros((2, 8), dtype=np.float32)])
    a, b = learn_segments(with_empty, 3, seed=4), learn_segments(with_empty, 3, seed=4)
    np.testing.assert_array_equal(a.centroids, b.centroids)
    assert (a.assign(with_empty)[-2:] == -1).all()
    with pytest.raises(ValueError, match="at least as many shoppers"):
        learn_segments(np.zeros((5, 8), dtype=np.float32), 3)


def test_describe_counts_each_segments_categories_and_items() -> None:
    hist = one_event_histories(6)           # shopper i viewed item row i
    assignment = np.array([0, 0, 0, 1, 1, -1])
    categories = np.array(["a", "a", "b", "c", "c", "c"], dtype=object)
    ids = np.array([f"i{r}" for r in range(6)], dtype=object)
    first, second = describe(assignment, hist, 2, categories, ids)
    assert first["shoppers"] == 3 and second["shoppers"] == 2 and first["share"] == 0.6
    assert first["top_categories"][0] == {"category_id": "a", "share": round(2 / 3, 4)}
    assert second["top_categories"] == [{"category_id": "c", "share": 1.0}]
    assert {t["item_id"] for t in first["top_items"]} == {"i0", "i1", "i2"}
