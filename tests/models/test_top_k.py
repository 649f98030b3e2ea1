"""``models.base.top_k``: the ranking every recommender's ``recommend`` goes through."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from models.base import TIE_MARGIN, top_k


def stable_reference(scores: np.ndarray, k: int) -> np.ndarray:
    """Best first, equal scores in item order: a full stable sort."""
    return np.argsort(-scores, axis=1, kind="stable")[:, :k]


@pytest.mark.parametrize("levels", [3, 50, 100_000])
def test_equal_scores_come_back_in_item_order(levels: int) -> None:
    # Few distinct levels: ties everywhere, and runs of ties much longer than the margin.
    rng = np.random.default_rng(levels)
    scores = rng.integers(0, levels, size=(64, 500)).astype(np.float32)
    items, values = top_k(scores, 20)
    np.testing.assert_array_equal(items, stable_reference(scores, 20))
    np.testing.assert_array_equal(values, np.take_along_axis(scores, items, axis=1))


def test_same_answer_with_any_thread_count() -> None:
    rng = np.random.default_rng(1)
    scores = np.round(rng.standard_normal((300, 2000)), 1).astype(np.float32)  # many ties
    before = torch.get_num_threads()
    try:
        answers = []
        for threads in (1, 2):
            torch.set_num_threads(threads)
            answers.append(top_k(scores, 10 + TIE_MARGIN)[0])
    finally:
        torch.set_num_threads(before)
    np.testing.assert_array_equal(answers[0], answers[1])
    np.testing.assert_array_equal(answers[0], stable_reference(scores, 10 + TIE_MARGIN))


def test_masks_and_padding_with_ties() -> None:
    scores = np.zeros((2, 6), dtype=np.float32)
    allowed = np.array([True, False, True, True, False, True])
    items, values = top_k(scores, 5, exclude=[np.array([3]), np.array([])], allowed=allowed)
    assert items.tolist() == [[0, 2, 5, -1, -1], [0, 2, 3, 5, -1]]
    assert np.isneginf(values[0, 3:]).all() and np.isneginf(values[1, 4:]).all()
