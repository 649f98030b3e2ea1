"""What serving holds once per worker: ``Engine``, a ``models.ranking.Ranker`` plus what answers
need on top (titles, categories, bought-together neighbours, each known shopper's stored events
as arrays), and the per-request history fast path. Nothing a request changes lives here: session
events are merged into a copy of the shopper's history for that request only.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from features.history import Histories
from features.schema import EVENT_TYPES, TIMESTAMP_DTYPE
from models.bundle import Bundle
from models.index import DEFAULT_CONFIG, IndexConfig, ItemIndex
from models.ranking import Ranker
from models.registry import MODEL_NAME, configure, resolve_model
from serving.api import ScoredItem, SessionEvent, not_found

EVENT_CODES = {name: code for code, name in enumerate(EVENT_TYPES)}
NAT_MS = np.iinfo(np.int64).min   # NaT as int64


# --- the engine -----------------------------------------------------------------------------


class Engine(Ranker):
    """A loaded bundle plus what serving derives from it once, at start-up."""

    def __init__(self, bundle: Bundle, index: ItemIndex, *, version: str = "unversioned",
                 ref: str | None = None, index_source: str = "") -> None:
        super().__init__(bundle, index)
        self.version, self.ref, self.index_source = version, ref or version, index_source
        items = bundle.items
        self.ids = bundle.item_vocab.ids
        self.titles = _strings(items, "title")
        self.categories = _strings(items, "category_id")
        self.parents = _strings(items, "parent_category_id")
        self.bt_offsets, self.bt_rows, self.bt_scores = _bought_together_csr(bundle)
        self.shoppers = len(bundle.history_rows)   # builds the row lookup before any request
        known = bundle.item_vocab.lookup(bundle.histories["item_id"]) >= 0
        self.known_users = frozenset(bundle.histories["user_id"][known].unique())
        # Per-request look-ups without pandas: raw item id -> row, and each shopper's stored
        # events as arrays in history order (None: the histories need the general path).
        self.item_rows = {item_id: row for row, item_id in enumerate(self.ids)}
        self.stored = StoredEvents.build(bundle)

    def rows_of(self, item_ids: list[str]) -> np.ndarray:
        """Rows of ``item_ids`` (-1 unknown): ``item_vocab.lookup`` without pandas."""
        return np.fromiter((self.item_rows.get(i, -1) for i in item_ids), dtype=np.int64,
                           count=len(item_ids))

    def item_row(self, item_id: str, field: str = "item_id") -> int:
        row = self.item_rows.get(item_id, -1)   # item_vocab.row without pandas
        if row < 0:
            raise not_found(field, item_id, "item")
        return row

    def category_mask(self, category: str) -> np.ndarray:
        mask = np.zeros(len(self.ids), dtype=bool)
        for column in (self.categories, self.parents):
            if column is not None:
                mask |= column == category
        if not mask.any():
            raise not_found("category", category, "category")
        return mask

    def scored(self, rows: np.ndarray, scores: np.ndarray,
               sources: list[str] | None = None) -> list[ScoredItem]:
        """Response items for item rows (pads -1 dropped), rank from 1."""
        keep = rows >= 0
        rows, scores = rows[keep], scores[keep]
        return [ScoredItem(rank=i + 1, item_id=self.ids[r], score=round(float(s), 6),
                           title=_at(self.titles, r), category_id=_at(self.categories, r),
                           source=sources[i] if sources else None)
                for i, (r, s) in enumerate(zip(rows, scores, strict=True))]


@dataclass(frozen=True, eq=False)
class StoredEvents:
    """The bundle's stored histories as arrays, each shopper's events in the order
    ``Bundle.user_histories`` sorts them (time, NaT first, then stored order), so one shopper's
    history (plus session events) is built with a few numpy calls instead of pandas frames."""

    spans: dict[str, tuple[int, int]]   # shopper -> [start, end) in the arrays
    item_idx: np.ndarray    # int64 item rows, -1 for items the model does not know
    event_code: np.ndarray  # int8 index into EVENT_TYPES
    ts_ms: np.ndarray       # int64 epoch milliseconds (UTC); NaT as NAT_MS

    @classmethod
    def build(cls, bundle: Bundle) -> StoredEvents | None:
        """None when the stored events are not in the canonical dtypes the fast path copies
        (then ``recommend`` takes the general path, ``Bundle.user_histories``)."""
        h = bundle.histories
        if "seq" in h or str(h["timestamp"].dtype) != TIMESTAMP_DTYPE or \
                not isinstance(h["event"].dtype, pd.CategoricalDtype) or \
                tuple(h["event"].cat.categories) != EVENT_TYPES:
            return None
        ts = h["timestamp"].dt.tz_localize(None).to_numpy(dtype="datetime64[ms]").view(np.int64)
        # user_histories' order: per shopper by time (NaT first: NAT_MS is the smallest int64),
        # ties in stored order.
        order = np.lexsort((np.arange(len(h)), ts, pd.factorize(h["user_id"])[0]))
        users = h["user_id"].to_numpy(dtype=object)[order]
        change = np.flatnonzero(np.r_[True, users[1:] != users[:-1]]) if len(users) else \
            np.array([], dtype=np.int64)
        bounds = np.r_[change, len(users)]
        spans = {users[a]: (int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:],
                                                             strict=True)}
        return cls(spans, bundle.item_vocab.lookup(h["item_id"])[order],
                   h["event"].cat.codes.to_numpy(dtype=np.int8)[order], ts[order])


def session_histories(engine: Engine, user: str, events: list[SessionEvent]
                      ) -> tuple[Histories, np.ndarray] | None:
    """``user``'s history with the session ``events`` on top, exactly as ``session_frame`` +
    ``Bundle.user_histories`` build it, and the session items' rows; None when this fast path
    does not apply (an event with its own timestamp, or non-canonical stored events)."""
    stored, now = engine.stored, engine.now
    if stored is None or any(e.timestamp is not None for e in events) or \
            (now is not None and now.value % 1_000_000):   # times here are whole milliseconds
        return None
    start, end = stored.spans.get(user, (0, 0))
    n = len(events)
    session_items = engine.rows_of([e.item_id for e in events])
    items = np.concatenate([stored.item_idx[start:end], session_items])
    codes = np.concatenate([stored.event_code[start:end],
                            np.fromiter((EVENT_CODES[e.event] for e in events), dtype=np.int8,
                                        count=n)])
    # Events without a timestamp follow "now" 1 ms apart (NaT when the data has no time), and
    # the ages are then measured from 1 ms after the last of them.
    if now is None:
        session_ts = np.full(n, NAT_MS, dtype=np.int64)
    else:
        session_ts = now.value // 1_000_000 + np.arange(n, dtype=np.int64)
        now += pd.Timedelta(milliseconds=n)
    ts = np.concatenate([stored.ts_ms[start:end], session_ts])
    if n:  # merge: by time, NaT first (NAT_MS is the smallest int64), ties in list order
        order = np.argsort(ts, kind="stable")
        items, codes, ts = items[order], codes[order], ts[order]
    has_time = bool((ts != NAT_MS).any())
    known = items >= 0
    keep_len = engine.bundle.model.cfg.history_len
    items, codes, ts = items[known][-keep_len:], codes[known][-keep_len:], ts[known][-keep_len:]
    length = len(items)
    if has_time:   # (now - timestamp) / 1 day, as pandas computes it; NaT -> NaN
        missing = ts == NAT_MS
        ref = now.value // 1_000_000
        age = ((ref - np.where(missing, ref, ts)) / 86_400_000.0).astype(np.float32)
        age[missing] = np.nan
    else:
        age = np.full(length, np.nan, dtype=np.float32)
    hist = Histories(np.array([user], dtype=object), np.array([0, length], dtype=np.int64),
                     items.astype(np.int64), codes.astype(np.int8), age,
                     np.arange(length - 1, -1, -1, dtype=np.int32))
    return hist, session_items


def load_engine(ref: str, cfg: IndexConfig = DEFAULT_CONFIG) -> Engine:
    """The engine of model ``ref`` (alias, version, run id or bundle folder; see
    ``models.registry.resolve_model``), its index loaded from the bundle or built."""
    path = resolve_model(ref)
    bundle = Bundle.load(path)
    index, source = bundle.item_index(cfg)
    return Engine(bundle, index, version=model_version(ref, path), ref=ref, index_source=source)


def model_version(ref: str, path: Path) -> str:
    """``tailor/3`` for a registry alias or version number, else the reference as given."""
    if Path(ref).expanduser().is_dir() or not (ref.isdigit() or re.fullmatch(r"[A-Za-z_][\w-]*",
                                                                              ref)):
        return str(ref)
    client = MlflowClient(configure())
    try:
        mv = client.get_model_version(MODEL_NAME, ref) if ref.isdigit() else \
            client.get_model_version_by_alias(MODEL_NAME, ref)
    except MlflowException:   # resolve_model found it some other way (e.g. a run id)
        return str(ref)
    return f"{MODEL_NAME}/{mv.version}"


# --- helpers ----------------------------------------------------------------------------------


def _strings(items: pd.DataFrame, column: str) -> np.ndarray | None:
    if column not in items:
        return None
    return items[column].astype("string").fillna("").to_numpy(dtype=object)


def _at(values: np.ndarray | None, row: int) -> str | None:
    return values[row] or None if values is not None else None


def _bought_together_csr(bundle: Bundle) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per item row, its bought-together neighbours' rows and scores, best first (CSR)."""
    table = bundle.bought_together
    left = bundle.item_vocab.lookup(table["item_id"])
    right = bundle.item_vocab.lookup(table["other_item_id"])
    keep = (left >= 0) & (right >= 0)   # pairs with an item the model does not know are dropped
    left, right = left[keep], right[keep]
    scores = table["score"].to_numpy(dtype=np.float64)[keep]
    ranks = table["rank"].to_numpy(dtype=np.int64)[keep]
    order = np.lexsort((ranks, left))
    offsets = np.searchsorted(left[order], np.arange(len(bundle.item_vocab) + 1))
    return offsets.astype(np.int64), right[order], scores[order]
