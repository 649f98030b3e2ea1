"""What the service answers, as plain functions over a loaded bundle (no HTTP in here).

``Engine`` holds what every request reads — the bundle (model, vocabularies, each known
shopper's recent history, bought-together table), the FAISS index, the availability mask and
the popularity order — and nothing a request changes: session events are merged into a copy of
the shopper's history for that request only.

Ranking is ``models.ranking.rank``, the one path that batch recommendations and the MLflow
pyfunc call too (fallback to popular items, exclusions, availability and category filters, index
or full scoring). ``Engine`` is a ``models.ranking.Ranker`` plus what answers need on top: titles,
categories, bought-together neighbours and each known shopper's stored events as arrays.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StringConstraints

from features.history import Histories
from features.schema import EVENT_DTYPE, EVENT_TYPES, TIMESTAMP_DTYPE
from models.bundle import Bundle
from models.index import DEFAULT_CONFIG, IndexConfig, ItemIndex
from models.ranking import MAX_K, Ranker, exclusions, rank
from models.registry import MODEL_NAME, configure, resolve_model

DEFAULT_K = 10
MAX_SESSION_EVENTS = 1000   # only the last history_len count; the bound keeps requests cheap
MAX_EXCLUDE = 10_000
EVENT_CODES = {name: code for code, name in enumerate(EVENT_TYPES)}
NAT_MS = np.iinfo(np.int64).min   # NaT as int64

# --- request and response models (the OpenAPI page shows their examples) ---------------------

Id = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=256)]
K = Annotated[StrictInt, Field(ge=1, le=MAX_K, description=f"how many items, 1..{MAX_K}")]


class ApiModel(BaseModel):
    # Unknown fields are errors (a typo must not be ignored); numeric ids become strings.
    model_config = ConfigDict(extra="forbid", coerce_numbers_to_str=True)


class SessionEvent(ApiModel):
    item_id: Id
    event: Literal["view", "addtocart", "purchase"]
    timestamp: datetime | None = Field(
        None, description="ISO 8601 or epoch seconds; default: after the stored history, in "
                          "list order")


class RecommendRequest(ApiModel):
    # One "example" (BentoML's OpenAPI schema has no "examples"): a returning shopper's session.
    model_config = ConfigDict(json_schema_extra={"example": {
        "user_id": "u000042", "k": 5,
        "recent_events": [{"item_id": "i000123", "event": "view"},
                          {"item_id": "i000123", "event": "addtocart"}],
        "exclude_items": [], "exclude_purchased": True, "category": None}})

    user_id: Id = Field(description="the shopper; unknown ids are served from the session or "
                                    "by popularity")
    k: K = DEFAULT_K
    recent_events: list[SessionEvent] = Field(
        default_factory=list, max_length=MAX_SESSION_EVENTS,
        description="the current session's events, oldest first, applied on top of the stored "
                    "history for this request only")
    exclude_items: list[Id] = Field(default_factory=list, max_length=MAX_EXCLUDE,
                                    description="item ids that must not come back")
    exclude_purchased: StrictBool = Field(True, description="leave out items the shopper "
                                                            "bought (stored history + session)")
    category: Id | None = Field(None, description="only items of this category (leaf or "
                                                  "parent category id)")


class ItemRequest(ApiModel):
    model_config = ConfigDict(json_schema_extra={"example": {"item_id": "i000123", "k": 5}})

    item_id: Id
    k: K = DEFAULT_K


class ScoredItem(BaseModel):
    rank: int
    item_id: str
    score: float
    title: str | None = None
    category_id: str | None = None
    source: str | None = Field(None, description="also_bought: bought_together or embedding")


class Recommendations(BaseModel):
    user_id: str
    strategy: str = Field(description="history|history+session|session, then ':index' or "
                                      "':full_scoring'; or popular / popular:category")
    model_version: str
    items: list[ScoredItem]


class ItemNeighbours(BaseModel):
    item_id: str
    strategy: str
    model_version: str
    items: list[ScoredItem]


class ModelCard(BaseModel):
    model_version: str
    model_ref: str
    bundle_path: str | None
    trained_at: str | None
    data: dict[str, Any]
    ranking: str
    items: int
    known_shoppers: int
    index: dict[str, Any]
    fit: dict[str, Any]
    test_metrics: dict[str, dict[str, float]]


class RequestError(Exception):
    """A request the service refuses: HTTP ``status``, the offending ``field`` and why."""

    def __init__(self, status: int, field: str, message: str, kind: str) -> None:
        super().__init__(message)
        self.status, self.field, self.message, self.kind = status, field, message, kind

    def body(self) -> dict[str, Any]:
        # The shape of BentoML's own validation errors, so clients parse one format.
        return {"error": self.message,
                "detail": [{"loc": [self.field], "msg": self.message, "type": self.kind}]}


def not_found(field: str, value: str, what: str) -> RequestError:
    return RequestError(404, field, f"unknown {what} {value!r}", "not_found")


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


# --- the endpoints ----------------------------------------------------------------------------


def session_frame(user_id: str, events: list[SessionEvent],
                  start: pd.Timestamp | None) -> pd.DataFrame:
    """Session events as canonical rows. Events without a timestamp follow ``start`` (the end
    of the stored data) 1 ms apart, in list order; without any time they stay NaT."""
    stamps = []
    for i, event in enumerate(events):
        if event.timestamp is not None:
            ts = pd.Timestamp(event.timestamp)
            stamps.append(ts.tz_localize(UTC) if ts.tzinfo is None else ts.tz_convert(UTC))
        else:
            stamps.append(start + pd.Timedelta(milliseconds=i) if start is not None else pd.NaT)
    return pd.DataFrame({
        "user_id": pd.array([user_id] * len(events), dtype="string"),
        "item_id": pd.array([e.item_id for e in events], dtype="string"),
        "event": pd.Categorical([e.event for e in events], dtype=EVENT_DTYPE),
        "timestamp": pd.Series(pd.to_datetime(stamps, utc=True), dtype=TIMESTAMP_DTYPE),
    })


def recommend(engine: Engine, request: RecommendRequest) -> Recommendations:
    """ "Recommended for you": see the module docstring for the strategy."""
    bundle, user = engine.bundle, request.user_id
    allowed = engine.available
    if request.category is not None:
        allowed = allowed & engine.category_mask(request.category)
    fast = session_histories(engine, user, request.recent_events)
    if fast is not None:
        histories, session_items = fast
    else:
        session = session_frame(user, request.recent_events, engine.now)
        now = engine.now
        if session["timestamp"].notna().any():
            latest = session["timestamp"].max() + pd.Timedelta(milliseconds=1)
            now = latest if now is None else max(now, latest)
        histories = bundle.user_histories([user], extra_events=session, now=now)
        session_items = bundle.item_vocab.lookup(session["item_id"])
    exclude = exclusions(histories, purchased=request.exclude_purchased,
                         explicit=[engine.rows_of(request.exclude_items)])
    ranked = rank(engine, histories, request.k, exclude, allowed)
    stored = user in engine.known_users
    in_session = bool((session_items >= 0).any())
    if ranked.personal[0]:
        source = "+".join(name for name, used in (("history", stored), ("session", in_session))
                          if used)
        strategy = f"{source}:{engine.method}"
    else:
        strategy = "popular:category" if request.category is not None else "popular"
    return Recommendations(user_id=user, strategy=strategy, model_version=engine.version,
                           items=engine.scored(ranked.rows[0], ranked.scores[0]))


def also_bought(engine: Engine, request: ItemRequest) -> ItemNeighbours:
    """Bought-together neighbours first, then embedding neighbours up to k; never the item."""
    row = engine.item_row(request.item_id)
    allowed = engine.available.copy()
    allowed[row] = False
    start, end = engine.bt_offsets[row], engine.bt_offsets[row + 1]
    pair_rows, pair_scores = engine.bt_rows[start:end], engine.bt_scores[start:end]
    keep = allowed[pair_rows]
    pair_rows, pair_scores = pair_rows[keep][:request.k], pair_scores[keep][:request.k]
    rows, scores = pair_rows, pair_scores.astype(np.float32)
    missing = request.k - len(rows)
    if missing > 0:
        near, near_scores = engine.index.search(engine.bundle.item_vectors[row:row + 1], missing,
                                                exclude=[pair_rows], allowed=allowed)
        keep = near[0] >= 0
        rows = np.concatenate([rows, near[0][keep]])
        scores = np.concatenate([scores, near_scores[0][keep]])
    sources = ["bought_together"] * len(pair_rows) + ["embedding"] * (len(rows) - len(pair_rows))
    parts = [name for name in ("bought_together", "embedding") if name in sources]
    return ItemNeighbours(item_id=request.item_id, strategy="+".join(parts) or "none",
                          model_version=engine.version,
                          items=engine.scored(rows, scores, sources))


def similar_items(engine: Engine, request: ItemRequest) -> ItemNeighbours:
    """Nearest available items by item-vector cosine (the FAISS index); never the item."""
    row = engine.item_row(request.item_id)
    rows, scores = engine.index.search(engine.bundle.item_vectors[row:row + 1], request.k,
                                       exclude=[np.array([row])], allowed=engine.available)
    return ItemNeighbours(item_id=request.item_id, strategy="embedding:index",
                          model_version=engine.version, items=engine.scored(rows[0], scores[0]))


def model_card(engine: Engine) -> ModelCard:
    info = engine.bundle.info
    data = info.get("data", {})
    test = info.get("metrics", {}).get("test", {})
    return ModelCard(
        model_version=engine.version, model_ref=engine.ref,
        bundle_path=str(engine.bundle.path) if engine.bundle.path else None,
        trained_at=info.get("created_at"),
        data={key: data.get(key) for key in ("spec", "name", "data_hash", "protocol", "events",
                                             "users", "train_items", "last_event")},
        ranking=f"{type(engine.recommender).__name__} ({engine.method})",
        items=len(engine.ids), known_shoppers=engine.shoppers,
        index={key: engine.index.info.get(key) for key in ("factory", "exact", "recall",
                                                           "recall_k", "search_params")}
        | {"source": engine.index_source},
        fit={key: value for key, value in info.get("fit", {}).items() if key != "history"},
        test_metrics={method: {name: float(value) for name, value in row.items()
                               if isinstance(value, int | float) and np.isfinite(value)}
                      for method, row in test.items()})


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
