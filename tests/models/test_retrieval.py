"""models/retrieval.py: two-stage ranking re-ranks candidates with the same stack, so on the
embedded shop it gives (nearly) the lists full scoring gives, and honours exclusions and filters
exactly."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp

from features.rules import Rules
from models.bundle import Bundle
from models.merchandising import make_plan
from models.ranking import Ranker, exclusions, rank
from models.retrieval import NEIGHBOURS, candidates, neighbour_tables


@pytest.fixture(scope="module")
def rankers(tiny_bundle: Path) -> tuple[Ranker, Ranker]:
    bundle = Bundle.load(tiny_bundle)
    index, _ = bundle.item_index()
    return Ranker(bundle, index), Ranker(bundle, index, two_stage_from=0)


def test_candidates_hold_the_recent_items_their_neighbours_retrieved_and_popular() -> None:
    table = sp.csr_matrix(([0.9, 0.5, 0.7], ([4, 4, 2], [7, 8, 9])), shape=(10, 10))
    found = candidates(np.array([2, 4, 4]), np.array([1, -1]), np.array([0, 3]), [table])
    assert found.tolist() == [0, 1, 2, 3, 4, 7, 8, 9]


def test_neighbour_tables_keep_each_items_strongest() -> None:
    class Source:
        similarity = sp.csr_matrix(np.arange(1, 1 + 3 * (NEIGHBOURS + 5), dtype=np.float32)
                                   .reshape(3, NEIGHBOURS + 5))

    (table,) = neighbour_tables({"knn": Source(), "repeat": object()})
    assert np.diff(table.indptr).tolist() == [NEIGHBOURS] * 3
    assert set(table.indices[:NEIGHBOURS]) == set(range(5, NEIGHBOURS + 5))   # the largest


def test_two_stage_ranks_like_full_scoring_and_honours_the_filters(
        rankers: tuple[Ranker, Ranker]) -> None:
    full, two = rankers
    assert full.method == "full_scoring" and two.method == "two_stage"
    hist = full.bundle.histories.select(np.arange(300))
    exclude = exclusions(hist, purchased=True, explicit=[h[:2] for h in
                                                          (hist.items_of(i) for i in range(300))])
    allowed = full.available.copy()
    allowed[full.popular_rows[:5]] = False          # the top sellers filtered out
    plain = make_plan(Rules(diversity=0.0), full.catalog)   # the model's own order
    a = rank(full, hist, 10, exclude, allowed, plain)
    b = rank(two, hist, 10, exclude, allowed, plain)
    overlap = np.mean([len(set(a.rows[i]) & set(b.rows[i])) / 10 for i in range(300)])
    assert overlap >= 0.95, overlap
    for i in range(300):
        got = b.rows[i][b.rows[i] >= 0]
        assert not np.isin(got, exclude[i]).any() and allowed[got].all()
        assert (np.diff(b.scores[i][b.rows[i] >= 0]) <= 0).all()   # best first
        # an item in both lists has the same score: the same formula scored it
        full_scores = dict(zip(a.rows[i].tolist(), a.scores[i].tolist(), strict=True))
        for row, score in zip(got.tolist(), b.scores[i].tolist(), strict=False):
            if row in full_scores:
                assert score == pytest.approx(full_scores[row], rel=1e-4, abs=1e-5)


def test_two_stage_keeps_the_default_arrangement_close(rankers: tuple[Ranker, Ranker]) -> None:
    full, two = rankers
    hist = full.bundle.histories.select(np.arange(200))
    a, b = rank(full, hist, 10), rank(two, hist, 10)   # diversity as served
    overlap = np.mean([len(set(a.rows[i]) & set(b.rows[i])) / 10 for i in range(200)])
    assert overlap >= 0.9, overlap
