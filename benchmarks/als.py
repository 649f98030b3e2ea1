"""Implicit-feedback ALS (the ``implicit`` library) behind Tailor's ``Recommender`` contract.

A benchmark-only baseline (``implicit`` is in ``requirements-bench.txt``, not in the product):
the classic matrix factorization an engineer would try first. Item factors are fitted on the
fold's events (a user-item matrix of event weights: view 1, cart 2, purchase 4, the largest per
pair); a shopper is scored by folding their history into a user factor with one exact least
squares step (``recalculate_user``), so, like every Tailor recommender, it ranks from the
history it is given and serves unseen shoppers too.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import pandas as pd
from threadpoolctl import threadpool_limits

from features.history import Histories
from models.baselines import INTENT_WEIGHTS, Baseline, _user_item_matrix
from models.sparse_scores import history_matrix


@dataclass(frozen=True)
class ALSConfig:
    factors: int = 64
    regularization: float = 0.05
    alpha: float = 10.0        # confidence = 1 + alpha * event weight
    iterations: int = 15
    seed: int = 0


class ALS(Baseline):
    name = "als"
    config_type = ALSConfig

    def _fit(self, events: pd.DataFrame) -> None:
        from implicit.cpu.als import AlternatingLeastSquares  # benchmark-only dependency

        cfg: ALSConfig = self.config
        matrix = _user_item_matrix(events, self.item_vocab, INTENT_WEIGHTS).astype(np.float32)
        # implicit runs its own threads; OpenBLAS's pool on top of them only contends.
        with threadpool_limits(1, "blas"):
            self.model = AlternatingLeastSquares(
                factors=cfg.factors, regularization=cfg.regularization, alpha=cfg.alpha,
                iterations=cfg.iterations, random_state=cfg.seed,
                num_threads=os.cpu_count() or 1)
            self.model.fit(matrix.tocsr(), show_progress=False)

    def score(self, histories: Histories) -> np.ndarray:
        n = len(histories)
        weights = np.asarray(INTENT_WEIGHTS, dtype=np.float64)[histories.event_code]
        matrix = history_matrix(histories, self.n_items, weights).astype(np.float32)
        with threadpool_limits(1, "blas"):
            users = self.model.recalculate_user(np.arange(n), matrix.tocsr())
        scores = np.asarray(users, dtype=np.float32) @ self.model.item_factors.T
        # Shoppers with nothing to fold in get a zero vector: the popularity fill orders them.
        return scores + self._fill(n)
