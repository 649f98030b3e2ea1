"""Offline evaluation: full ranking over the whole catalog, by the split's protocol.

Every target user is scored against every item of the vocabulary (never sampled negatives),
in batches of users. What counts as a target and what is excluded from the ranking follow the
protocol of ``prepared.split``:

- leave-one-out: the held-out item; the user's earlier items (all their items in the fold's
  history, not only the last L) are excluded, as repeats are not what this protocol asks for.
  Metrics: hr@K, ndcg@K, coverage@K.
- temporal: the items the user carted or bought in the window; nothing is excluded (buying
  again is a real outcome). Metrics: recall@K, ndcg@K, hr@K, coverage@K.
- predefined: the test purchases; the user's purchases in the history are excluded.
  Metrics: hr@K, ndcg@K, coverage@K.

coverage@K (every protocol): the share of the catalog that appears in at least one top-K list.

Inputs come from ``prepared.histories(fold, users)``, the same histories the service sees.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np
import pandas as pd

from features.history import Histories
from features.infra import phase
from features.pipeline import Prepared
from models.base import Recommender
from training.metrics import hit_matrix, hit_rate_at_k, ndcg_at_k, recall_at_k

DEFAULT_KS: tuple[int, ...] = (5, 10, 20, 50)
METRICS_BY_PROTOCOL: dict[str, tuple[str, ...]] = {
    "leave-one-out": ("hr", "ndcg", "coverage"),
    "temporal": ("recall", "ndcg", "hr", "coverage"),
    "predefined": ("hr", "ndcg", "coverage"),
}


@dataclass(frozen=True, eq=False)
class EvalTask:
    """Who is evaluated, on what, with which items masked: all as arrays in the users' order."""

    protocol: str
    users: np.ndarray                      # raw user ids (object), sorted
    histories: Histories                   # one per user, same order
    targets: tuple[np.ndarray, np.ndarray]  # CSR (offsets, item rows)
    exclude: tuple[np.ndarray, np.ndarray] | None  # CSR, or None when nothing is excluded

    def __len__(self) -> int:
        return len(self.users)


