"""The evaluation's baselines: most popular, repeat, item-kNN and sequential item-kNN.

Every baseline implements ``models.base.Recommender`` and is built the same way::

    model = ItemKNN.fit(train_events, item_vocab, item_features, ItemKNNConfig())
    model = ItemKNN.from_prepared(prepared, fold="test")   # the same, from a Prepared

``train_events`` are canonical events (sorted or not), ``item_vocab`` fixes the item rows the
scores are over, ``item_features`` is ``features.item_features.item_features`` for that
vocabulary (popularity fills the lists; None recomputes it from ``train_events``).

Scores are dense float32 (n_users, n_items). The history-based baselines add a tiny popularity
score (``FILL_SCALE`` x a rank score in (0, 1]) to every item, far below any real score, so the
items a model has no opinion on come back in popularity order and an empty history still gets a
sensible list; the scores stay in float32's normal range, so the order is exact.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Self

import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch

from features.history import Histories
from features.item_features import item_features as compute_item_features
from features.schema import EVENT_TYPES, empty_items
from features.split import sort_events
from features.vocab import Vocabulary
from models.base import Recommender
from models.sparse_scores import (
    history_entries,
    max_per_cell,
    scatter_scores,
    times_similarity,
    top_n_per_row,
)

# Weights per event code (view, addtocart, purchase): intent counts more than a glance.
INTENT_WEIGHTS: tuple[float, float, float] = (1.0, 2.0, 4.0)
FILL_SCALE = 1e-25       # popularity fill; below every real score (see MIN_DECAY)
MIN_DECAY = 1e-20        # recency decay floor, so a real score never falls to the fill's level
DEFAULT_POPULARITY_DAYS = 7.0


# --- shared pieces ----------------------------------------------------------------------------

def popularity_rank_scores(item_features: pd.DataFrame,
                           weights: tuple[float, float, float] = INTENT_WEIGHTS) -> np.ndarray:
    """float32 (n_items,) in (0, 1], distinct per item: 1.0 for the most popular.

    Order: weighted recent events (views/carts/purchases x ``weights``), then all-time events,
    then the item row, so ties are broken deterministically. Ranks rather than raw counts keep
    every score distinct and exactly representable in float32.
    """
    feats = item_features.sort_values("item_idx")
    w_view, w_cart, w_buy = weights
    recent = (w_view * feats["recent_views"].to_numpy(np.float64)
              + w_cart * feats["recent_carts"].to_numpy(np.float64)
              + w_buy * feats["recent_purchases"].to_numpy(np.float64))
    total = feats["total_events"].to_numpy(np.float64)
    n = len(feats)
    order = np.lexsort((np.arange(n), -total, -recent))  # last key is the primary one
    rank = np.empty(n, dtype=np.int64)
    rank[order] = np.arange(n)
    return ((n - rank) / max(n, 1)).astype(np.float32)


def event_codes(events: pd.DataFrame) -> np.ndarray:
    """int8 index into EVENT_TYPES, whether or not ``event`` is already categorical."""
    col = events["event"]
    if isinstance(col.dtype, pd.CategoricalDtype) and tuple(col.cat.categories) == EVENT_TYPES:
        return col.cat.codes.to_numpy(np.int8)
    return pd.Categorical(col, categories=EVENT_TYPES).codes.astype(np.int8)


def _user_item_matrix(events: pd.DataFrame, item_vocab: Vocabulary,
                      weights: tuple[float, float, float]) -> sp.csr_matrix:
    """(users in ``events``, n_items): the largest event weight per user and item."""
    items = item_vocab.lookup(events["item_id"])
    known = items >= 0
    users, _ = pd.factorize(events["user_id"].to_numpy()[known])
    vals = np.asarray(weights, dtype=np.float64)[event_codes(events)[known]]
    n_users = int(users.max()) + 1 if len(users) else 0
    return max_per_cell(users.astype(np.int64), items[known], vals, (n_users, len(item_vocab)))


class Baseline(Recommender):
    """Shared construction: ``fit`` from the pieces of a Prepared, or ``from_prepared``."""

    config_type: ClassVar[type] = object

    def __init__(self, item_vocab: Vocabulary, popularity: np.ndarray, config: object) -> None:
        self.item_vocab = item_vocab
        self.popularity = popularity   # float32 rank scores in (0, 1], the list filler
        self.config = config

    @property
    def n_items(self) -> int:
        return len(self.item_vocab)

    @classmethod
    def fit(cls, train_events: pd.DataFrame, item_vocab: Vocabulary,
            item_features: pd.DataFrame | None = None, config: object | None = None) -> Self:
        config = cls.config_type() if config is None else config
        if not isinstance(config, cls.config_type):
            raise TypeError(f"{cls.__name__} takes a {cls.config_type.__name__}, got {config!r}")
        if item_features is None:
            item_features = compute_item_features(train_events, empty_items(), item_vocab,
                                                  popularity_days=DEFAULT_POPULARITY_DAYS)
        if len(item_features) != len(item_vocab):
            raise ValueError(f"item_features has {len(item_features)} rows for "
                             f"{len(item_vocab)} items")
        weights = getattr(config, "popularity_weights", INTENT_WEIGHTS)
        popularity = popularity_rank_scores(item_features, weights)
        model = cls(item_vocab, popularity, config)
        model._fit(train_events)
        return model

    @classmethod
    def from_prepared(cls, prepared, fold: str = "test", config: object | None = None) -> Self:
        """Fit on every event a user may use as input for ``fold`` (test: train + valid).

        Popularity for ``fold='valid'`` is recomputed at the validation cut, because
        ``prepared.item_features`` counts events up to the test window (valid included).
        """
        events = prepared.split.history_for(fold)
        if fold == "test":
            feats = prepared.item_features
        else:
            feats = compute_item_features(events, prepared.items, prepared.item_vocab,
                                          popularity_days=prepared.config.popularity_days,
                                          cut=prepared.split.valid_start)
        return cls.fit(events, prepared.item_vocab, feats, config)

    def _fit(self, events: pd.DataFrame) -> None:
        """Learn from the events (baselines without parameters do nothing)."""

    def _fill(self, n_users: int, rows: np.ndarray | None = None) -> np.ndarray:
        # np.tile, not broadcast_to().astype(): the latter keeps a column-major layout that
        # makes every later row-wise operation (adds, top-k) several times slower.
        filler = self.popularity if rows is None else self.popularity[rows]
        return np.tile(filler * np.float32(FILL_SCALE), (n_users, 1))


# --- most popular -----------------------------------------------------------------------------

@dataclass(frozen=True)
class MostPopularConfig:
    # Recent views / carts / purchases (item_features' window), weighted; all-time events break
    # ties.
    popularity_weights: tuple[float, float, float] = INTENT_WEIGHTS


class MostPopular(Baseline):
    """The same list for everyone: the items most popular in the recent window."""

    name = "most-popular"
    config_type = MostPopularConfig

    def score(self, histories: Histories) -> np.ndarray:
        return np.tile(self.popularity, (len(histories), 1))

    def score_items(self, histories: Histories, rows: np.ndarray) -> np.ndarray:
        return np.tile(self.popularity[np.asarray(rows, dtype=np.int64)], (len(histories), 1))


# --- repeat -----------------------------------------------------------------------------------

@dataclass(frozen=True)
class RepeatConfig:
    # A user's own items, each event weighted by type and recency: weight x exp(-age / tau).
    event_weights: tuple[float, float, float] = INTENT_WEIGHTS
    tau_days: float = 7.0
    # Without timestamps recency is by position: exp(-steps_back / tau_steps).
    tau_steps: float = 10.0
    popularity_weights: tuple[float, float, float] = INTENT_WEIGHTS


class Repeat(Baseline):
    """The user's own recent items first (repeat views, carts, buys), then popularity."""

    name = "repeat"
    config_type = RepeatConfig

    def score(self, histories: Histories) -> np.ndarray:
        return self._score(histories, None)

    def score_items(self, histories: Histories, rows: np.ndarray) -> np.ndarray:
        return self._score(histories, np.asarray(rows, dtype=np.int64))

    def _score(self, histories: Histories, rows: np.ndarray | None) -> np.ndarray:
        cfg: RepeatConfig = self.config
        age = histories.age_days.astype(np.float64)
        steps = histories.steps_back.astype(np.float64)
        # Per event: time decay where the event has an age, position decay where it has none.
        decay = np.where(np.isnan(age), np.exp(-steps / cfg.tau_steps),
                         np.exp(-np.nan_to_num(age, nan=0.0).clip(min=0.0) / cfg.tau_days))
        weight = np.asarray(cfg.event_weights, dtype=np.float64)[histories.event_code]
        r, c, v = history_entries(histories, weight * np.maximum(decay, MIN_DECAY), reduce="sum")
        scores = self._fill(len(histories), rows)
        scores += scatter_scores(r, c, v, len(histories), self.n_items, rows)
        return scores


