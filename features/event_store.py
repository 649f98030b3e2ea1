"""The event store: every event a shop posts, kept durably in a real database.

One store behind one interface, written with SQLAlchemy Core:

* **SQLite** by default (``events/events.db`` under the project), in WAL mode with
  ``synchronous=FULL``: a batch is on disk when ``add`` returns, so an acknowledged event
  survives a killed process or a power cut;
* **PostgreSQL** when ``$TAILOR_EVENTS_URL`` is ``postgresql+psycopg://...``, for several
  serving replicas or machines sharing one store.

The tables are in ``features/store_schema.py``. The schema version is checked at start: a store
of an older version whose upgrade only adds tables and indexes gets them; any other version is a
clear error, never a silent migration. Times are epoch milliseconds (UTC).
"""

from __future__ import annotations

import hashlib
import json
import os
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from features.infra import ROOT, TailorError
from features.store_schema import (
    ASSIGNED,
    PRIVACY_OF,
    SCHEMA_VERSION,
    SHOWN_TO,
    assignments_table,
    control_table,
    events_table,
    impressions_table,
    latest_rows,
    open_schema,
    privacy_table,
)

URL_ENV = "TAILOR_EVENTS_URL"
DEFAULT_PATH = ROOT / "events" / "events.db"


class StoreError(TailorError):
    """The event store cannot be used: unreachable, or written by another schema version."""


NO_STORE = ("none", "off")   # $TAILOR_EVENTS_URL values that turn the store off


def store_url(url: str | None = None) -> str:
    """The store's SQLAlchemy URL: ``url``, else ``$TAILOR_EVENTS_URL``, else the SQLite file."""
    url = url or os.environ.get(URL_ENV, "").strip()
    return url or f"sqlite:///{DEFAULT_PATH}"


def store_disabled() -> bool:
    """``TAILOR_EVENTS_URL=none``: serve and train without an event store."""
    return os.environ.get(URL_ENV, "").strip().lower() in NO_STORE


def open_store(create: bool = True) -> EventStore | None:
    """The configured store; None when turned off, or (``create`` False) when its SQLite file
    does not exist yet."""
    if store_disabled():
        return None
    url = store_url()
    if not create and url.startswith("sqlite") and not sqlite_file(url).exists():
        return None
    return EventStore(url, create=create)


def forgotten_shoppers() -> set[str]:
    """Hashed ids of the shoppers forgotten in the configured store (none without one)."""
    store = open_store(create=False)
    if store is None:
        return set()
    try:
        return store.forgotten()
    finally:
        store.close()


def sqlite_file(url: str) -> Path:
    """The database file of a ``sqlite:///`` URL."""
    return Path(sa.engine.make_url(url).database or "")


def user_hash(user_id: str) -> str:
    """How the privacy table names a shopper (a deletion's audit keeps no raw id)."""
    return hashlib.sha256(str(user_id).encode("utf-8")).hexdigest()


def now_ms() -> int:
    return time.time_ns() // 1_000_000


@dataclass(frozen=True)
class Added:
    stored: int
    duplicates: int
    skipped_opted_out: int


