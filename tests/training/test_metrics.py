"""training/metrics.py: hand-worked answers, and a cross-check against torchmetrics' retrieval
metrics on seeded random rankings."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torchmetrics.functional.retrieval import (
    retrieval_hit_rate,
    retrieval_normalized_dcg,
    retrieval_recall,
)

from training.metrics import hit_matrix, hit_rate_at_k, n_targets, ndcg_at_k, recall_at_k

LOG2_3 = np.log2(3.0)


def test_known_answers() -> None:
    ranked = np.array([[3, 1, 2], [0, 1, -1], [5, 6, 7]])
    targets = [np.array([1, 9]), np.array([0, 1]), np.array([], dtype=np.int64)]
    hits = hit_matrix(ranked, targets)
    assert hits.tolist() == [[False, True, False], [True, True, False], [False, False, False]]
    assert hit_rate_at_k(hits, 1).tolist() == [0.0, 1.0, 0.0]
    rel = n_targets(targets)
    # user 0: 1 hit of 2 targets in the top 2; user 1: both; user 2 has no target (0, not NaN)
    assert recall_at_k(hits, rel, 2).tolist() == [0.5, 1.0, 0.0]
    # recall's denominator is min(|targets|, k): one hit of two targets at k=1 is 1.0
    assert recall_at_k(hits, rel, 1).tolist() == [0.0, 1.0, 0.0]
    ideal = 1 + 1 / LOG2_3
    assert ndcg_at_k(hits, rel, 2) == pytest.approx([(1 / LOG2_3) / ideal, 1.0, 0.0])
    with pytest.raises(ValueError, match="k=4"):
        ndcg_at_k(hits, rel, 4)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_agrees_with_torchmetrics(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n_users, n_items, depth = 60, 40, 20
    scores = rng.random((n_users, n_items))
    ranked = np.argsort(-scores, axis=1, kind="stable")[:, :depth]
    targets = [rng.choice(n_items, size=rng.integers(1, 8), replace=False)
               for _ in range(n_users)]
    hits = hit_matrix(ranked, targets)
    rel = n_targets(targets)
    for k in (1, 5, 10, 20):
        ours = {"hr": hit_rate_at_k(hits, k), "ndcg": ndcg_at_k(hits, rel, k),
                "recall": recall_at_k(hits, rel, k)}
        for u in range(n_users):
            preds = torch.from_numpy(scores[u])
            truth = torch.zeros(n_items, dtype=torch.bool)
            truth[torch.from_numpy(targets[u])] = True
            assert ours["hr"][u] == pytest.approx(float(retrieval_hit_rate(preds, truth, top_k=k)))
            assert ours["ndcg"][u] == pytest.approx(
                float(retrieval_normalized_dcg(preds, truth, top_k=k)), abs=1e-6)
            # torchmetrics divides by every target; Tailor by min(|targets|, k) (README)
            theirs = float(retrieval_recall(preds, truth, top_k=k))
            assert ours["recall"][u] == pytest.approx(theirs * rel[u] / min(rel[u], k),
                                                      abs=1e-6)