def _csr_by_user(user_col: pd.Series, item_rows: np.ndarray,
                 users: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Distinct known item rows per user, in ``users`` order, as CSR (offsets, items)."""
    pos = pd.Index(users).get_indexer(pd.Index(user_col.astype(object)))
    keep = (pos >= 0) & (item_rows >= 0)
    pairs = np.unique(np.stack([pos[keep], item_rows[keep]]), axis=1) if keep.any() else \
        np.zeros((2, 0), dtype=np.int64)  # unique over columns: sorted by user, then item
    counts = np.bincount(pairs[0], minlength=len(users))
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    return offsets, pairs[1].astype(np.int64)


def build_task(prepared: Prepared, fold: str = "test", max_users: int | None = None,
               seed: int = 0) -> EvalTask:
    """Targets, exclusions and histories of ``fold``; ``max_users`` draws a seeded sample."""
    split = prepared.split
    protocol = split.protocol
    if protocol not in METRICS_BY_PROTOCOL:
        raise ValueError(f"unknown protocol {protocol!r}")
    vocab = prepared.item_vocab
    targets = split.targets[split.targets["fold"] == fold]
    target_rows = vocab.lookup(targets["item_id"])
    # Targets are train-fold items by construction; the check keeps an odd split from crashing.
    users = np.sort(targets.loc[target_rows >= 0, "user_id"].astype(object).unique())
    if max_users is not None and len(users) > max_users:
        rng = np.random.default_rng(seed)
        users = np.sort(rng.choice(users, size=max_users, replace=False))
    target_csr = _csr_by_user(targets["user_id"], target_rows, users)

    exclude = None
    if protocol in ("leave-one-out", "predefined"):
        seen = split.history_for(fold)
        if protocol == "predefined":
            seen = seen[seen["event"] == "purchase"]
        exclude = _csr_by_user(seen["user_id"], vocab.lookup(seen["item_id"]), users)
    histories = prepared.histories(fold, users=users)
    return EvalTask(protocol, users, histories, target_csr, exclude)


def _slice(csr: tuple[np.ndarray, np.ndarray], start: int,
           stop: int) -> tuple[np.ndarray, np.ndarray]:
    offsets, items = csr
    return offsets[start:stop + 1] - offsets[start], items[offsets[start]:offsets[stop]]


def evaluate_task(recommender: Recommender, task: EvalTask, ks: Iterable[int] = DEFAULT_KS,
                  batch_size: int = 1024, progress: bool = False) -> dict[str, float]:
    """Metrics of ``recommender`` on a built task (see ``evaluate``)."""
    return score_task(recommender, task, ks, batch_size, progress)[0]


def score_task(recommender: Recommender, task: EvalTask, ks: Iterable[int] = DEFAULT_KS,
               batch_size: int = 1024, progress: bool = False, per_user: str | None = None
               ) -> tuple[dict[str, float], pd.Series | None]:
    """``evaluate_task``'s metrics, and one metric's value per shopper (index: user id) when
    ``per_user`` names it (e.g. ``ndcg@10``): what a bootstrap over shoppers resamples."""
    ks = sorted(set(int(k) for k in ks))
    if not ks or ks[0] < 1:
        raise ValueError(f"ks must be positive, got {ks}")
    k_max = ks[-1]
    names = METRICS_BY_PROTOCOL[task.protocol]
    if per_user is not None and (per_user.split("@")[0] not in names or "coverage" in per_user
                                 or int(per_user.split("@")[1]) not in ks):
        raise ValueError(f"no per-shopper {per_user!r} under {task.protocol} with ks {ks}")
    per_metric = {"hr": lambda hits, n_rel, k: hit_rate_at_k(hits, k),
                  "recall": recall_at_k, "ndcg": ndcg_at_k}
    sums = {(m, k): 0.0 for m in names if m != "coverage" for k in ks}
    kept: list[np.ndarray] = []
    seen_items = {k: np.zeros(recommender.n_items, dtype=bool) for k in ks}
    starts = range(0, len(task), batch_size)
    if progress:
        from tqdm import tqdm  # local: only when asked for

        starts = tqdm(starts, desc=f"evaluate {recommender.name}", unit="batch", disable=None)
    for start in starts:
        stop = min(start + batch_size, len(task))
        hist = task.histories.select(np.arange(start, stop))
        exclude = None
        if task.exclude is not None:
            offsets, items = _slice(task.exclude, start, stop)
            exclude = np.split(items, offsets[1:-1])
        ranked, _ = recommender.recommend(hist, k_max, exclude=exclude)
        offsets, items = _slice(task.targets, start, stop)
        hits = hit_matrix(ranked, (offsets, items))
        n_rel = np.diff(offsets)
        for k in ks:
            if "coverage" in names:
                top = ranked[:, :k]
                seen_items[k][top[top >= 0]] = True
            for m in names:
                if m == "coverage":
                    continue
                values = per_metric[m](hits, n_rel, k)
                sums[(m, k)] += float(values.sum())
                if per_user == f"{m}@{k}":
                    kept.append(values)
    n = max(len(task), 1)
    out: dict[str, float] = {}
    for m in names:
        for k in ks:
            out[f"{m}@{k}"] = (seen_items[k].sum() / max(recommender.n_items, 1)
                               if m == "coverage" else sums[(m, k)] / n)
    out["users"] = float(len(task))
    values = None
    if per_user is not None:
        values = pd.Series(np.concatenate(kept) if kept else np.zeros(0),
                           index=pd.Index(task.users, name="user_id"), name=per_user)
    return {key: float(v) for key, v in out.items()}, values


def evaluate(recommender: Recommender, prepared: Prepared, fold: str = "test",
             ks: Iterable[int] = DEFAULT_KS, batch_size: int = 1024,
             max_users: int | None = None, *, progress: bool = False) -> dict[str, float]:
    """Full-ranking metrics of ``recommender`` on ``fold``, averaged over the target users.

    Keys are ``hr@10``, ``ndcg@10``, ``recall@10``, ``coverage@10`` (as the protocol has
    them) and ``users``, the number of users evaluated.
    """
    task = build_task(prepared, fold, max_users)
    return evaluate_task(recommender, task, ks, batch_size, progress)


def evaluate_all(recommenders: Mapping[str, Recommender], prepared: Prepared,
                 fold: str = "test", ks: Iterable[int] = DEFAULT_KS, batch_size: int = 1024,
                 max_users: int | None = None, *, progress: bool = False) -> pd.DataFrame:
    """One row per method (index ``method``): its metrics, ``users`` and scoring ``seconds``.

    The task (targets, exclusions, histories) is built once and shared by every method.
    """
    return evaluate_all_per_user(recommenders, prepared, fold, ks, batch_size, max_users,
                                 progress=progress)[0]


def evaluate_all_per_user(recommenders: Mapping[str, Recommender], prepared: Prepared,
                          fold: str = "test", ks: Iterable[int] = DEFAULT_KS,
                          batch_size: int = 1024, max_users: int | None = None, *,
                          progress: bool = False, per_user: str | None = None
                          ) -> tuple[pd.DataFrame, dict[str, pd.Series]]:
    """``evaluate_all``, and each method's per-shopper ``per_user`` metric (``score_task``)."""
    task = build_task(prepared, fold, max_users)
    rows, values = {}, {}
    with phase("evaluate", f"{len(recommenders)} methods on {len(task):,} {fold} shoppers"):
        for name, rec in recommenders.items():
            started = time.perf_counter()
            rows[name], kept = score_task(rec, task, ks, batch_size, progress, per_user)
            rows[name]["seconds"] = round(time.perf_counter() - started, 3)
            if kept is not None:
                values[name] = kept
    frame = pd.DataFrame.from_dict(rows, orient="index")
    frame.index.name = "method"
    return frame, values


def format_table(results: pd.DataFrame, ks: Iterable[int] | None = None, digits: int = 4) -> str:
    """A plain-text table of ``evaluate_all``'s frame, optionally only some cut-offs."""
    frame = results
    if ks is not None:
        wanted = {str(int(k)) for k in ks}
        frame = frame[[c for c in frame.columns if "@" not in c or c.split("@")[1] in wanted]]
    fmt = {c: (lambda v: f"{v:.{digits}f}") for c in frame.columns if "@" in c}
    if "users" in frame.columns:
        fmt["users"] = lambda v: f"{int(v)}"
    if "seconds" in frame.columns:
        fmt["seconds"] = lambda v: f"{v:.1f}"
    return frame.to_string(formatters=fmt)