class EventStore:
    """The store at ``url`` (see ``store_url``); tables are created on first use."""

    def __init__(self, url: str | None = None, *, create: bool = True) -> None:
        self.url = store_url(url)
        self.engine = _connect(self.url, create)
        self.dialect = self.engine.dialect.name
        try:
            self._check_schema(create)
        except sa.exc.DBAPIError as exc:
            raise StoreError(f"cannot open the event store {self.safe_url}: "
                             f"{exc.orig or exc}") from exc

    def _insert(self, table: sa.Table):
        """An INSERT with this dialect's ON CONFLICT clauses (SQLite and PostgreSQL alike)."""
        return (sqlite.insert if self.dialect == "sqlite" else postgresql.insert)(table)

    @property
    def safe_url(self) -> str:
        return sa.engine.make_url(self.url).render_as_string(hide_password=True)

    def close(self) -> None:
        self.engine.dispose()

    def _check_schema(self, create: bool) -> None:
        for attempt in range(3):
            try:
                version = self._schema_version(create)
                break
            except sa.exc.DBAPIError:
                # Several workers starting at once may race to create the tables; the loser
                # finds them made on its next look.
                if attempt == 2:
                    raise
                time.sleep(0.2 * (attempt + 1))
        if version != SCHEMA_VERSION:
            raise StoreError(f"the event store {self.safe_url} has schema version {version}; "
                             f"this Tailor reads version {SCHEMA_VERSION}. Export it with the "
                             "Tailor that wrote it (make export-events) and load it anew")

    def _schema_version(self, create: bool) -> int:
        with self.engine.begin() as conn:
            version = open_schema(conn, create)
        if version is None:
            raise StoreError(f"no event store at {self.safe_url}")
        return version

    # --- writing ----------------------------------------------------------------------------

    def add(self, events: Iterable[dict]) -> Added:
        """Store a batch in one transaction, committed before returning. Each event: user_id,
        item_id, event, ts_ms (None: now), event_id (None: a new one), request_id. Events of
        opted-out shoppers are not stored; an event_id already stored (or twice in the batch)
        counts as a duplicate."""
        received = now_ms()
        events = list(events)
        rows: dict[str, dict] = {}
        for e in events:
            event_id = e.get("event_id") or uuid.uuid4().hex
            rows.setdefault(event_id, {
                "event_id": event_id, "user_id": str(e["user_id"]), "item_id": str(e["item_id"]),
                "event": e["event"],
                "ts_ms": int(e["ts_ms"]) if e.get("ts_ms") is not None else received,
                "request_id": e.get("request_id"), "received_ms": received})
        with self.engine.begin() as conn:
            out = self._opted_out(conn, {r["user_id"] for r in rows.values()})
            kept = [r for r in rows.values() if user_hash(r["user_id"]) not in out]
            stored = 0
            if kept:
                # RETURNING names the rows this statement inserted, so a concurrent writer of
                # the same event_id never makes one count twice.
                insert = self._insert(events_table).on_conflict_do_nothing(
                    index_elements=["event_id"]).returning(events_table.c.event_id)
                stored = len(conn.execute(insert, kept).all())
        skipped = len(rows) - len(kept)
        return Added(stored, len(events) - skipped - stored, skipped)

    @staticmethod
    def _opted_out(conn, users: set[str]) -> set[str]:
        if not users:
            return set()
        hashes = [user_hash(u) for u in users]
        found = conn.execute(sa.select(privacy_table.c.user_hash).where(
            privacy_table.c.user_hash.in_(hashes), privacy_table.c.opted_out.is_(True)))
        return {row[0] for row in found}

    # --- reading ----------------------------------------------------------------------------

    def shopper(self, user_id: str, since_ms: int | None, limit: int,
                shown_since_ms: int | None = None, shown_limit: int = 0) -> Shopper:
        """What serving reads per request, in one connection: the privacy flags and, unless
        opted out, the shopper's last ``limit`` events after ``since_ms`` (oldest first) as plain
        lists, and the items of the latest ``shown_limit`` impressions after ``shown_since_ms``
        (newest first)."""
        with self.engine.connect() as conn:
            row = conn.execute(PRIVACY_OF, {"user_hash": user_hash(user_id)}).first()
            forgotten = row is not None and row[0] is not None
            opted_out = bool(row is not None and row[1])
            rows = [] if opted_out else latest_rows(conn, user_id, since_ms, limit)
            shown = [] if opted_out or not shown_limit else [
                json.loads(r[0]) for r in conn.execute(SHOWN_TO, {
                    "user_id": str(user_id), "limit": shown_limit,
                    "since_ms": -(2**62) if shown_since_ms is None else shown_since_ms})]
        return Shopper(forgotten, opted_out, [r[0] for r in rows], [r[1] for r in rows],
                       [r[2] for r in rows], shown)

    def since(self, since_ms: int | None = None) -> pd.DataFrame:
        """Every stored event (after ``since_ms``) in the canonical columns, oldest first."""
        query = sa.select(events_table.c.user_id, events_table.c.item_id, events_table.c.event,
                          events_table.c.ts_ms, events_table.c.event_id,
                          events_table.c.request_id, events_table.c.received_ms)
        if since_ms is not None:
            query = query.where(events_table.c.ts_ms > since_ms)
        with self.engine.connect() as conn:
            frame = pd.read_sql(query.order_by(events_table.c.ts_ms, events_table.c.seq), conn)
        frame["timestamp"] = pd.to_datetime(frame.pop("ts_ms"), unit="ms", utc=True)
        frame["received_at"] = pd.to_datetime(frame.pop("received_ms"), unit="ms", utc=True)
        return frame

    def state(self) -> tuple[int, int | None, int | None]:
        """What identifies the stored events for caches: their count, the newest row, the newest
        receipt (a post moves all three, a forget the count)."""
        with self.engine.connect() as conn:
            return tuple(conn.execute(sa.select(
                sa.func.count(), sa.func.max(events_table.c.seq),
                sa.func.max(events_table.c.received_ms))).one())

    def count(self) -> int:
        with self.engine.connect() as conn:
            return int(conn.execute(sa.select(sa.func.count()).select_from(events_table))
                       .scalar())

    # --- experiments ------------------------------------------------------------------------

    def assignment(self, experiment: str, user_id: str, variant: str) -> str:
        """The shopper's variant in ``experiment``: the stored one, else ``variant`` (stored
        now), so a later change of shares moves new shoppers only."""
        key = {"experiment": experiment, "user_id": str(user_id)}
        with self.engine.begin() as conn:
            found = conn.execute(ASSIGNED, key).scalar()
            if found is not None:
                return found
            insert = self._insert(assignments_table).values(**key, variant=variant,
                                                            assigned_ms=now_ms())
            conn.execute(insert.on_conflict_do_nothing(index_elements=["experiment",
                                                                       "user_id"]))
            return conn.execute(ASSIGNED, key).scalar()

    def add_impressions(self, rows: list[dict]) -> None:
        """Impressions (request_id, experiment, variant, user_id, endpoint, items as a list,
        ts_ms) in one transaction; a request_id stored already is skipped."""
        if not rows:
            return
        values = [{**r, "items": json.dumps(list(r["items"]))} for r in rows]
        insert = self._insert(impressions_table).on_conflict_do_nothing(
            index_elements=["request_id"])
        with self.engine.begin() as conn:
            conn.execute(insert, values)

    def experiment_tables(self, experiment: str) -> tuple[pd.DataFrame, pd.DataFrame,
                                                          pd.DataFrame]:
        """(assignments, impressions, events of the assigned shoppers) of one experiment."""
        with self.engine.connect() as conn:
            assigned = pd.read_sql(sa.select(assignments_table).where(
                assignments_table.c.experiment == experiment), conn)
            shown = pd.read_sql(sa.select(impressions_table).where(
                impressions_table.c.experiment == experiment), conn)
            users = sa.select(assignments_table.c.user_id).where(
                assignments_table.c.experiment == experiment)
            events = pd.read_sql(sa.select(events_table).where(
                events_table.c.user_id.in_(users)), conn)
        shown["items"] = shown["items"].map(json.loads)
        return assigned, shown, events

    # --- control ----------------------------------------------------------------------------

    def bump(self, key: str, value: str | None = None) -> int:
        """Raise control ``key``'s generation, which every worker using the store watches
        (``reload``: ``value`` is a model reference, None the served one); returns it."""
        with self.engine.begin() as conn:
            current = conn.execute(sa.select(control_table.c.generation).where(
                control_table.c.key == key)).scalar() or 0
            values = {"generation": current + 1, "value": value, "updated_ms": now_ms()}
            insert = self._insert(control_table).values(key=key, **values)
            conn.execute(insert.on_conflict_do_update(index_elements=["key"], set_=values))
        return current + 1

    def control(self, key: str) -> tuple[int, str | None, int]:
        """(generation, value, epoch ms of the change) of ``key``; (0, None, 0) before any."""
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(control_table.c.generation, control_table.c.value,
                                         control_table.c.updated_ms)
                               .where(control_table.c.key == key)).first()
        return (int(row[0]), row[1], int(row[2])) if row else (0, None, 0)

    # --- privacy ----------------------------------------------------------------------------

    def forget(self, user_id: str, by: str) -> int:
        """Delete the shopper's events and record the deletion (hashed id, time, who); later
        reads, training and serving leave them out. Returns the events deleted."""
        with self.engine.begin() as conn:
            deleted = conn.execute(events_table.delete().where(
                events_table.c.user_id == str(user_id))).rowcount
            for table in (impressions_table, assignments_table):
                conn.execute(table.delete().where(table.c.user_id == str(user_id)))
            self._set(conn, user_id, forgotten_ms=now_ms(), forgotten_by=by)
        return int(deleted)

    def set_consent(self, user_id: str, personalized: bool) -> None:
        with self.engine.begin() as conn:
            self._set(conn, user_id, opted_out=not personalized)

    def forgotten(self) -> set[str]:
        """Hashed ids of every forgotten shopper."""
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(privacy_table.c.user_hash).where(
                privacy_table.c.forgotten_ms.is_not(None)))
            return {row[0] for row in rows}

    def audit(self) -> pd.DataFrame:
        with self.engine.connect() as conn:
            return pd.read_sql(sa.select(privacy_table).where(
                privacy_table.c.forgotten_ms.is_not(None)), conn)

    def _set(self, conn, user_id: str, **values) -> None:
        key = user_hash(user_id)
        values["updated_ms"] = now_ms()
        insert = self._insert(privacy_table).values(
            user_hash=key, opted_out=values.get("opted_out", False),
                                  **{k: v for k, v in values.items() if k != "opted_out"})
        conn.execute(insert.on_conflict_do_update(index_elements=["user_hash"], set_=values))


