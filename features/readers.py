"""``read_events(spec)``: every supported source -> validated canonical ``EventData``.

Kinds (see features/spec.py):
  events:PATH        CSV / CSV.gz (comma; tab for .tsv, or sniffed from the header) or Parquet
  retailrocket:DIR   the Kaggle Retailrocket layout: events.csv, item_properties_part*.csv,
                     category_tree.csv. ``transactionid`` is ignored: a transaction is a basket
                     of purchases, not a browsing session, and nothing downstream uses baskets.
  seq:PATH           ``user item item ...`` lines, oldest first; every item is one purchase
                     (features/seq_reader.py)
  synthetic[:size]   the generator in features/synthetic.py
  store:[URL]        the event store (features/store_reader.py), with ``base=PATH``: a
                     canonical events file beneath the stored events

Shoppers forgotten in the event store (``make forget``) are left out of every kind, even when
the raw files still hold them.

Row numbers in errors are file line numbers (header = line 1). For Parquet they are 1-based
table rows. An ``items=PATH`` option adds an item metadata file on top of any kind.
"""

from __future__ import annotations

import csv
import gzip
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from features.event_store import drop_forgotten, forgotten_shoppers
from features.infra import DataError
from features.schema import (
    ITEM_COLUMNS,
    BadRowReport,
    EventData,
)
from features.spec import DataSpec, ReadOptions
from features.validate import clean_ids, validate_events

ITEM_ALIASES: dict[str, tuple[str, ...]] = {
    "item_id": ("item_id", "itemid", "item", "product_id", "sku"),
    "category_id": ("category_id", "cate_id", "categoryid", "category"),
    "parent_category_id": ("parent_category_id", "parentid", "parent_id", "parent_category"),
    "available": ("available", "is_available", "in_stock"),
}
_TRUE = ("1", "true", "yes", "y", "t")
_FALSE = ("0", "false", "no", "n", "f")
RETAILROCKET_PROPERTIES = ("categoryid", "available")


def read_events(spec: DataSpec) -> EventData:
    """Read and validate the data ``spec`` names, without forgotten shoppers. Raises DataError
    (one line) on bad input."""
    data = _read(spec)
    forgotten = forgotten_shoppers()
    if forgotten:
        data = replace(data, events=drop_forgotten(data.events, forgotten))
    return data


def _read(spec: DataSpec) -> EventData:
    if spec.kind == "synthetic":
        from features.synthetic import generate  # local: the generator is only needed here

        data = generate(size=spec.size)
        return replace(data, source=spec.text or data.source)
    if spec.kind == "store":
        from features.store_reader import read_store  # local: it reads base files through here

        data = read_store(spec.path or None, spec.options, source=spec.text)
    else:
        from features.seq_reader import read_seq  # local: it reads through here too

        readers = {"events": read_event_file, "retailrocket": read_retailrocket,
                   "seq": read_seq}
        if spec.kind not in readers or not spec.path:
            raise DataError(f"data spec {spec.text!r}: cannot read kind {spec.kind!r} "
                            f"without a path")
        data = readers[spec.kind](spec.path, spec.options, source=spec.text)
    if spec.options.items_path:
        extra, report = read_items_file(spec.options.items_path, spec.options.on_bad_rows)
        data = replace(data, items=merge_items(data.items, extra),
                       report=merge_reports(data.report, report))
    return data


# --- tabular files -------------------------------------------------------------------------

def require_file(path: str | Path) -> Path:
    path = Path(path)
    if not path.exists():
        raise DataError("file not found", path=str(path))
    return path


def _delimiter(path: Path, header: str) -> str:
    """Tab for .tsv; otherwise comma unless the header line has none but has tab/;/|."""
    if path.name.lower().removesuffix(".gz").endswith(".tsv"):
        return "\t"
    if "," in header:
        return ","
    counts = {sep: header.count(sep) for sep in ("\t", ";", "|")}
    best = max(counts, key=counts.__getitem__)
    return best if counts[best] else ","


