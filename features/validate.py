"""Shared validation for every tabular reader: raw strings in, the canonical event table out.

``validate_events`` takes a frame as read from a file (strings, or native Parquet types), finds
the canonical columns by name, checks every value, and either raises a one-line ``DataError``
at the first bad row or (``on_bad_rows='skip'``) drops the bad rows and reports them. Every
check is vectorized: problems are found as boolean masks and only the first few are formatted.

Row numbers are the line numbers a person sees in the file: for a CSV with a header, data row
``i`` (0-based) is line ``i + 2``. The reader passes them in, so blank lines it removed before
validation do not shift the numbers. Messages look like
``data/events.csv, row 17, column 'action': unknown event (...; map it with map=zap=view): 'zap'``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from features.infra import DataError
from features.schema import (
    DEFAULT_EVENT_ALIASES,
    EVENT_DTYPE,
    EVENT_TYPES,
    SPLIT_DTYPE,
    SPLIT_VALUES,
    TIMESTAMP_DTYPE,
    BadRowReport,
    EventData,
)
from features.spec import ReadOptions

# Canonical key (as used by ReadOptions.columns) -> names accepted in a file, most specific first.
COLUMN_ALIASES: dict[str, tuple[str, ...]] = {
    "user": ("user_id", "userid", "user", "visitorid", "visitor_id", "customer_id"),
    "item": ("item_id", "itemid", "item", "product_id", "sku"),
    "event": ("event", "event_type", "behavior", "behaviour", "behavior_type", "action", "type"),
    "timestamp": ("timestamp", "ts", "time", "datetime", "event_time", "date"),
    "session": ("session_id", "session", "sessionid"),
    "split": ("split",),
    "price": ("price",),
    "quantity": ("quantity", "qty"),
    "category": ("category_id", "cate_id", "categoryid", "category"),
}
CANONICAL_NAME: dict[str, str] = {
    "user": "user_id", "item": "item_id", "event": "event", "timestamp": "timestamp",
    "session": "session_id", "split": "split", "price": "price", "quantity": "quantity",
    "category": "category_id",
}
REQUIRED_KEYS = ("user", "item", "event")
DUPLICATE_KEY = ("user_id", "item_id", "event", "timestamp", "session_id", "split")
EXAMPLES_PER_REASON = 3
_EPOCH_UNITS = (("s", 1e3), ("ms", 1.0), ("us", 1e-3), ("ns", 1e-6))  # unit, factor to ms
_UNIT_NAMES = ("seconds", "milliseconds", "microseconds", "nanoseconds")


def resolve_columns(found: Sequence[str], path: str | Path,
                    options: ReadOptions) -> dict[str, str]:
    """Canonical key -> column name in the file. Overrides first, then aliases (any case)."""
    by_lower: dict[str, str] = {}
    for name in found:
        by_lower.setdefault(str(name).strip().lower(), name)
    shown = ", ".join(map(str, found)) or "(none)"
    resolved: dict[str, str] = {}
    for key, wanted in options.columns.items():
        if key not in COLUMN_ALIASES:
            raise DataError(f"unknown column option {key!r}; known: {', '.join(COLUMN_ALIASES)}",
                            path=str(path))
        actual = wanted if wanted in found else by_lower.get(wanted.strip().lower())
        if actual is None:
            raise DataError(f"option {key}={wanted} names no column; columns found: {shown}",
                            path=str(path))
        resolved[key] = actual
    taken = set(resolved.values())  # a column claimed by an override is not reused by an alias
    for key, aliases in COLUMN_ALIASES.items():
        if key in resolved:
            continue
        for alias in aliases:
            actual = by_lower.get(alias)
            if actual is not None and actual not in taken:
                resolved[key] = actual
                taken.add(actual)
                break
    for key in REQUIRED_KEYS:
        if key not in resolved:
            raise DataError(
                f"missing required column '{CANONICAL_NAME[key]}' (also accepted: "
                f"{', '.join(COLUMN_ALIASES[key][1:])}; or name it with {key}=COLUMN); "
                f"columns found: {shown}", path=str(path))
    return resolved


def clean_ids(values: pd.Series) -> pd.Series:
    """Ids as "string" dtype, surrounding blanks removed, empty -> <NA>."""
    ids = values.astype("string").str.strip()
    return ids.mask(ids == "")


def value_codes(values: pd.Series) -> tuple[np.ndarray, list]:
    """(int64 code per row, -1 where missing; the distinct values). For columns with few
    distinct values (events, splits). Arrow-fast for strings: pd.factorize on Arrow strings
    goes through Python objects and is ~10x slower."""
    if isinstance(values.dtype, pd.CategoricalDtype):
        return values.cat.codes.to_numpy(dtype=np.int64), list(values.cat.categories)
    if isinstance(values.dtype, pd.StringDtype) and values.dtype.storage == "pyarrow":
        encoded = pc.dictionary_encode(_arrow(values))
        codes = pc.fill_null(encoded.indices, -1).to_numpy(zero_copy_only=False)
        return codes.astype(np.int64), encoded.dictionary.to_pylist()
    codes, uniques = pd.factorize(values)
    return codes.astype(np.int64), list(uniques)


def _arrow(values: pd.Series) -> pa.Array:
    arrow = pa.array(values.array)  # zero-copy for Arrow-backed strings
    return arrow.combine_chunks() if isinstance(arrow, pa.ChunkedArray) else arrow


def to_float(text: pd.Series) -> np.ndarray:
    """Stripped strings -> float64, NaN where blank or not a number.

    Arrow's cast is ~40x faster than pd.to_numeric on Arrow strings; it fails as a whole on
    any bad value, and then pd.to_numeric finds which ones are bad.
    """
    if isinstance(text.dtype, pd.StringDtype) and text.dtype.storage == "pyarrow":
        arrow = _arrow(text)
        arrow = pc.if_else(pc.equal(arrow, ""), pa.scalar(None, arrow.type), arrow)
        try:
            return pc.cast(arrow, pa.float64()).to_numpy(zero_copy_only=False)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            pass
    return pd.to_numeric(text, errors="coerce").to_numpy(dtype="float64", na_value=np.nan)


def map_values(values: pd.Series, mapper: dict[str, str], categories: Sequence[str]
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Map each distinct value (stripped, lower-cased) through ``mapper`` to a code into
    ``categories``. -> (codes, -1 where unmapped; blank mask; raw value codes for de-dup)."""
    raw_codes, uniques = value_codes(values)
    lookup = np.full(len(uniques) + 1, -1, dtype=np.int64)  # last slot: missing (code -1)
    blank = np.zeros(len(uniques) + 1, dtype=bool)
    blank[-1] = True
    for i, raw in enumerate(uniques):
        name = str(raw).strip().lower()
        blank[i] = name == ""
        if mapper.get(name) in categories:
            lookup[i] = list(categories).index(mapper[name])
    return lookup[raw_codes], blank[raw_codes], raw_codes