@dataclass(frozen=True)
class Shopper:
    forgotten: bool
    opted_out: bool
    item_ids: list[str]     # the latest events, oldest first
    events: list[str]
    ts_ms: list[int]
    shown: list[list[str]] = field(default_factory=list)   # latest impressions' items


def drop_forgotten(events: pd.DataFrame, forgotten: set[str]) -> pd.DataFrame:
    """``events`` without the rows of forgotten shoppers (hashed ids in ``forgotten``)."""
    if not forgotten or events.empty:
        return events
    users = events["user_id"].astype(str)
    distinct = users.unique()
    gone = np.array([user_hash(u) in forgotten for u in distinct])
    if not gone.any():
        return events
    return events[~users.isin(set(distinct[gone])).to_numpy()].reset_index(drop=True)


def _connect(url: str, create: bool) -> sa.Engine:
    if url.startswith("sqlite"):
        path = sa.engine.make_url(url).database
        if path and path != ":memory:":
            if create:
                Path(path).parent.mkdir(parents=True, exist_ok=True)
            elif not Path(path).exists():
                raise StoreError(f"no event store at {path}")
        engine = sa.create_engine(url, connect_args={"timeout": 30})

        @sa.event.listens_for(engine, "connect")
        def _durable(dbapi_conn, _record) -> None:   # every connection, before first use
            cursor = dbapi_conn.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=FULL")
            cursor.execute("PRAGMA busy_timeout=30000")
            cursor.close()

        return engine
    try:
        return sa.create_engine(url, pool_pre_ping=True)
    except (sa.exc.ArgumentError, ModuleNotFoundError) as exc:
        raise StoreError(f"cannot use the event store URL {url!r}: {exc}") from exc