# --- item-kNN ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class ItemKNNConfig:
    neighbors: int = 100          # top-N most similar items kept per item
    shrink: float = 20.0          # cosine denominator + shrink: damps pairs of rare items
    # Weights of the user-item matrix (and of the history) per event type, the largest per
    # user and item; (1, 1, 1) is the binary matrix. Intent weights beat binary on the
    # validation folds of Tmall and Taobao (no effect on purchase-only data).
    event_weights: tuple[float, float, float] = INTENT_WEIGHTS
    block_size: int = 1024        # items per block of the similarity product (bounds memory)
    popularity_weights: tuple[float, float, float] = INTENT_WEIGHTS


class ItemKNN(Baseline):
    """Cosine item-item similarity of the user-item matrix; score = sum over history items."""

    name = "item-knn"
    config_type = ItemKNNConfig

    def _fit(self, events: pd.DataFrame) -> None:
        cfg: ItemKNNConfig = self.config
        x = _user_item_matrix(events, self.item_vocab, cfg.event_weights)
        norms = np.sqrt(np.asarray(x.multiply(x).sum(axis=0)).ravel())
        xt = x.T.tocsr()
        n, n_keep = self.n_items, min(cfg.neighbors, self.n_items)
        rows, cols, vals = [], [], []
        # X^T X one block of items at a time: the sparse product only touches co-occurring
        # pairs, and each block is small enough to go dense for a multi-threaded torch.topk;
        # the full item x item matrix is never held in memory.
        for start in range(0, n, cfg.block_size):
            stop = min(start + cfg.block_size, n)
            co = (xt[start:stop] @ x).tocsr()                       # (block, n_items)
            r = np.repeat(np.arange(start, stop), np.diff(co.indptr))
            denom = norms[r] * norms[co.indices] + cfg.shrink
            co.data = np.divide(co.data, denom, out=np.zeros_like(co.data), where=denom > 0)
            sim = torch.from_numpy(co.toarray().astype(np.float32))
            sim[torch.arange(stop - start), torch.arange(start, stop)] = 0.0  # never yourself
            top_vals, top_idx = torch.topk(sim, n_keep, dim=1)
            top_vals, top_idx = top_vals.numpy(), top_idx.numpy().astype(np.int64)
            keep = top_vals > 0
            rows.append(np.broadcast_to(np.arange(start, stop)[:, None], keep.shape)[keep])
            cols.append(top_idx[keep])
            vals.append(top_vals[keep])
        # Row i: item i's neighbours j and sim(i, j); a user scores j by summing over their i.
        self.similarity = sp.csr_matrix(
            (np.concatenate(vals) if vals else np.array([], np.float32),
             (np.concatenate(rows) if rows else np.array([], np.int64),
              np.concatenate(cols) if cols else np.array([], np.int64))),
            shape=(n, n), dtype=np.float32)

    def score(self, histories: Histories) -> np.ndarray:
        return self._score(histories, None)

    def score_items(self, histories: Histories, rows: np.ndarray) -> np.ndarray:
        return self._score(histories, np.asarray(rows, dtype=np.int64))

    def _score(self, histories: Histories, rows: np.ndarray | None) -> np.ndarray:
        cfg: ItemKNNConfig = self.config
        weight = np.asarray(cfg.event_weights, dtype=np.float64)[histories.event_code]
        scores = self._fill(len(histories), rows)
        scores += times_similarity(history_entries(histories, weight), len(histories),
                                   self.similarity, rows)
        return scores