def canonical_events(events: pd.Series, event_map: dict[str, str]
                     ) -> tuple[pd.Categorical, np.ndarray, np.ndarray, np.ndarray]:
    """Raw names -> EVENT_DTYPE (the user's map first, then the defaults). Also -> the blank
    mask, the unknown-name mask and the raw-name codes (de-duplication compares names as
    written in the file)."""
    mapper = {**DEFAULT_EVENT_ALIASES, **{k.strip().lower(): v for k, v in event_map.items()}}
    codes, blank, raw_codes = map_values(events, mapper, EVENT_TYPES)
    event = pd.Categorical.from_codes(codes, dtype=EVENT_DTYPE)
    return event, blank, (codes < 0) & ~blank, raw_codes


def parse_timestamps(values: pd.Series) -> tuple[pd.Series, np.ndarray, str]:
    """-> (timestamps as TIMESTAMP_DTYPE with NaT where bad, bad mask, why they are bad).

    Numbers are epoch seconds / ms / us / ns, the unit chosen per column from the median
    magnitude (> 1e11 ms, > 1e14 us, > 1e17 ns); a value whose own magnitude says another unit
    is bad rather than silently landing in 1970. Eight-digit integers that all parse as
    YYYYMMDD are dates. Strings are ISO 8601 dates or date-times; naive ones count as UTC.
    """
    if isinstance(values.dtype, pd.DatetimeTZDtype) or pd.api.types.is_datetime64_dtype(values):
        ts = pd.Series(pd.to_datetime(values, utc=True), index=values.index)
        return ts.astype(TIMESTAMP_DTYPE), ts.isna().to_numpy(), "empty timestamp"
    if pd.api.types.is_numeric_dtype(values) and not pd.api.types.is_bool_dtype(values):
        text = None
        num = values.to_numpy(dtype="float64", na_value=np.nan)
    else:
        text = values.astype("string").str.strip()
        num = to_float(text)
    is_num = np.isfinite(num)
    present = is_num if text is None else (text.notna() & (text != "")).to_numpy(dtype=bool)
    why = "unparsable timestamp (expected epoch s/ms/us or an ISO 8601 date or date-time)"
    if is_num.sum() * 2 >= present.sum() and is_num.any():
        if text is not None and _all_yyyymmdd(text[is_num]):
            parsed = pd.to_datetime(text, format="%Y%m%d", errors="coerce", utc=True)
            ts = pd.Series(parsed, index=values.index).astype(TIMESTAMP_DTYPE)
            return ts, ts.isna().to_numpy(), why
        mag = np.abs(num)
        column_unit = _epoch_unit(np.array([np.median(mag[is_num])]))[0]
        ok = is_num & (_epoch_unit(mag) == column_unit)
        if ok.sum() < is_num.sum():
            why = (f"not an epoch timestamp in {_UNIT_NAMES[column_unit]} like the rest of "
                   f"the column (mixed units, or not a number)")
        ms = np.where(ok, num, 0) * _EPOCH_UNITS[column_unit][1]
        ts = pd.Series(np.round(ms).astype("int64").astype("datetime64[ms]"), index=values.index)
        ts = ts.dt.tz_localize("UTC").astype(TIMESTAMP_DTYPE).mask(~ok)
        return ts, ~ok, why
    parsed = pd.to_datetime(text, errors="coerce", utc=True, format="ISO8601")
    ts = pd.Series(parsed, index=values.index).astype(TIMESTAMP_DTYPE)
    return ts, ts.isna().to_numpy(), why


