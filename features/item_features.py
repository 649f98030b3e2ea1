"""Per-item features, one row per item-vocabulary row: category ids, availability, popularity."""

from __future__ import annotations

import numpy as np
import pandas as pd

from features.item_attributes import TOKENS_COLUMN, attribute_tokens
from features.vocab import Vocabulary

# Columns item_features computes; the bundle's items hold these and the metadata's own columns.
DERIVED_COLUMNS = ("item_idx", "item_id", "category_idx", "parent_category_idx", "available",
                   TOKENS_COLUMN, "recent_views", "recent_carts", "recent_purchases", "popularity",
                   "total_events")


def metadata_columns(items: pd.DataFrame) -> list[str]:
    """The item metadata columns of a table of item features (category, brand, price, ...)."""
    return [c for c in items.columns if c not in DERIVED_COLUMNS]


def item_features(events: pd.DataFrame, items: pd.DataFrame, item_vocab: Vocabulary, *,
                  popularity_days: float, cut: pd.Timestamp | None = None) -> pd.DataFrame:
    """Row ``r`` describes ``item_vocab.ids[r]``.

    Columns: item_idx, item_id, category_id / parent_category_id (raw, <NA> when unknown),
    category_idx / parent_category_idx (dense codes, -1 when unknown), available (items without
    metadata count as available), attribute_tokens (``features.item_attributes``),
    recent_views / recent_carts / recent_purchases / popularity (events in the
    ``popularity_days`` before ``cut``; all events when the data has no time) and total_events.
    """
    out = pd.DataFrame({"item_idx": np.arange(len(item_vocab), dtype=np.int64),
                        "item_id": pd.Series(item_vocab.index, dtype="string")})
    meta = items.drop_duplicates("item_id", keep="last").set_index("item_id") if len(items) else \
        pd.DataFrame(index=pd.Index([], dtype="string"))
    for col in ("category_id", "parent_category_id"):
        raw = meta[col].reindex(out["item_id"]).astype("string").to_numpy() if col in meta else \
            pd.array([pd.NA] * len(out), dtype="string")
        out[col] = pd.array(raw, dtype="string")
        codes, _ = pd.factorize(out[col], sort=True, use_na_sentinel=True)
        out[col.replace("_id", "_idx")] = codes.astype(np.int64)
    if "available" in meta:
        avail = meta["available"].reindex(out["item_id"]).astype("boolean").fillna(True)
        out["available"] = avail.to_numpy(dtype=bool)
    else:
        out["available"] = True

    out[TOKENS_COLUMN] = attribute_tokens(items, out["item_id"]).to_numpy()

    has_time = events["timestamp"].notna().any()
    recent = events
    if has_time:
        end = cut if cut is not None else events["timestamp"].max() + pd.Timedelta(milliseconds=1)
        start = end - pd.Timedelta(days=popularity_days)
        recent = events[(events["timestamp"] >= start) & (events["timestamp"] < end)]
    rows = item_vocab.lookup(recent["item_id"])
    known = rows >= 0
    n = len(item_vocab)
    for event, col in (("view", "recent_views"), ("addtocart", "recent_carts"),
                       ("purchase", "recent_purchases")):
        mask = known & (recent["event"] == event).to_numpy()
        out[col] = np.bincount(rows[mask], minlength=n).astype(np.int64)
    out["popularity"] = out["recent_views"] + out["recent_carts"] + out["recent_purchases"]
    all_rows = item_vocab.lookup(events["item_id"])
    out["total_events"] = np.bincount(all_rows[all_rows >= 0], minlength=n).astype(np.int64)
    return out


def new_item_rows(items: pd.DataFrame, new: pd.DataFrame) -> pd.DataFrame:
    """Rows of ``items`` (a table of item features, e.g. a bundle's) for items added after it
    was made (``new``: item metadata rows, as the items file has them), numbered after its last
    row. They read ``items``' category codes and attribute tokens: a category or token it lacks
    has no row in the model and is left out of the codes (the raw value is kept). A known
    category brings its parent category along. No events yet, so no popularity."""
    n, m = len(items), len(new)
    ids = new["item_id"].astype("string").reset_index(drop=True)
    out = pd.DataFrame({"item_idx": np.arange(n, n + m, dtype=np.int64), "item_id": ids})
    for col in ("category_id", "parent_category_id"):
        given = new[col].astype("string").reset_index(drop=True) if col in new else \
            pd.Series(pd.array([pd.NA] * m, dtype="string"))
        if col == "parent_category_id" and "category_id" in items and col in items:
            parents = items.drop_duplicates("category_id").set_index("category_id")[col]
            given = given.fillna(out["category_id"].map(parents).astype("string"))
        out[col] = given
        idx = col.replace("_id", "_idx")
        if col in items and idx in items:
            codes = dict(zip(items[col].astype("string"), items[idx], strict=True))
            out[idx] = np.array([codes.get(v, -1) if v is not pd.NA else -1 for v in given],
                                dtype=np.int64)
    out["available"] = new["available"].astype("boolean").fillna(True).to_numpy(dtype=bool) \
        if "available" in new else True
    known_tokens = set(" ".join(items[TOKENS_COLUMN].fillna("")).split()) \
        if TOKENS_COLUMN in items else set()
    tokens = attribute_tokens(new, ids, min_items=1)
    out[TOKENS_COLUMN] = pd.array([" ".join(t for t in s.split() if t in known_tokens)
                                   for s in tokens.fillna("")], dtype="string")
    for col in ("recent_views", "recent_carts", "recent_purchases", "popularity", "total_events"):
        out[col] = np.zeros(m, dtype=np.int64)
    for col in metadata_columns(items):
        if col not in out:
            out[col] = new[col].reset_index(drop=True) if col in new else pd.NA
        if _numeric(items, col):   # "4.5" from JSON text; missing: NaN
            out[col] = pd.to_numeric(out[col], errors="coerce").astype("float64")
    return out[[c for c in items.columns if c in out]]


def _numeric(items: pd.DataFrame, col: str) -> bool:
    dtype = items[col].dtype
    return pd.api.types.is_numeric_dtype(dtype) and not pd.api.types.is_bool_dtype(dtype)


def non_numeric(items: pd.DataFrame, fields: dict) -> str | None:
    """The first of ``fields`` (an item's metadata) whose column in ``items`` is numeric but
    whose value is not a number; None when all fit."""
    for name, value in fields.items():
        if name in items and _numeric(items, name) and \
                pd.isna(pd.to_numeric(value, errors="coerce")):
            return name
    return None
