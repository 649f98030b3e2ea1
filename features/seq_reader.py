"""The ``seq:`` data kind: ``user item item ...`` lines, oldest first (the S3-Rec Amazon files),
each item a purchase without a timestamp, and the ``<stem>_item2attributes.json`` beside them as
item attributes."""

from __future__ import annotations

import gzip
import json
from itertools import chain
from pathlib import Path

import numpy as np
import pandas as pd

from features.infra import DataError
from features.readers import require_file
from features.schema import (
    EVENT_DTYPE,
    EVENT_TYPES,
    TIMESTAMP_DTYPE,
    BadRowReport,
    EventData,
    empty_items,
)
from features.spec import ReadOptions


def read_seq(path: str | Path, options: ReadOptions, *, source: str = "") -> EventData:
    """One user per line, items oldest first; each item is a purchase with no timestamp.

    seq is the global position, so within a user the order is the line order. The same item
    twice on a line is two purchases at different positions, so nothing is de-duplicated.
    """
    path = require_file(path)
    opener = gzip.open if path.name.endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8") as handle:
        lines = handle.read().split("\n")
    if lines and lines[-1] == "":
        lines.pop()  # the newline that ends the last line
    if not any(line.strip() for line in lines):
        raise DataError("no events (the file is empty)", path=str(path))
    tokens = [line.split() for line in lines]
    lengths = np.fromiter(map(len, tokens), dtype=np.int64, count=len(tokens))
    counts, examples = {}, {}
    for reason, mask in (("empty line", lengths == 0), ("user with no items", lengths == 1)):
        if not mask.any():
            continue
        where = np.flatnonzero(mask)
        if options.on_bad_rows != "skip":
            first = int(where[0])
            raise DataError(f"{reason} (expected 'user_id item_id item_id ...')",
                            path=str(path), row=first + 1,
                            value=lines[first].strip() if reason != "empty line" else None)
        counts[reason] = len(where)
        examples[reason] = [f"row {i + 1}: {reason}" for i in where[:3]]
    good = lengths >= 2
    users = np.repeat(np.array([t[0] for t, ok in zip(tokens, good, strict=True) if ok],
                               dtype=object), lengths[good] - 1)
    items = list(chain.from_iterable(t[1:] for t in tokens if len(t) >= 2))
    n = len(items)
    events = pd.DataFrame({
        "user_id": pd.array(users, dtype="string"),
        "item_id": pd.array(items, dtype="string"),
        "event": pd.Categorical.from_codes(np.full(n, EVENT_TYPES.index("purchase")),
                                           dtype=EVENT_DTYPE),
        "timestamp": pd.Series(pd.NaT, index=range(n), dtype=TIMESTAMP_DTYPE),
        "seq": np.arange(n, dtype=np.int64),
    })
    return EventData(events, read_attributes(path), source, False,
                     BadRowReport(counts, examples))


def read_attributes(seq_path: Path) -> pd.DataFrame:
    """``<stem>_item2attributes.json(.gz)`` beside a seq file -> item_id, attributes.

    attributes is a space-joined string of attribute ids ("12 7 301"): plain string dtype,
    Parquet-friendly and hashable (lists are neither for pandas de-duplication). The ids say
    nothing about which one is a category, so category_id is left absent.
    """
    stem = seq_path.name.removesuffix(".gz").removesuffix(".txt")
    for name in (f"{stem}_item2attributes.json", f"{stem}_item2attributes.json.gz"):
        found = seq_path.parent / name
        if found.exists():
            break
    else:
        return empty_items()
    opener = gzip.open if found.name.endswith(".gz") else open
    try:
        with opener(found, "rt", encoding="utf-8") as handle:
            table = json.load(handle)
    except (json.JSONDecodeError, UnicodeDecodeError, OSError) as exc:
        raise DataError(f"not a readable JSON file ({exc})", path=str(found)) from exc
    if not isinstance(table, dict) or not all(isinstance(v, list) for v in table.values()):
        raise DataError('expected a JSON object {"item_id": [attribute ids]}', path=str(found))
    return pd.DataFrame({
        "item_id": pd.array(list(table), dtype="string"),
        "attributes": pd.array([" ".join(map(str, v)) for v in table.values()], dtype="string"),
    })