def _epoch_unit(magnitude: np.ndarray) -> np.ndarray:
    return np.searchsorted(np.array([1e11, 1e14, 1e17]), magnitude, side="right")


def _all_yyyymmdd(text: pd.Series) -> bool:
    if text.empty or not (text.str.len() == 8).all():
        return False
    return bool(pd.to_datetime(text, format="%Y%m%d", errors="coerce").notna().all())


@dataclass
class _Check:
    reason: str          # report key, e.g. "unknown event"
    column: str          # name in the file
    bad: np.ndarray      # bool mask over the raw rows
    message: str         # DataError text; "{value}" is replaced by the bad value
    show_value: bool = True


def _blank(values: pd.Series) -> np.ndarray:
    if isinstance(values.dtype, pd.StringDtype) or values.dtype == object:
        return clean_ids(values).isna().to_numpy()
    return values.isna().to_numpy()


def _numeric(values: pd.Series) -> tuple[pd.Series, np.ndarray]:
    """float64 with NaN for blanks; bad where a non-blank value is not a number."""
    if pd.api.types.is_numeric_dtype(values) and not pd.api.types.is_bool_dtype(values):
        numbers = values.to_numpy(dtype="float64", na_value=np.nan)
        return pd.Series(numbers, index=values.index), np.zeros(len(values), dtype=bool)
    text = values.astype("string").str.strip()
    numbers = to_float(text)
    bad = np.isnan(numbers) & (text.notna() & (text != "")).to_numpy(dtype=bool)
    return pd.Series(numbers, index=values.index), bad


