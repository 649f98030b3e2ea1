"""What serving holds once per worker: ``Engine``, a ``models.ranking.Ranker`` plus what answers
need on top (titles, categories, bought-together neighbours), and a request's history: the
bundle's stored history with the session events appended (``features.history.append_events``).
Nothing a request changes lives here: session events go into a copy for that request only.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from features.event_store import EventStore, now_ms
from features.history import NAT_MS, Histories, append_events, epoch_ms
from features.item_attributes import SharedValues
from features.item_features import metadata_columns
from features.item_store import added_items, items_generation
from features.schema import EVENT_TYPES
from models.added_items import with_items
from models.bundle import Bundle
from models.index import DEFAULT_CONFIG, IndexConfig, ItemIndex
from models.merchandising import item_strings
from models.ranking import Ranker
from models.registry import MODEL_NAME, registered_version, resolve_model
from models.retrieval import TWO_STAGE_MIN_ITEMS
from serving.api import RequestError, ScoredItem, SessionEvent, not_found
from serving.merchandise import RulesFile

EVENT_CODES = {name: code for code, name in enumerate(EVENT_TYPES)}
# The "ramen" loop: an item in RAMEN_SHOWS of the shopper's last RAMEN_IMPRESSIONS answers (within
# RAMEN_DAYS) that they never interacted with is demoted (models.merchandising.DEMOTION).
RAMEN_SHOWS, RAMEN_IMPRESSIONS, RAMEN_DAYS = 3, 20, 14
NO_HISTORIES = Histories(np.array([], dtype=object), np.zeros(1, dtype=np.int64),
                         np.array([], dtype=np.int64), np.array([], dtype=np.int8),
                         np.array([], dtype=np.float32), np.array([], dtype=np.int32),
                         np.array([], dtype=np.int64))


# --- the engine -----------------------------------------------------------------------------


class Engine(Ranker):
    """A loaded bundle plus what serving derives from it once, at start-up."""

    def __init__(self, bundle: Bundle, index: ItemIndex, *, version: str = "unversioned",
                 ref: str | None = None, index_source: str = "",
                 rules: Path | None = None, store: EventStore | None = None,
                 two_stage_from: int = TWO_STAGE_MIN_ITEMS) -> None:
        super().__init__(bundle, index, two_stage_from)
        self.two_stage_from = two_stage_from
        self.version, self.ref, self.index_source = version, ref or version, index_source
        items = bundle.items
        self.ids = bundle.item_vocab.ids
        self.titles = item_strings(items, "title")
        self.categories, self.parents = self.catalog.leaf, self.catalog.parent
        self.bt_offsets, self.bt_rows, self.bt_scores = _bought_together_csr(bundle)
        # Shoppers with a stored history (builds the id look-up before any request).
        self.known_users = bundle.histories.positions.keys()
        self.shoppers = len(self.known_users)
        # Per-request look-up without pandas: raw item id -> row.
        self.item_rows = self.catalog.rows
        self.shared = SharedValues(items, metadata_columns(items))
        # The merchandising rules file (None: no file), checked against this catalog at start.
        self.rules = RulesFile(self.catalog, rules)
        # The event store the shop posts to (None: requests read the bundle's history only).
        self.store = store
        self.rules_path = rules
        # The store's "items" generation whose added items this engine holds (0: none).
        self.items_generation = 0

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
        mask = self.catalog.category_mask(category)
        if not mask.any():
            raise not_found("category", category, "category")
        return mask

    def same_mask(self, names: list[str], rows: np.ndarray, *, whose: str) -> np.ndarray:
        """Items whose value of each attribute in ``names`` is one of ``rows``' values (request
        field ``same``; ``whose`` says whose items ``rows`` are, for the error)."""
        unknown = self.shared.unknown(names)
        if unknown:
            raise RequestError(400, "same", f"unknown item attribute {unknown[0]!r}; this model's "
                               f"items have: {', '.join(self.shared.names) or '(none)'}",
                               "value_error")
        mask, empty = self.shared.mask(names, rows)
        if empty and whose == "item":
            raise RequestError(422, "same", f"the item has no value for {empty[0]!r}",
                               "value_error")
        return mask

    def scored(self, rows: np.ndarray, scores: np.ndarray,
               sources: list[str] | None = None) -> list[ScoredItem]:
        """Response items for item rows (pads -1 dropped), rank from 1."""
        keep = rows >= 0
        rows, scores = rows[keep], scores[keep]
        return [ScoredItem(rank=i + 1, item_id=self.ids[r],
                           score=round(float(s), 6) if np.isfinite(s) else None,
                           title=_at(self.titles, r), category_id=_at(self.categories, r),
                           source=sources[i] if sources else None)
                for i, (r, s) in enumerate(zip(rows, scores, strict=True))]


@dataclass(frozen=True)
class Shopper:
    """What a request knows of a shopper: the history the model reads and where it came from."""

    histories: Histories       # one history: stored (bundle) + live (event store) + session
    session_items: np.ndarray  # rows of the request's own events (-1: unknown item)
    stored: bool               # the bundle's history of the shopper was used
    live: int                  # events read from the event store (after the bundle's data)
    opted_out: bool            # no personalization: the history is empty
    demoted: np.ndarray = field(default_factory=lambda: np.array([], dtype=np.int64))
    # ^ rows shown to the shopper RAMEN_SHOWS times lately without any interaction


def empty_history(user: str, engine: Engine) -> Histories:
    """One history of ``user`` without any event (a first-time visitor's)."""
    none = np.array([], dtype=np.int64)
    return append_events(NO_HISTORIES, user, none, none.astype(np.int8), none, max_len=1,
                         now_ms=engine.now_ms)


def session_history(engine: Engine, user: str, events: list[SessionEvent]) -> Shopper:
    """``user``'s history as a request sees it: the bundle's stored history, then the events
    the shop posted to the event store since the bundle's data ended, then the request's
    session ``events`` (``append_events``). A forgotten shopper has no stored history; an
    opted-out one has none at all. Session events without a timestamp follow the end of the
    stored data 1 ms apart, in list order; without any time in the data they stay NaT."""
    stored_histories, forgotten, opted_out = engine.bundle.histories, False, False
    live_items = np.array([], dtype=np.int64)
    live_codes = np.array([], dtype=np.int8)
    live_ts = np.array([], dtype=np.int64)
    shown: list[list[str]] = []
    if engine.store is not None:
        live = engine.store.shopper(user, since_ms=engine.now_ms,
                                    limit=engine.bundle.model.cfg.history_len,
                                    shown_since_ms=now_ms() - RAMEN_DAYS * 86_400_000,
                                    shown_limit=RAMEN_IMPRESSIONS)
        shown = live.shown
        forgotten, opted_out = live.forgotten, live.opted_out
        if forgotten:
            stored_histories = NO_HISTORIES
        live_items = engine.rows_of(live.item_ids)
        live_codes = np.fromiter((EVENT_CODES[e] for e in live.events), dtype=np.int8,
                                 count=len(live.events))
        live_ts = np.asarray(live.ts_ms, dtype=np.int64)
    items = engine.rows_of([e.item_id for e in events])
    if opted_out:   # nothing of theirs is used: the non-personalized answer
        return Shopper(empty_history(user, engine), items, False, 0, True)
    codes = np.fromiter((EVENT_CODES[e.event] for e in events), dtype=np.int8, count=len(events))
    ts = np.fromiter((epoch_ms(e.timestamp) if e.timestamp is not None else
                      engine.now_ms + i if engine.now_ms is not None else NAT_MS
                      for i, e in enumerate(events)), dtype=np.int64, count=len(events))
    hist = append_events(stored_histories, user, np.concatenate([live_items, items]),
                         np.concatenate([live_codes, codes]), np.concatenate([live_ts, ts]),
                         max_len=engine.bundle.model.cfg.history_len, now_ms=engine.now_ms)
    stored = not forgotten and user in engine.known_users
    return Shopper(hist, items, stored, int((live_items >= 0).sum()), False,
                   ignored(engine, shown, hist.item_idx))


def ignored(engine: Engine, shown: list[list[str]], interacted: np.ndarray) -> np.ndarray:
    """Rows shown in at least ``RAMEN_SHOWS`` of the shopper's latest impressions that the
    shopper never viewed, carted or bought: the over-narrow "ramen" loop demotes them."""
    if not shown:
        return np.array([], dtype=np.int64)
    counts = Counter(item for items in shown for item in set(items))
    rows = engine.rows_of([item for item, n in counts.items() if n >= RAMEN_SHOWS])
    return np.setdiff1d(rows[rows >= 0], interacted)


def load_engine(ref: str, cfg: IndexConfig = DEFAULT_CONFIG, rules: Path | None = None,
                store: EventStore | None = None, path: Path | None = None) -> Engine:
    """The engine of model ``ref`` (alias, version, run id or bundle folder; see
    ``models.registry.resolve_model``), its index loaded from the bundle or built; ``rules``: the
    merchandising rules file (``serving.merchandise.rules_path()`` in the service); with the
    items added to the store's catalog that the bundle does not know. ``path``: the bundle
    folder when the caller found it itself (a Bento's model: ``ref`` is then its BentoML tag,
    which answers name instead of a host path)."""
    path = resolve_model(ref) if path is None else path
    bundle = Bundle.load(path)
    index, source = bundle.item_index(cfg)
    engine = Engine(bundle, index, version=model_version(ref, path), ref=public_ref(ref, path),
                    index_source=source, rules=rules, store=store)
    return with_added_items(engine)


def with_added_items(engine: Engine) -> Engine:
    """``engine`` with the items added to its store's catalog that it does not hold yet: a new
    engine (requests still reading the old one are not disturbed), or ``engine`` itself when
    there are none."""
    if engine.store is None:
        return engine
    generation = items_generation(engine.store)
    if generation == engine.items_generation:
        return engine
    bundle, index, placed = with_items(engine.bundle, engine.index, added_items(engine.store))
    grown = engine if not placed else \
        Engine(bundle, index, version=engine.version, ref=engine.ref,
               index_source=engine.index_source, rules=engine.rules_path, store=engine.store,
               two_stage_from=engine.two_stage_from)
    grown.items_generation = generation
    return grown


def model_version(ref: str, path: Path) -> str:
    """``tailor/3`` for a registry alias or version number; a bundle folder's label
    (``bundle_label``); else the reference as given (a run id, a BentoML model tag)."""
    version = registered_version(ref)
    return f"{MODEL_NAME}/{version}" if version is not None else public_ref(ref, path)


def public_ref(ref: str, path: Path) -> str:
    """``ref`` as answers may show it: a bundle folder by its label, never by the host's path
    (``/model``, every answer's ``model_ref``, the impressions); anything else as given."""
    return bundle_label(path) if Path(ref).expanduser().is_dir() else str(ref)


def bundle_label(path: Path) -> str:
    """``bundle-<12 hex>``: sha256 of the bundle's ``bundle.json`` (its training time, data hash
    and commit), the same for every copy of one bundle and different for another."""
    digest = hashlib.sha256((Path(path) / "bundle.json").read_bytes()).hexdigest()
    return f"bundle-{digest[:12]}"


# --- helpers ----------------------------------------------------------------------------------


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