def _line_numbers(data: bytes, n_rows: int) -> np.ndarray:
    """File line of each data row, given that the CSV parser skipped blank lines."""
    n_lines = data.count(b"\n") + (not data.endswith(b"\n"))
    if n_lines == n_rows + 1:
        return np.arange(n_rows) + 2  # the usual case: header on line 1, no gaps
    buf = np.frombuffer(data, dtype=np.uint8)
    ends = np.append(np.flatnonzero(buf == ord("\n")), len(buf))
    starts = np.append(0, ends[:-1] + 1)
    length = ends - starts
    length -= (length > 0) & (buf[np.maximum(ends - 1, 0)] == ord("\r"))
    lines = np.flatnonzero(length > 0) + 1  # non-blank lines, 1-based; the first is the header
    return lines[1:n_rows + 1] if len(lines) == n_rows + 1 else np.arange(n_rows) + 2


def read_table(path: str | Path) -> tuple[pd.DataFrame, np.ndarray]:
    """A CSV/TSV(.gz) or Parquet file -> (frame, 1-based file line/row of each frame row).

    CSV cells stay strings (ids keep leading zeros; "NA" is an id, only "" is missing). Arrow
    parses CSV: ~20x faster than pandas' C engine on columns with millions of distinct ids.
    Anything Arrow rejects (ragged or whitespace-only lines, quoted newlines) is re-read with
    pandas, whose errors name the line.
    """
    path = require_file(path)
    if path.name.lower().endswith((".parquet", ".pq")):
        try:  # nullable dtypes: integer ids with gaps stay integers, not 12.0
            frame = pd.read_parquet(path, dtype_backend="numpy_nullable")
        except (OSError, ValueError, pa.ArrowException) as exc:
            raise DataError(f"not a readable Parquet file ({exc})", path=str(path)) from exc
        return frame, np.arange(len(frame)) + 1
    try:
        data = gzip.decompress(path.read_bytes()) if path.name.lower().endswith(".gz") \
            else path.read_bytes()
    except (OSError, EOFError) as exc:
        raise DataError(f"cannot read the file ({exc})", path=str(path)) from exc
    if not data or data.isspace():
        raise DataError("no events (the file is empty)", path=str(path))
    header = next((line for line in data[:1 << 16].split(b"\n") if line.strip()), b"")
    header_text = header.decode("utf-8-sig", errors="replace")
    sep = _delimiter(path, header_text)
    names = [n.strip() for n in next(csv.reader([header_text.strip("\r")], delimiter=sep))]
    try:
        table = pacsv.read_csv(
            pa.py_buffer(data), parse_options=pacsv.ParseOptions(delimiter=sep),
            convert_options=pacsv.ConvertOptions(column_types=dict.fromkeys(names, pa.string()),
                                                 strings_can_be_null=False))
    except pa.ArrowInvalid:
        return _read_csv_pandas(path, sep)
    frame = table.to_pandas()
    frame.columns = [str(c).strip() for c in frame.columns]
    return frame, _line_numbers(data, len(frame))


def _read_csv_pandas(path: Path, sep: str) -> tuple[pd.DataFrame, np.ndarray]:
    try:
        frame = pd.read_csv(path, sep=sep, dtype=str, keep_default_na=False, na_values=[""],
                            skip_blank_lines=False, encoding="utf-8-sig")
    except pd.errors.EmptyDataError as exc:
        raise DataError("no events (the file is empty)", path=str(path)) from exc
    except (pd.errors.ParserError, UnicodeDecodeError, OSError) as exc:
        raise DataError(f"not a readable CSV file ({str(exc).splitlines()[0]})",
                        path=str(path)) from exc
    frame.columns = [str(c).strip() for c in frame.columns]
    rows = np.arange(len(frame)) + 2  # blank lines are read as rows so these stay true ...
    blank = np.ones(len(frame), dtype=bool)
    for col in frame.columns:  # whitespace-only lines count as blank too
        blank &= (frame[col].fillna("").str.strip() == "").to_numpy(dtype=bool)
    if blank.any():  # ... and then dropped
        frame, rows = frame[~blank].reset_index(drop=True), rows[~blank]
    return frame, rows