# --- sequential item-kNN ----------------------------------------------------------------------

@dataclass(frozen=True)
class SequentialItemKNNConfig:
    # Similarity: item j counts for item i when j follows i within `window` positions of the
    # same user's sequence (weight 1/distance); j *before* i counts `backward_weight` as much.
    window: int = 5
    backward_weight: float = 0.5
    # Normalization c_ij / (n_i^alpha * n_j^(1 - alpha) + shrink): 0.5 is cosine-like, 1.0 is
    # P(j | i); above 0.5 leans towards popular neighbours, which the next item often is.
    # Shrink damps pairs seen only once or twice. (Checked on the validation folds of two Amazon
    # categories: alpha 0.6-1.0 and shrink 5-10 all beat cosine without shrink.)
    alpha: float = 0.7
    shrink: float = 10.0
    neighbors: int = 100
    # Scoring: the user's last `last_n` events, weighted 1 / (1 + steps_back).
    last_n: int = 5
    popularity_weights: tuple[float, float, float] = INTENT_WEIGHTS


class SequentialItemKNN(Baseline):
    """What tends to come next after the user's last few items."""

    name = "seq-item-knn"
    config_type = SequentialItemKNNConfig

    def _fit(self, events: pd.DataFrame) -> None:
        cfg: SequentialItemKNNConfig = self.config
        events = sort_events(events)
        items = self.item_vocab.lookup(events["item_id"])
        known = items >= 0
        users, _ = pd.factorize(events["user_id"].to_numpy()[known])
        items = items[known]
        # Consecutive repeats of one item (view, view, cart) are one step of the sequence.
        step = np.r_[True, (users[1:] != users[:-1]) | (items[1:] != items[:-1])]
        users, items = users[step], items[step]
        rows, cols, vals = [], [], []
        n = len(items)
        for d in range(1, min(cfg.window, max(n - 1, 0)) + 1):
            a = np.arange(n - d)
            same = (users[a] == users[a + d]) & (items[a] != items[a + d])
            i, j = items[a][same], items[a + d][same]
            w = np.full(len(i), 1.0 / d)
            rows += [i, j]
            cols += [j, i]
            vals += [w, w * cfg.backward_weight]
        shape = (self.n_items, self.n_items)
        if not rows:
            self.similarity = sp.csr_matrix(shape, dtype=np.float32)
            return
        co = sp.coo_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))),
                           shape=shape).tocsr()
        co.sum_duplicates()
        count = np.bincount(items, minlength=self.n_items).astype(np.float64)
        r = np.repeat(np.arange(self.n_items), np.diff(co.indptr))
        c = co.indices.astype(np.int64)
        denom = count[r] ** cfg.alpha * count[c] ** (1.0 - cfg.alpha) + cfg.shrink
        self.similarity = top_n_per_row(r, c, co.data / denom, cfg.neighbors, shape)

    def score(self, histories: Histories) -> np.ndarray:
        return self._score(histories, None)

    def score_items(self, histories: Histories, rows: np.ndarray) -> np.ndarray:
        return self._score(histories, np.asarray(rows, dtype=np.int64))

    def _score(self, histories: Histories, rows: np.ndarray | None) -> np.ndarray:
        cfg: SequentialItemKNNConfig = self.config
        steps = histories.steps_back.astype(np.float64)
        weight = np.where(steps < cfg.last_n, 1.0 / (1.0 + steps), 0.0)
        scores = self._fill(len(histories), rows)
        scores += times_similarity(history_entries(histories, weight, reduce="sum"),
                                   len(histories), self.similarity, rows)
        return scores


BASELINES: dict[str, type[Baseline]] = {
    cls.name: cls for cls in (MostPopular, Repeat, ItemKNN, SequentialItemKNN)
}
