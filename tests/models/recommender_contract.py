"""The tests every recommender shares (in the style of implicit's ``RecommenderBase`` tests).

A test class mixes in ``RecommenderContract``, implements ``make_recommender(prepared)`` and
declares ``PLANTED``: small seeded data sets whose right answer is known for that kind of
recommender. The mixin then checks the ``models.base.Recommender`` contract on a shared data set
(shapes and dtypes, padding, determinism, exclusions, the ``allowed`` mask, empty histories) and
one test per planted case, parametrized by ``pytest_generate_tests`` from the subclass's list.

The data sets are built once per process (``functools.cache``) through the real pipeline
(``features.pipeline.build``), so the recommenders see what they see in production.
"""

from __future__ import annotations

import functools
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import pandas as pd
import pytest

from features.config import FeatureConfig
from features.history import Histories, build_histories
from features.pipeline import Prepared, build
from features.schema import EventData, empty_items
from features.spec import DataSpec
from models.base import Recommender
from tests.helpers import make_events

START = pd.Timestamp("2026-01-01", tz="UTC")
HOUR = pd.Timedelta(hours=1)
DAY = pd.Timedelta(days=1)
N_PAIRS = 6


# --- data sets --------------------------------------------------------------------------------

def prepared_from(events: pd.DataFrame, name: str, **feature_settings: object) -> Prepared:
    """The real pipeline's ``build`` on a hand-made canonical events frame."""
    has_time = bool(events["timestamp"].notna().any())
    spec = DataSpec(kind="events", path=name, text=f"events:{name}")
    data = EventData(events, empty_items(), name, has_time)
    return build(spec, FeatureConfig(**feature_settings), data, name)


def frame(rows: list[tuple[str, str, str, pd.Timestamp | None]]) -> pd.DataFrame:
    """(user, item, event, time or None) rows -> canonical events (no time if any is None)."""
    with_time = all(r[3] is not None for r in rows)
    # One fixed format: pandas rejects a list that mixes whole and fractional seconds.
    return make_events([(u, i, e, t.strftime("%Y-%m-%dT%H:%M:%S.%f%z") if with_time else None)
                        for u, i, e, t in rows], with_time=with_time)


@functools.cache
def pairs_prepared() -> Prepared:
    """Next-item pairs a0 -> b0, a1 -> b1, ...: each shopper's visits are 'view a_i, then cart
    b_i an hour later' for random pairs (popular pairs more often), spread over 30 days.

    Known answers: after a_i comes b_i (every time), and whoever has a_i has b_i.
    """
    rng = np.random.default_rng(7)
    popularity = 1.0 / np.arange(1, N_PAIRS + 1)
    rows = []
    for u in range(120):
        days = np.sort(rng.uniform(0, 30, size=rng.integers(3, 7)))
        for day in days:
            pair = rng.choice(N_PAIRS, p=popularity / popularity.sum())
            t = START + pd.Timedelta(days=float(day))
            rows.append((f"u{u:03d}", f"a{pair}", "view", t))
            rows.append((f"u{u:03d}", f"b{pair}", "addtocart", t + HOUR))
    return prepared_from(frame(rows), "pairs")


def query(prepared: Prepared, history: tuple[tuple[str, str], ...], *,
          with_time: bool = True) -> Histories:
    """One new shopper's history: (item_id, event) pairs, oldest first, one hour apart, ending
    at the test cut (or without time)."""
    end = prepared.split.test_start if prepared.split.test_start is not None else START
    n = len(history)
    rows = [("query-user", item, event, end - (n - i) * HOUR if with_time else None)
            for i, (item, event) in enumerate(history)]
    return build_histories(frame(rows), prepared.item_vocab,
                           max_len=prepared.config.history_len)


def empty_histories(n: int) -> Histories:
    """``n`` shoppers nobody has seen: no events at all."""
    return Histories(np.array([f"new{i}" for i in range(n)], dtype=object),
                     np.zeros(n + 1, dtype=np.int64), np.zeros(0, dtype=np.int64),
                     np.zeros(0, dtype=np.int8), np.zeros(0, dtype=np.float32),
                     np.zeros(0, dtype=np.int32), np.zeros(0, dtype=np.int64))