def read_event_file(path: str | Path, options: ReadOptions, *, source: str = "") -> EventData:
    frame, rows = read_table(path)
    return validate_events(frame, path, options, rows, source=source)


def read_items_file(path: str | Path, on_bad_rows: str = "error"
                    ) -> tuple[pd.DataFrame, BadRowReport]:
    """Item metadata: item_id (+ category_id, parent_category_id, available, anything else)."""
    frame, rows = read_table(path)
    by_lower = {c.lower(): c for c in frame.columns}
    found = {key: next((by_lower[a] for a in aliases if a in by_lower), None)
             for key, aliases in ITEM_ALIASES.items()}
    if found["item_id"] is None:
        raise DataError(f"missing required column 'item_id'; columns found: "
                        f"{', '.join(frame.columns) or '(none)'}", path=str(path))
    out = pd.DataFrame({key: clean_ids(frame[col]) for key, col in found.items()
                        if col is not None and key != "available"})
    bad: dict[str, tuple[np.ndarray, str, str]] = {
        "empty item_id": (out["item_id"].isna().to_numpy(), found["item_id"], "empty item id")}
    if found["available"] is not None:
        text = frame[found["available"]].astype("string").str.strip().str.lower()
        avail = pd.Series(pd.NA, index=frame.index, dtype="boolean")
        avail[text.isin(_TRUE).fillna(False)] = True
        avail[text.isin(_FALSE).fillna(False)] = False
        wrong = (avail.isna() & text.notna() & (text != "")).to_numpy(dtype=bool)
        bad["bad available"] = (wrong, found["available"], "available must be 0/1 or true/false")
        out["available"] = avail
    for col in frame.columns:  # the rest are free attributes, kept as strings
        if col not in found.values():
            out[col] = frame[col].astype("string")
    counts, examples, drop = {}, {}, np.zeros(len(out), dtype=bool)
    for reason, (mask, column, message) in bad.items():
        if not mask.any():
            continue
        if on_bad_rows != "skip":
            i = int(np.argmax(mask))
            raise DataError(message, path=str(path), row=int(rows[i]), column=column,
                            value=None if reason.startswith("empty") else frame[column].iloc[i])
        counts[reason] = int((mask & ~drop).sum())
        examples[reason] = [f"row {int(rows[i])}: {reason}" for i in np.flatnonzero(mask)[:3]]
        drop |= mask
    out = out[~drop].drop_duplicates("item_id", keep="last")  # a later row corrects an earlier
    return out.reset_index(drop=True), BadRowReport(counts, examples)


def merge_items(base: pd.DataFrame, extra: pd.DataFrame) -> pd.DataFrame:
    """Union by item_id; a value in ``extra`` (an explicit metadata file) wins over ``base``."""
    if base.empty:
        merged = extra
    else:
        merged = extra.set_index("item_id").combine_first(base.set_index("item_id"))
        merged = merged.reset_index()
    first = [c for c in ITEM_COLUMNS if c in merged.columns]
    return merged[first + [c for c in merged.columns if c not in first]].reset_index(drop=True)


def merge_reports(a: BadRowReport, b: BadRowReport) -> BadRowReport:
    counts = dict(a.counts)
    examples = {k: list(v) for k, v in a.examples.items()}
    for reason, n in b.counts.items():
        counts[reason] = counts.get(reason, 0) + n
        examples[reason] = (examples.get(reason, []) + b.examples.get(reason, []))[:3]
    return BadRowReport(counts, examples, a.duplicates_dropped + b.duplicates_dropped)


# --- Retailrocket --------------------------------------------------------------------------

def _find(folder: Path, stem: str) -> Path | None:
    for name in (f"{stem}.csv", f"{stem}.csv.gz"):
        if (folder / name).exists():
            return folder / name
    return None


