"""The registry's champion scored on this run's test fold, so promotion compares two models on
the same data even when the champion was trained on other data.

A shop retrains on a log that has grown since the champion was trained: the data fingerprint
differs every time, and the champion's own test metrics come from an older test window. Its
logged score says nothing about how it does now. So the champion's bundle (its own vocabulary,
towers and ranking stack) ranks this run's test shoppers from their histories, exactly as it
would when serving them, and its metrics are computed with this run's targets and exclusions.
Items the champion does not know cannot be recommended by it; shoppers' events on such items
are not part of its input.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pandas as pd
from mlflow.entities.model_registry import ModelVersion

from features.history import Histories
from features.pipeline import Prepared
from models.base import Recommender
from models.bundle import Bundle
from models.registry import resolve_model
from training.evaluate import EvalTask, build_task, score_task
from training.promotion import ChampionSawTestData


class InThisVocabulary(Recommender):
    """Another vocabulary's recommender, its scores laid out over this data's item rows."""

    def __init__(self, recommender: Recommender, columns: np.ndarray) -> None:
        self.inner = recommender
        self.columns = columns     # per item row here: the inner recommender's row, or -1
        self.name = f"champion ({recommender.name})"

    @property
    def n_items(self) -> int:
        return len(self.columns)

    def score(self, histories: Histories) -> np.ndarray:
        inner = self.inner.score(histories)
        known = self.columns >= 0
        scores = np.full((len(histories), self.n_items), -np.inf, dtype=np.float32)
        scores[:, known] = inner[:, self.columns[known]]
        return scores


def per_user_on(bundle: Bundle, prepared: Prepared, metric: str, fold: str = "test"
                ) -> pd.Series:
    """``metric`` (e.g. ``ndcg@10``) of ``bundle`` for each of ``prepared``'s ``fold`` shoppers
    (index: user id; empty when the fold has no targets)."""
    task = build_task(prepared, fold)
    if len(task) == 0:
        return pd.Series([], index=pd.Index([], name="user_id"), dtype=np.float64, name=metric)
    histories = prepared.histories(fold, users=task.users, item_vocab=bundle.item_vocab,
                                   max_len=bundle.model.cfg.history_len)
    columns = bundle.item_vocab.lookup(prepared.item_vocab.ids)
    theirs = EvalTask(task.protocol, task.users, histories, task.targets, task.exclude)
    k = int(metric.split("@")[1])
    values = score_task(InThisVocabulary(bundle.recommender, columns), theirs, ks=(k,),
                        per_user=metric)[1]
    assert values is not None  # asked for
    return values


def champion_scorer(prepared: Prepared, metric: str) -> Callable[[ModelVersion], pd.Series]:
    """How promotion scores a champion trained on other data: per shopper of this run's test
    fold, so the lift's bootstrap pairs each shopper's two values."""
    def score(champion: ModelVersion) -> pd.Series:
        bundle = Bundle.load(resolve_model(str(champion.version)))
        seen = champion_saw(bundle, prepared)
        if seen:
            raise ChampionSawTestData(seen)
        return per_user_on(bundle, prepared, metric)
    return score


def champion_saw(bundle: Bundle, prepared: Prepared) -> str | None:
    """Why ``bundle`` (refitted for serving) may have trained on ``prepared``'s test fold, or
    None. With time: its data reaches into the test window. Without: a refit on any data may
    hold these shoppers' held-out items, so it is never graded on them."""
    refit_info = bundle.info.get("refit")
    if not refit_info:
        return None
    test_start = prepared.split.test_start
    last = refit_info.get("last_event")
    if test_start is not None and last is not None:
        if pd.Timestamp(last) < test_start:
            return None
        return f"its data ends {last}, this test window starts {test_start}"
    return "data without time: its events may include this run's held-out ones"
