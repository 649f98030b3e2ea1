"""The event store's schema (``features/event_store.py``): its tables, the version the store
checks at start and how a store is opened at it (``open_schema``: created, or an older one
upgraded), and the statements serving runs on every request, built once so SQLAlchemy
compiles each a single time.

Tables: ``events`` (the canonical columns plus ``event_id``, unique, so a retried post is stored
once; ``request_id``, the response that led to it; ``received_ms``), indexed for "this shopper's
latest events" and "everything since time T"; ``privacy`` (per hashed user id: forgotten, opted
out; with who and when, the audit of a deletion); ``assignments`` and ``impressions``
(experiments: a shopper's variant, what each answer showed); ``tailor_control`` (a model reload
every worker acts on); ``catalog_items`` (items added to the running catalog, each with its
metadata as JSON); ``tailor_schema`` (the schema version). Times are epoch milliseconds.
"""

from __future__ import annotations

import sqlalchemy as sa

# 2 added ``catalog_items``; 3 indexes impressions by (user_id, ts_ms) instead of user_id. An
# older store gets both when it is opened (``migrate``).
SCHEMA_VERSION = 3
MIGRATABLE = (1, 2)
# Indexes that a later version replaced: dropped by ``migrate``.
REPLACED_INDEXES = ("impressions_user",)

metadata = sa.MetaData()
events_table = sa.Table(
    "events", metadata,
    sa.Column("seq", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True,
              autoincrement=True),
    sa.Column("event_id", sa.String(256), nullable=False, unique=True),
    sa.Column("user_id", sa.String(256), nullable=False),
    sa.Column("item_id", sa.String(256), nullable=False),
    sa.Column("event", sa.String(16), nullable=False),
    sa.Column("ts_ms", sa.BigInteger, nullable=False),
    sa.Column("request_id", sa.String(256)),
    sa.Column("received_ms", sa.BigInteger, nullable=False),
    sa.Index("events_user_time", "user_id", "ts_ms"),
    sa.Index("events_time", "ts_ms"),
)
privacy_table = sa.Table(
    "privacy", metadata,
    sa.Column("user_hash", sa.String(64), primary_key=True),
    sa.Column("forgotten_ms", sa.BigInteger),     # when the shopper was forgotten (None: not)
    sa.Column("forgotten_by", sa.String(256)),
    sa.Column("opted_out", sa.Boolean, nullable=False, default=False),
    sa.Column("updated_ms", sa.BigInteger, nullable=False),
)
assignments_table = sa.Table(   # a shopper's variant, kept from the first assignment on
    "assignments", metadata,
    sa.Column("experiment", sa.String(64), primary_key=True),
    sa.Column("user_id", sa.String(256), primary_key=True),
    sa.Column("variant", sa.String(64), nullable=False),
    sa.Column("assigned_ms", sa.BigInteger, nullable=False),
)
impressions_table = sa.Table(   # what an answer showed: the unit outcomes are attributed to
    "impressions", metadata,
    sa.Column("request_id", sa.String(64), primary_key=True),
    sa.Column("experiment", sa.String(64)),
    sa.Column("variant", sa.String(64)),
    sa.Column("user_id", sa.String(256), nullable=False),
    sa.Column("endpoint", sa.String(32), nullable=False),
    sa.Column("items", sa.Text, nullable=False),      # JSON list of item ids, in slot order
    sa.Column("ts_ms", sa.BigInteger, nullable=False),
    sa.Index("impressions_experiment", "experiment"),
    # Serving reads a shopper's latest impressions on every request: by (user_id, ts_ms) that is
    # a range of at most the limit's rows, where by user_id alone it read and sorted every
    # impression the shopper ever had, so a frequent shopper's answers slowed down over time.
    sa.Index("impressions_user_time", "user_id", "ts_ms"),
)
control_table = sa.Table(   # requests every worker of every replica acts on (a model reload)
    "tailor_control", metadata,
    sa.Column("key", sa.String(64), primary_key=True),
    sa.Column("generation", sa.BigInteger, nullable=False),
    sa.Column("value", sa.String(1024)),
    sa.Column("updated_ms", sa.BigInteger, nullable=False),
)
catalog_table = sa.Table(   # items added to the catalog while serving (POST /admin/items)
    "catalog_items", metadata,
    sa.Column("item_id", sa.String(256), primary_key=True),
    sa.Column("fields", sa.Text, nullable=False),     # JSON object: category_id, attributes
    sa.Column("added_ms", sa.BigInteger, nullable=False),
)
schema_table = sa.Table(
    "tailor_schema", metadata,
    sa.Column("version", sa.Integer, nullable=False),
)


def open_schema(conn: sa.Connection, create: bool) -> int | None:
    """The store's schema version as opened: a ``MIGRATABLE`` one is brought to this version
    (``migrate``), a missing schema is created when ``create`` (else None); any other version is
    returned as it is, for the caller to refuse."""
    if sa.inspect(conn).has_table("tailor_schema"):
        version = conn.execute(sa.select(schema_table.c.version)).scalar()
        if version not in MIGRATABLE:
            return version
        migrate(conn)   # later versions only add tables and indexes
        conn.execute(schema_table.update().values(version=SCHEMA_VERSION))
        return SCHEMA_VERSION
    if not create:
        return None
    metadata.create_all(conn)
    conn.execute(schema_table.insert().values(version=SCHEMA_VERSION))
    return SCHEMA_VERSION


def migrate(conn: sa.Connection) -> None:
    """Bring a store of a ``MIGRATABLE`` version to this schema: the tables and indexes it
    lacks are created, replaced indexes dropped; the stored rows stay as they are."""
    metadata.create_all(conn)   # missing tables, with their indexes
    for table in metadata.sorted_tables:
        for index in table.indexes:   # create_all leaves an existing table's indexes alone
            index.create(conn, checkfirst=True)
    for name in REPLACED_INDEXES:
        conn.execute(sa.text(f"DROP INDEX IF EXISTS {name}"))


# The per-request reads, built once (SQLAlchemy caches their compiled form).
ASSIGNED = sa.select(assignments_table.c.variant).where(
    assignments_table.c.experiment == sa.bindparam("experiment"),
    assignments_table.c.user_id == sa.bindparam("user_id"))
PRIVACY_OF = sa.select(privacy_table.c.forgotten_ms, privacy_table.c.opted_out).where(
    privacy_table.c.user_hash == sa.bindparam("user_hash"))
SHOWN_TO = sa.select(impressions_table.c["items"]).where(
    impressions_table.c.user_id == sa.bindparam("user_id"),
    impressions_table.c.ts_ms > sa.bindparam("since_ms")).order_by(
    impressions_table.c.ts_ms.desc()).limit(sa.bindparam("limit"))
LATEST_OF = sa.select(events_table.c.item_id, events_table.c.event, events_table.c.ts_ms).where(
    events_table.c.user_id == sa.bindparam("user_id"),
    events_table.c.ts_ms > sa.bindparam("since_ms")).order_by(
    events_table.c.ts_ms.desc(), events_table.c.seq.desc()).limit(sa.bindparam("limit"))


def latest_rows(conn, user_id: str, since_ms: int | None, limit: int) -> list[tuple]:
    """(item_id, event, ts_ms) of the shopper's last ``limit`` events after ``since_ms``,
    oldest first."""
    rows = conn.execute(LATEST_OF, {"user_id": str(user_id),
                                    "since_ms": -(2**62) if since_ms is None else since_ms,
                                    "limit": limit}).all()
    return [tuple(r) for r in rows[::-1]]