def fold_histories(prepared: Prepared, n: int = 12) -> Histories:
    """The test fold's real inputs for the first ``n`` target users, then one empty history."""
    targets = prepared.targets[prepared.targets["fold"] == "test"]
    users = np.sort(targets["user_id"].astype(object).unique())[:n]
    assert len(users) == n, "the contract data set needs more test users"
    return prepared.histories("test", users=np.r_[users, ["never-seen"]].astype(object))


# --- planted answers --------------------------------------------------------------------------

@dataclass(frozen=True)
class Planted:
    """A data set, one shopper's history and the item that must come back in the top ``within``
    (given as raw ids so a case reads like the story it plants)."""

    name: str
    data: Callable[[], Prepared]
    history: tuple[tuple[str, str], ...]
    expected: str
    within: int = 1
    with_time: bool = True


# --- the mixin --------------------------------------------------------------------------------

class RecommenderContract(ABC):
    """Subclasses: ``make_recommender`` and ``PLANTED``; optionally ``contract_data``."""

    PLANTED: ClassVar[tuple[Planted, ...]] = ()
    # (test class, data set) -> the fitted recommender: the contract tests and the planted cases
    # on the same data share one fit; only the determinism test fits a second time.
    _built: ClassVar[dict[tuple[type, int], Recommender]] = {}

    @abstractmethod
    def make_recommender(self, prepared: Prepared) -> Recommender:
        """Fit the recommender under test on ``prepared`` (deterministically: a fixed seed)."""

    def contract_data(self) -> Prepared:
        return pairs_prepared()

    def built(self, prepared: Prepared) -> Recommender:
        # id() is stable: the data sets live in functools.cache for the whole session.
        key = (type(self), id(prepared))
        if key not in self._built:
            self._built[key] = self.make_recommender(prepared)
        return self._built[key]

    def pytest_generate_tests(self, metafunc: pytest.Metafunc) -> None:
        # pytest calls this per test of the class: each planted case becomes its own test id.
        if "planted" in metafunc.fixturenames:
            metafunc.parametrize("planted", self.PLANTED, ids=[p.name for p in self.PLANTED])

    @pytest.fixture(scope="class")
    def fitted(self) -> tuple[Prepared, Recommender, Histories]:
        prepared = self.contract_data()
        return prepared, self.built(prepared), fold_histories(prepared)

    # ---- shapes and types ----

    def test_declares_planted_answers(self) -> None:
        assert self.PLANTED, f"{type(self).__name__} declares no planted answer"

    def test_score_shape_and_dtype(self, fitted) -> None:
        prepared, rec, hist = fitted
        scores = rec.score(hist)
        assert rec.n_items == len(prepared.item_vocab)
        assert scores.shape == (len(hist), rec.n_items)
        assert scores.dtype == np.float32
        assert np.isfinite(scores).all()

    def test_score_items_are_the_columns_of_score(self, fitted) -> None:
        _, rec, hist = fitted
        rng = np.random.default_rng(0)
        rows = rng.choice(rec.n_items, size=min(7, rec.n_items), replace=False)
        got = rec.score_items(hist, rows)
        assert got.shape == (len(hist), len(rows)) and got.dtype == np.float32
        np.testing.assert_allclose(got, rec.score(hist)[:, rows], rtol=1e-5, atol=1e-5)

    def test_recommend_shape_dtype_and_order(self, fitted) -> None:
        _, rec, hist = fitted
        k = min(5, rec.n_items)
        items, scores = rec.recommend(hist, k)
        assert items.shape == scores.shape == (len(hist), k)
        assert items.dtype == np.int64 and scores.dtype == np.float32
        assert ((items >= 0) & (items < rec.n_items)).all()
        assert all(len(set(row)) == k for row in items)          # no item twice
        assert (np.diff(scores, axis=1) <= 0).all()              # best first
        # The returned scores are the items' own scores, and nothing left out scores higher.
        dense = rec.score(hist)
        np.testing.assert_array_equal(scores, np.take_along_axis(dense, items, axis=1))
        np.testing.assert_array_equal(scores[:, 0], dense.max(axis=1))

    def test_k_beyond_catalog_pads(self, fitted) -> None:
        _, rec, hist = fitted
        n, extra = rec.n_items, 3
        items, scores = rec.recommend(hist, n + extra)
        assert items.shape == (len(hist), n + extra)
        assert (items[:, n:] == -1).all() and np.isneginf(scores[:, n:]).all()
        assert (np.sort(items[:, :n], axis=1) == np.arange(n)).all()  # the whole catalog

    # ---- determinism ----

    def test_same_data_same_recommendations(self, fitted) -> None:
        prepared, rec, hist = fitted
        again = self.make_recommender(prepared)
        first, second = rec.recommend(hist, 5), again.recommend(hist, 5)
        np.testing.assert_array_equal(first[0], second[0])
        np.testing.assert_array_equal(first[1], second[1])

    # ---- masks ----

    def test_exclusions_are_honoured(self, fitted) -> None:
        _, rec, hist = fitted
        n = rec.n_items
        best = rec.recommend(hist, 2)[0]
        # Exclude each user's own top two (different per user) plus an out-of-range row, which
        # must be ignored rather than wrap around.
        exclude = [np.r_[row, n + 5] for row in best]
        items, scores = rec.recommend(hist, n, exclude=exclude)
        for row, ex in zip(items, best, strict=True):
            assert not set(ex) & set(row)
        assert (items[:, n - 2:] == -1).all() and np.isneginf(scores[:, n - 2:]).all()
        assert (items[:, : n - 2] >= 0).all()

    def test_allowed_mask_is_honoured(self, fitted) -> None:
        _, rec, hist = fitted
        n = rec.n_items
        allowed = np.zeros(n, dtype=bool)
        allowed[::3] = True
        items, scores = rec.recommend(hist, n, allowed=allowed)
        n_ok = int(allowed.sum())
        assert allowed[items[:, :n_ok]].all()
        assert (items[:, n_ok:] == -1).all() and np.isneginf(scores[:, n_ok:]).all()

    def test_exclude_and_allowed_together(self, fitted) -> None:
        _, rec, hist = fitted
        allowed = np.ones(rec.n_items, dtype=bool)
        allowed[0] = False
        exclude = [np.array([1])] * len(hist)
        items, _ = rec.recommend(hist, rec.n_items, exclude=exclude, allowed=allowed)
        assert (items[:, : rec.n_items - 2] >= 2).all()

    # ---- shoppers nobody has seen ----

    def test_empty_histories_get_a_full_list(self, fitted) -> None:
        _, rec, _ = fitted
        hist = empty_histories(3)
        k = min(5, rec.n_items)
        items, scores = rec.recommend(hist, k)
        assert items.shape == (3, k)
        assert ((items >= 0) & (items < rec.n_items)).all() and np.isfinite(scores).all()
        assert all(len(set(row)) == k for row in items)
        # Unknown shoppers are all the same shopper: the same list.
        assert (items == items[0]).all()

    def test_no_histories_at_all(self, fitted) -> None:
        _, rec, _ = fitted
        items, scores = rec.recommend(empty_histories(0), 4)
        assert items.shape == scores.shape == (0, 4)

    # ---- the planted answer ----

    def test_planted_answer(self, planted: Planted) -> None:
        prepared = planted.data()
        rec = self.built(prepared)
        hist = query(prepared, planted.history, with_time=planted.with_time)
        assert hist.lengths[0] == len(planted.history), "planted history uses unknown items"
        items, _ = rec.recommend(hist, planted.within)
        got = list(prepared.item_vocab.id_of(items[0][items[0] >= 0]))
        assert planted.expected in got, \
            f"{planted.name}: expected {planted.expected} in the top {planted.within}, got {got}"