def validate_events(raw: pd.DataFrame, path: str | Path, options: ReadOptions,
                    rows: np.ndarray | Sequence[int] | None = None, *,
                    source: str = "", row_offset: int = 2) -> EventData:
    """Validate ``raw`` and build the canonical events (+ items when a category column exists).

    ``rows``: 1-based line number of each raw row in the file; default ``index + row_offset``
    (2 = CSV with a header). Source order is kept; ``seq`` is the 0-based raw row position.
    """
    path = str(path)
    if len(raw) == 0:
        raise DataError("no events (the file has no data rows)", path=path)
    raw = raw.reset_index(drop=True)
    rows = np.arange(len(raw)) + row_offset if rows is None else np.asarray(rows)
    cols = resolve_columns(list(raw.columns), path, options)
    user, item = clean_ids(raw[cols["user"]]), clean_ids(raw[cols["item"]])
    event, blank, unknown, raw_event = canonical_events(raw[cols["event"]], options.event_map)
    mapping_hint = f"canonical: {', '.join(EVENT_TYPES)}; map it with map={{value}}=view"
    checks = [
        _Check("empty user_id", cols["user"], user.isna().to_numpy(), "empty user id", False),
        _Check("empty item_id", cols["item"], item.isna().to_numpy(), "empty item id", False),
        _Check("empty event", cols["event"], blank, "empty event name", False),
        _Check("unknown event", cols["event"], unknown, f"unknown event ({mapping_hint})"),
    ]
    out: dict[str, object] = {"user_id": user, "item_id": item, "event": event}
    has_time = "timestamp" in cols
    if has_time:
        ts, bad, why = parse_timestamps(raw[cols["timestamp"]])
        empty = _blank(raw[cols["timestamp"]])
        checks += [_Check("empty timestamp", cols["timestamp"], empty, "empty timestamp", False),
                   _Check("bad timestamp", cols["timestamp"], bad & ~empty, why)]
        out["timestamp"] = ts
    else:
        out["timestamp"] = pd.Series(pd.NaT, index=raw.index, dtype=TIMESTAMP_DTYPE)
    out["seq"] = pd.Series(np.arange(len(raw), dtype="int64"))
    if "session" in cols:
        out["session_id"] = clean_ids(raw[cols["session"]])
    for key in ("price", "quantity"):
        if key in cols:
            out[key], bad = _numeric(raw[cols[key]])
            checks.append(_Check(f"bad {key}", cols[key], bad, f"{key} is not a number"))
    if "split" in cols:
        codes, _, _ = map_values(raw[cols["split"]], {v: v for v in SPLIT_VALUES},
                                 SPLIT_VALUES)
        split, bad = pd.Categorical.from_codes(codes, dtype=SPLIT_DTYPE), codes < 0
        checks.append(_Check("bad split", cols["split"], bad,
                             f"split must be one of {', '.join(SPLIT_VALUES)}"))
        out["split"] = split
    events = pd.DataFrame(out)
    events["_raw_event"] = raw_event  # dropped below, after de-duplication
    keep, report = _apply_checks(checks, raw, rows, path, options.on_bad_rows)
    if keep is not None:
        events = events[keep]
    if len(events) == 0:
        raise DataError("no events (every row was bad; see the skipped-row report)", path=path)
    events, dropped = drop_exact_duplicates(events)
    events = events.drop(columns="_raw_event")
    items = items_from_events(events, clean_ids(raw[cols["category"]])
                              if "category" in cols else None)
    report = BadRowReport(report.counts, report.examples, dropped)
    return EventData(events.reset_index(drop=True), items, source, has_time, report)