def read_retailrocket(path: str | Path, options: ReadOptions, *,
                      source: str = "") -> EventData:
    """events.csv (epoch-ms timestamp, visitorid, event, itemid) + item properties + tree.

    The property and tree files are optional; without them the items table is empty.
    """
    folder = require_file(path)
    events_path = _find(folder, "events")
    if events_path is None:
        raise DataError("file not found (a Retailrocket folder needs events.csv)",
                        path=str(folder / "events.csv"))
    data = read_event_file(events_path, options, source=source)
    parts = sorted(folder.glob("item_properties_part*.csv*"))
    if not parts:
        return data
    props = pd.concat([_latest_properties(p) for p in parts], ignore_index=True)
    # Several part files may hold the same item: the latest timestamp over all of them wins.
    props = props.sort_values("ts", kind="stable").drop_duplicates(["itemid", "property"],
                                                                    keep="last")
    wide = props.pivot(index="itemid", columns="property", values="value")
    items = pd.DataFrame({"item_id": pd.Series(wide.index, dtype="string")})
    if "categoryid" in wide:
        items["category_id"] = clean_ids(pd.Series(wide["categoryid"].to_numpy()))
        tree_path = _find(folder, "category_tree")
        if tree_path is not None:
            tree, _ = read_table(tree_path)
            if not {"categoryid", "parentid"} <= set(tree.columns):
                raise DataError(f"expected columns categoryid, parentid; columns found: "
                                f"{', '.join(tree.columns)}", path=str(tree_path))
            parents = clean_ids(tree["parentid"])
            parents.index = clean_ids(tree["categoryid"]).to_numpy()
            parents = parents[~parents.index.duplicated(keep="last")]
            items["parent_category_id"] = parents.reindex(items["category_id"]).to_numpy()
            items["parent_category_id"] = items["parent_category_id"].astype("string")
    if "available" in wide:
        text = pd.Series(wide["available"].to_numpy(), dtype="string").str.strip()
        items["available"] = text.map({"1": True, "0": False}).astype("boolean")
    return replace(data, items=items)


def _latest_properties(path: Path) -> pd.DataFrame:
    """Rows of one item_properties file whose property is categoryid/available, newest last.

    Streamed in blocks and filtered with Arrow: the real files hold ~10M rows each, almost all
    of them other (hashed) properties we never use.
    """
    kept: list[pa.Table] = []
    columns = ["timestamp", "itemid", "property", "value"]
    wanted = pa.array(RETAILROCKET_PROPERTIES)
    offset = 2  # file line of the batch's first row (the header is line 1)
    try:
        reader = pacsv.open_csv(
            str(path), read_options=pacsv.ReadOptions(block_size=1 << 24),
            convert_options=pacsv.ConvertOptions(column_types=dict.fromkeys(columns, pa.string()),
                                                 include_columns=columns))
        for batch in reader:
            keep = pc.indices_nonzero(pc.fill_null(pc.is_in(batch.column("property"),
                                                            value_set=wanted), False))
            table = pa.Table.from_batches([batch]).take(keep)
            kept.append(table.append_column("row", pc.add(keep.cast(pa.int64()), offset)))
            offset += batch.num_rows
    except (pa.ArrowInvalid, KeyError) as exc:
        raise DataError(f"not a Retailrocket item properties file (expected columns "
                        f"{', '.join(columns)}): {str(exc).splitlines()[0]}",
                        path=str(path)) from exc
    if not kept:
        return pd.DataFrame({c: pd.Series([], dtype="string") for c in columns[1:]}
                            | {"ts": pd.Series([], dtype="float64")})
    table = pa.concat_tables(kept).to_pandas()
    ts = pd.to_numeric(table["timestamp"], errors="coerce")
    if ts.isna().any():  # an unknown time cannot say which value is the latest
        i = int(np.flatnonzero(ts.isna().to_numpy())[0])
        raise DataError("unparsable timestamp (expected epoch milliseconds)", path=str(path),
                        row=int(table["row"].iloc[i]), column="timestamp",
                        value=table["timestamp"].iloc[i])
    return table[columns[1:]].assign(ts=ts.to_numpy())
