"""The trained bundle as an MLflow pyfunc: ``mlflow.pyfunc.load_model(uri).predict(df)``.

Input: a DataFrame with ``user_id`` (str) and an optional ``k`` (int, default 10) per row.
Output: one row per recommendation, ``user_id, item_id, rank, score``, best first per user.

Recommendations come from ``models.ranking.rank``, the path ``/recommend`` and
``make recommend-batch`` take: each shopper's stored history (``Bundle.histories``), what
they bought left out (as ``/recommend`` does by default), unavailable items never, ``k`` in
1..``models.ranking.MAX_K``. A shopper with no stored history (new, or unknown) gets the most
popular available items, whose scores are the popularity counts: scores are comparable within a
user, not across the two sources.

The model is logged with ``code_paths`` for ``features`` and ``models`` (see
``training.tracking.RunLogger.log_bundle``), so it loads in a fresh process without the project
installed.
"""

from __future__ import annotations

from typing import Any

import mlflow.pyfunc
import numpy as np
import pandas as pd

from models.bundle import Bundle
from models.ranking import Ranker, check_k, exclusions, rank

DEFAULT_K = 10
OUTPUT_COLUMNS = ("user_id", "item_id", "rank", "score")


class TailorPyfunc(mlflow.pyfunc.PythonModel):
    """Wraps ``models.bundle.Bundle``; the bundle folder is the ``bundle`` artifact."""

    def __init__(self) -> None:
        self.ranker: Ranker | None = None

    def load_context(self, context: mlflow.pyfunc.PythonModelContext) -> None:
        self.ranker = load_ranker(context.artifacts["bundle"])

    def predict(self, context: Any, model_input: pd.DataFrame,
                params: dict[str, Any] | None = None) -> pd.DataFrame:
        if self.ranker is None:  # predict without load_context (e.g. called on a fresh object)
            self.load_context(context)
        return recommend_frame(self.ranker, model_input)


def load_ranker(bundle_dir: str) -> Ranker:
    bundle = Bundle.load(bundle_dir)
    return Ranker(bundle, bundle.item_index()[0])


def _ks(model_input: pd.DataFrame) -> np.ndarray:
    if "k" not in model_input:
        return np.full(len(model_input), DEFAULT_K, dtype=np.int64)
    ks = pd.to_numeric(model_input["k"], errors="coerce").fillna(DEFAULT_K).to_numpy()
    for k in np.unique(ks):
        check_k(int(k))
    return ks.astype(np.int64)


def recommend_frame(ranker: Ranker, model_input: pd.DataFrame) -> pd.DataFrame:
    """Top-k items per input row, as a long frame (see the module docstring)."""
    if "user_id" not in model_input:
        raise ValueError("input needs a 'user_id' column")
    users = model_input["user_id"].astype(str).to_numpy(dtype=object)
    ks = _ks(model_input)
    if len(users) == 0:
        return _frame([], [], [], [])
    distinct, inverse = np.unique(users, return_inverse=True)
    histories = ranker.histories(distinct)
    ranked = rank(ranker, histories, int(ks.max()), exclusions(histories, purchased=True))
    item_ids = ranker.bundle.item_vocab.ids
    out_users, out_items, out_ranks, out_scores = [], [], [], []
    for i, user in enumerate(users):
        r, s = ranked.rows[inverse[i], :ks[i]], ranked.scores[inverse[i], :ks[i]]
        keep = r >= 0  # -1 pads when fewer than k items are available
        r, s = r[keep], s[keep]
        out_users.append(np.full(len(r), user, dtype=object))
        out_items.append(item_ids[r])
        out_ranks.append(np.arange(1, len(r) + 1, dtype=np.int64))
        out_scores.append(s.astype(np.float64))
    return _frame(out_users, out_items, out_ranks, out_scores)


def _frame(users: list, items: list, ranks: list, scores: list) -> pd.DataFrame:
    cat = lambda parts, dtype: np.concatenate(parts) if parts else np.array([], dtype=dtype)
    return pd.DataFrame({
        "user_id": pd.array(cat(users, object), dtype="string"),
        "item_id": pd.array(cat(items, object), dtype="string"),
        "rank": cat(ranks, np.int64),
        "score": cat(scores, np.float64),
    })
