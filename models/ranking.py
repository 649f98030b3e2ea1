"""The one ranking path: what `/recommend`, `make recommend-batch` and the MLflow pyfunc all call.

``Ranker`` holds what every ranking reads (the bundle's recommender, its FAISS index, the
availability mask, the popularity order); ``rank`` turns histories into top-k item rows:

* histories with a known item: one user-tower forward for all of them, then either
  - ``index``: a FAISS search with the user vectors, when the bundle's recommender is the towers
    alone without the interest term, so the index ranks exactly as ``recommender.score`` does;
  - ``full_scoring``: ``recommender.recommend`` over the whole catalog in one vectorized call,
    when the recommender adds per-shopper sparse signals (the ranking stack, the interest term)
    that an index over item vectors cannot hold;
  - ``two_stage``: the same recommender over a few hundred candidates only (the index's
    nearest, the shopper's items and their neighbours, popular items), for catalogs of
    ``models.retrieval.TWO_STAGE_MIN_ITEMS`` items and more;
* histories with no known item: the most popular available items of the recent window.

Unavailable items never come back; ``allowed`` narrows further (a category); ``exclude`` holds
per-history item rows that must not come back (purchases, seen items, explicit ids), chosen by
``exclusions``; a merchandising ``Plan`` filters and then arranges the top candidates (diversity,
boosts, pins: ``models/merchandising.py``). ``k`` is capped at ``MAX_K`` everywhere.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from features.history import Histories
from features.rules import NO_RULES
from features.schema import EVENT_TYPES
from models.bundle import Bundle
from models.index import ItemIndex
from models.merchandising import Catalog, Plan, arrange, make_plan, pool_size
from models.retrieval import TWO_STAGE_MIN_ITEMS, neighbour_tables, two_stage
from models.scoring import TwoTowerRecommender

MAX_K = 1000
PURCHASE = EVENT_TYPES.index("purchase")


def check_k(k: int) -> int:
    if not 1 <= int(k) <= MAX_K:
        raise ValueError(f"k must be in 1..{MAX_K}, got {k}")
    return int(k)


def popular_items(bundle: Bundle) -> tuple[np.ndarray, np.ndarray]:
    """Available item rows by popularity, most popular first (ties: vocabulary order)."""
    items = bundle.items
    available = items["available"].to_numpy(dtype=bool)
    popularity = items["popularity"].to_numpy(dtype=np.float64)
    rows = np.flatnonzero(available)
    order = np.argsort(-popularity[rows], kind="stable")  # stable: deterministic ties
    return rows[order], popularity[rows[order]]


class Ranker:
    """A loaded bundle and its index, with what ranking derives from them once."""

    def __init__(self, bundle: Bundle, index: ItemIndex,
                 two_stage_from: int = TWO_STAGE_MIN_ITEMS) -> None:
        if index.n_items != len(bundle.item_vocab):
            raise ValueError(f"index holds {index.n_items} items, the bundle "
                             f"{len(bundle.item_vocab)}")
        self.bundle, self.index = bundle, index
        self.available = bundle.items["available"].to_numpy(dtype=bool)
        self.popularity = bundle.items["popularity"].to_numpy(dtype=np.float64)
        self.popular_rows, _ = popular_items(bundle)     # available rows, most popular first
        self.recommender = bundle.recommender
        self.towers = getattr(self.recommender, "towers", self.recommender)
        # The index ranks exactly like score() only for the towers alone, interest term off.
        self.method = "index" if isinstance(self.recommender, TwoTowerRecommender) and \
            not self.recommender.model.cfg.interest else "full_scoring"
        # A large catalog: candidates first, then the stack over them (models/retrieval.py).
        if self.method == "full_scoring" and len(bundle.item_vocab) >= two_stage_from:
            self.method = "two_stage"
        self.neighbours = neighbour_tables(getattr(self.recommender, "sources", {})) \
            if self.method == "two_stage" else []
        # "Now" for ages: the end of the data the model knows (a session may move it later).
        self.now_ms = bundle.now_ms
        self.catalog = Catalog(bundle.item_vocab.ids, bundle.items, bundle.item_vectors)
        # Merchandising with no rules: the measured defaults (diversity), on every path.
        self.default_plan = make_plan(NO_RULES, self.catalog)

    def histories(self, users: np.ndarray | list[str]) -> Histories:
        """The stored histories of ``users`` as of the end of the data, as every path sees them."""
        return self.bundle.histories.of(users)


@dataclass(frozen=True)
class Ranked:
    rows: np.ndarray       # (n, k) item rows, -1 pads
    scores: np.ndarray     # (n, k) float32, -inf pads
    personal: np.ndarray   # (n,) bool: ranked from the history (else popularity)
    flags: np.ndarray | None = None   # (n, k) int8: why each item holds its slot (merchandising)


def exclusions(histories: Histories, *, purchased: bool = True, seen: bool = False,
               explicit: list[np.ndarray] | None = None) -> list[np.ndarray] | None:
    """Per history, the item rows that must not come back: what the shopper bought
    (``purchased``), everything they interacted with (``seen``), and ``explicit`` rows."""
    if not (purchased or seen or explicit):
        return None
    out = []
    for i in range(len(histories)):
        start, end = histories.offsets[i], histories.offsets[i + 1]
        items = histories.item_idx[start:end]
        if seen:
            parts = [items]
        elif purchased:
            parts = [items[histories.event_code[start:end] == PURCHASE]]
        else:
            parts = []
        if explicit is not None:
            parts.append(np.asarray(explicit[i], dtype=np.int64))
        rows = np.concatenate(parts) if parts else np.array([], dtype=np.int64)
        out.append(np.unique(rows[rows >= 0]))
    return out


def rank(ranker: Ranker, histories: Histories, k: int, exclude: list[np.ndarray] | None = None,
         allowed: np.ndarray | None = None, plan: Plan | None = None,
         demote: list[np.ndarray] | None = None) -> Ranked:
    """Top-``k`` item rows per history: the model for histories with a known item, the popular
    fallback for the others. ``allowed`` narrows the available items; ``exclude`` per history;
    ``plan`` (``models.merchandising``) filters, then arranges the model's top candidates; None:
    the defaults (``ranker.default_plan``), so every path ranks alike. ``demote``: per history,
    rows whose relevance is cut (``models.merchandising.DEMOTION``)."""
    k = check_k(k)
    plan = ranker.default_plan if plan is None else plan
    allowed = ranker.available if allowed is None else allowed & ranker.available
    if plan.allowed is not None:
        allowed = allowed & plan.allowed
    if demote is not None and not any(len(d) for d in demote):
        demote = None
    if plan.plain and demote is None:
        return _rank(ranker, histories, k, exclude, allowed)
    pool = _rank(ranker, histories, pool_size(k), exclude, allowed)
    rows, scores, flags = arrange(plan, ranker.catalog, pool.rows, pool.scores, k,
                                  blocked=exclude, allowed=allowed, demote=demote)
    return Ranked(rows, scores, pool.personal, flags)


def _rank(ranker: Ranker, histories: Histories, k: int, exclude: list[np.ndarray] | None,
          allowed: np.ndarray) -> Ranked:
    n = len(histories)
    rows = np.full((n, k), -1, dtype=np.int64)
    scores = np.full((n, k), -np.inf, dtype=np.float32)
    personal = histories.lengths > 0
    idx = np.flatnonzero(personal)
    if len(idx):
        hist = histories if len(idx) == n else histories.select(idx)
        excl = None if exclude is None else [exclude[i] for i in idx]
        if ranker.method == "index":
            vectors = ranker.towers.user_vectors(hist)
            got, got_scores = ranker.index.search(vectors, k, exclude=excl, allowed=allowed)
            # Index scores are cosines; score() divides them by the softmax temperature.
            got_scores = got_scores / np.float32(ranker.towers.model.cfg.temperature)
        elif ranker.method == "two_stage":
            got, got_scores = two_stage(ranker.recommender, ranker.index,
                                        ranker.towers.user_vectors(hist), hist, k, excl, allowed,
                                        ranker.popular_rows, ranker.neighbours)
        else:
            got, got_scores = ranker.recommender.recommend(hist, k, exclude=excl,
                                                           allowed=allowed)
        rows[idx], scores[idx] = got[:, :k], got_scores[:, :k]
    fallback = np.flatnonzero(~personal)
    candidates = ranker.popular_rows[allowed[ranker.popular_rows]] if len(fallback) else None
    for i in fallback:
        top = _popular(candidates, k, None if exclude is None else exclude[i])
        rows[i, :len(top)] = top
        scores[i, :len(top)] = ranker.popularity[top]
    return Ranked(rows, scores, personal)


def _popular(candidates: np.ndarray, k: int, exclude: np.ndarray | None) -> np.ndarray:
    if exclude is None or not len(exclude):
        return candidates[:k]
    head = candidates[:k + len(exclude)]  # exclusions remove at most len(exclude) of them
    return head[~np.isin(head, exclude)][:k]
