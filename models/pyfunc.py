"""The trained bundle as an MLflow pyfunc: ``mlflow.pyfunc.load_model(uri).predict(df)``.

Input: a DataFrame with ``user_id`` (str) and an optional ``k`` (int, default 10) per row.
Output: one row per recommendation, ``user_id, item_id, rank, score``, best first per user.

Recommendations start from each shopper's stored history (``Bundle.user_histories``), exactly
like the service does; unavailable items never come back. A shopper with no stored history
(new, or unknown) gets the most popular available items instead, because an empty history gives
the user tower nothing to work with (a zero vector would rank items arbitrarily). Their scores
are the popularity counts, so scores are comparable within a user, not across the two sources.

The model is logged with ``code_paths`` for ``features`` and ``models`` (see
``training.tracking.log_bundle``), so it loads in a fresh process without the project installed.
"""

from __future__ import annotations

from typing import Any

import mlflow.pyfunc
import numpy as np
import pandas as pd

from models.bundle import Bundle

DEFAULT_K = 10
OUTPUT_COLUMNS = ("user_id", "item_id", "rank", "score")


class TailorPyfunc(mlflow.pyfunc.PythonModel):
    """Wraps ``models.bundle.Bundle``; the bundle folder is the ``bundle`` artifact."""

    def __init__(self) -> None:
        self.bundle: Bundle | None = None

    def load_context(self, context: mlflow.pyfunc.PythonModelContext) -> None:
        self.bundle = Bundle.load(context.artifacts["bundle"])

    def predict(self, context: Any, model_input: pd.DataFrame,
                params: dict[str, Any] | None = None) -> pd.DataFrame:
        if self.bundle is None:  # predict without load_context (e.g. called on a fresh object)
            self.load_context(context)
        return recommend_frame(self.bundle, model_input)


def _ks(model_input: pd.DataFrame) -> np.ndarray:
    if "k" not in model_input:
        return np.full(len(model_input), DEFAULT_K, dtype=np.int64)
    ks = pd.to_numeric(model_input["k"], errors="coerce").fillna(DEFAULT_K).to_numpy()
    if (ks < 1).any():
        raise ValueError(f"k must be >= 1, got {int(ks.min())}")
    return ks.astype(np.int64)


def popular_items(bundle: Bundle) -> tuple[np.ndarray, np.ndarray]:
    """Available item rows by popularity, most popular first (ties: vocabulary order)."""
    items = bundle.items
    available = items["available"].to_numpy(dtype=bool)
    popularity = items["popularity"].to_numpy(dtype=np.float64)
    rows = np.flatnonzero(available)
    order = np.argsort(-popularity[rows], kind="stable")  # stable: deterministic ties
    return rows[order], popularity[rows[order]]


def recommend_frame(bundle: Bundle, model_input: pd.DataFrame) -> pd.DataFrame:
    """Top-k available items per input row, as a long frame (see the module docstring)."""
    if "user_id" not in model_input:
        raise ValueError("input needs a 'user_id' column")
    users = model_input["user_id"].astype(str).to_numpy(dtype=object)
    ks = _ks(model_input)
    if len(users) == 0:
        return _frame([], [], [], [])

    distinct, inverse = np.unique(users, return_inverse=True)
    # Score only shoppers with a stored event on a known item; everyone else gets the fallback.
    # (Also keeps build_histories away from a request where nobody has a history at all.)
    stored = bundle.histories
    usable = stored["user_id"].isin(distinct).to_numpy() & \
        (bundle.item_vocab.lookup(stored["item_id"]) >= 0)
    scored = np.intersect1d(distinct, stored["user_id"].to_numpy(dtype=object)[usable])
    position = np.searchsorted(scored, distinct)  # both sorted; valid where has_history
    has_history = np.isin(distinct, scored)
    k_max = int(ks.max())
    rows = np.empty((0, k_max), dtype=np.int64)
    scores = np.empty((0, k_max), dtype=np.float32)
    if len(scored):
        allowed = bundle.items["available"].to_numpy(dtype=bool)
        rows, scores = bundle.recommender.recommend(bundle.user_histories(scored), k_max,
                                                    allowed=allowed)
    pop_rows, pop_scores = popular_items(bundle)
    item_ids = bundle.item_vocab.ids

    out_users, out_items, out_ranks, out_scores = [], [], [], []
    for i, user in enumerate(users):
        d = inverse[i]
        if has_history[d]:
            r, s = rows[position[d], :ks[i]], scores[position[d], :ks[i]]
        else:
            r, s = pop_rows[:ks[i]], pop_scores[:ks[i]]
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