def _apply_checks(checks: list[_Check], raw: pd.DataFrame, rows: np.ndarray, path: str,
                  on_bad_rows: str) -> tuple[np.ndarray | None, BadRowReport]:
    """Raise at the earliest bad row ('error'), or -> (rows to keep, report) ('skip')."""
    any_bad = np.zeros(len(raw), dtype=bool)
    for check in checks:
        any_bad |= check.bad
    if not any_bad.any():
        return None, BadRowReport()
    if on_bad_rows != "skip":
        first = int(np.argmax(any_bad))
        check = next(c for c in checks if c.bad[first])
        value = raw[check.column].iloc[first]
        message = check.message.replace("{value}", str(_display(value)).strip().lower())
        raise DataError(message, path=path, row=int(rows[first]), column=check.column,
                        value=_display(value) if check.show_value else None)
    counts: dict[str, int] = {}
    examples: dict[str, list[str]] = {}
    claimed = np.zeros(len(raw), dtype=bool)  # each bad row counts once, under its first reason
    for check in checks:
        mine = check.bad & ~claimed
        claimed |= mine
        if not mine.any():
            continue
        counts[check.reason] = int(mine.sum())
        where = np.flatnonzero(mine)[:EXAMPLES_PER_REASON]
        examples[check.reason] = [
            f"row {int(rows[i])}: {check.reason}"
            + (f" {_display(raw[check.column].iloc[i])!r}" if check.show_value else "")
            for i in where]
    return ~any_bad, BadRowReport(counts, examples)


def _display(value: object) -> object:
    return "" if value is None or value is pd.NA or (isinstance(value, float) and
                                                    np.isnan(value)) else value


def drop_exact_duplicates(events: pd.DataFrame) -> tuple[pd.DataFrame, int]:
    """Drop rows equal on user, item, event, time, session and split; keep the first.

    The event is compared as written in the file when ``_raw_event`` codes are present: a
    click and a fav on the same day both become 'view' but are two different source rows.
    """
    names = [("_raw_event" if c == "event" and "_raw_event" in events else c)
             for c in DUPLICATE_KEY if c in events.columns]
    # One int64 key per row from per-column integer codes, then one integer hash pass. Faster
    # than pandas' duplicated() or an Arrow group-by over the string columns themselves.
    key, bound = np.zeros(len(events), dtype=np.int64), 1
    for name in names:
        codes = _codes(events[name])
        width = int(codes.max(initial=-1)) + 2  # codes + 1 lies in [0, width)
        if width <= 1:
            continue  # all missing (e.g. no timestamps): says nothing
        if bound * width >= 2**62:  # re-densify before the product could overflow
            key = pd.factorize(key)[0].astype(np.int64)
            bound = int(key.max(initial=0)) + 1
        key, bound = key * width + codes + 1, bound * width
    dup = pd.Series(key).duplicated().to_numpy()
    n = int(dup.sum())
    return (events[~dup] if n else events), n


def _codes(col: pd.Series) -> np.ndarray:
    """Dense int64 codes, -1 for missing, without materialising the distinct values."""
    if isinstance(col.dtype, pd.CategoricalDtype):
        return col.cat.codes.to_numpy(dtype=np.int64)
    if isinstance(col.dtype, pd.StringDtype) and col.dtype.storage == "pyarrow":
        indices = pc.dictionary_encode(_arrow(col)).indices
        return pc.fill_null(indices, -1).to_numpy(zero_copy_only=False).astype(np.int64)
    if isinstance(col.dtype, pd.DatetimeTZDtype):  # NaT becomes one int64 value: fine here
        return pd.factorize(col.to_numpy(dtype="datetime64[ms]").view("int64"))[0]
    return pd.factorize(col)[0].astype(np.int64)


def items_from_events(events: pd.DataFrame, category: pd.Series | None) -> pd.DataFrame:
    """One row per event item; category_id = its most frequent category (ties: the latest)."""
    if category is None:
        return pd.DataFrame({"item_id": pd.Series([], dtype="string")})
    frame = pd.DataFrame({"item_id": events["item_id"].to_numpy(),
                          "category_id": category.to_numpy()[events["seq"].to_numpy()],
                          "seq": events["seq"].to_numpy()})
    known = frame.dropna(subset=["category_id"])
    votes = (known.groupby(["item_id", "category_id"], sort=False)["seq"]
             .agg(["size", "max"]).reset_index()
             .sort_values(["size", "max"], kind="stable")
             .drop_duplicates("item_id", keep="last"))
    all_items = pd.Series(frame["item_id"].unique(), dtype="string", name="item_id")
    best = votes.set_index("item_id")["category_id"]
    items = pd.DataFrame({"item_id": all_items,
                          "category_id": best.reindex(all_items).to_numpy()})
    items["category_id"] = items["category_id"].astype("string")
    return items
