"""Items added to the catalog while serving (``POST /admin/items``), kept in the event store so
that every worker of every replica places them (``models.added_items``), a restarted worker or a
newly loaded model too, and the next training run reads them as item metadata.

Each item is stored whole (its id, category and attributes as JSON); posting an item id again
replaces what was stored (a worker that placed the item keeps that placement until it loads a
model again). The store's ``items`` control generation rises with every post: the
workers' watchers compare it with the one they applied.
"""

from __future__ import annotations

import json

import pandas as pd
import sqlalchemy as sa

from features.event_store import EventStore, now_ms
from features.store_schema import catalog_table

ITEMS_KEY = "items"


def add_items(store: EventStore, items: list[dict]) -> int:
    """Store ``items`` (dicts with ``item_id`` and metadata fields) in one transaction; returns
    the new ``items`` generation."""
    added = now_ms()
    rows = {str(item["item_id"]): {"item_id": str(item["item_id"]), "added_ms": added,
                                   "fields": json.dumps({k: v for k, v in item.items()
                                                         if k != "item_id"}, sort_keys=True)}
            for item in items}   # the last of an id posted twice wins
    with store.engine.begin() as conn:
        for row in rows.values():
            insert = store._insert(catalog_table).values(**row)
            # added_ms stays the first post's: items keep their order (and so their rows).
            conn.execute(insert.on_conflict_do_update(index_elements=["item_id"],
                                                      set_={"fields": row["fields"]}))
    return store.bump(ITEMS_KEY)


def added_items(store: EventStore) -> pd.DataFrame:
    """Every stored item as item metadata rows (``item_id`` first, then the fields that any of
    them has), oldest first: the order they get their rows in."""
    with store.engine.connect() as conn:
        rows = conn.execute(sa.select(catalog_table.c.item_id, catalog_table.c.fields)
                            .order_by(catalog_table.c.added_ms, catalog_table.c.item_id)).all()
    frame = pd.DataFrame([{"item_id": item_id, **json.loads(fields)} for item_id, fields in rows])
    if frame.empty:
        return pd.DataFrame({"item_id": pd.Series([], dtype="string")})
    return frame.assign(item_id=frame["item_id"].astype("string"))


def items_generation(store: EventStore) -> int:
    return store.control(ITEMS_KEY)[0]
