"""The data spec string (``DATA=...``) every make target takes, parsed into a frozen setting.

Forms:
  synthetic[:small|medium|large]
  events:PATH[?key=value&key=value...]      CSV, CSV.gz or Parquet in canonical columns
  retailrocket:DIR
  seq:PATH                                  ``user item item ...`` lines, oldest first
  store:[URL][?base=PATH]                   the event store (features/event_store.py): the
                                            default one, or the SQLAlchemy URL given; ``base``:
                                            a canonical events file read beneath it

Reader options may be spelled in the spec (after ``?``, joined by ``&``) or given as flags; a
flag wins over the spec. Keys: user, item, event, timestamp, session, split, price, quantity,
category (column names), map (``click=view,cart=addtocart,buy=purchase``), items (path of an
item metadata file), on_bad_rows (``error`` or ``skip``).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

from features.infra import DataError
from features.schema import EVENT_TYPES

KINDS = ("synthetic", "events", "retailrocket", "seq", "store")
SYNTHETIC_SIZES = ("small", "medium", "large")
COLUMN_KEYS = ("user", "item", "event", "timestamp", "session", "split", "price", "quantity",
               "category")
OPTION_KEYS = COLUMN_KEYS + ("map", "items", "on_bad_rows", "base")


@dataclass(frozen=True)
class ReadOptions:
    """How to read one source. Column overrides map canonical name -> name in the file."""

    columns: dict[str, str] = field(default_factory=dict)
    event_map: dict[str, str] = field(default_factory=dict)
    items_path: str | None = None
    on_bad_rows: str = "error"
    base_path: str | None = None     # store: a canonical events file beneath the stored events

    def __hash__(self) -> int:  # dict fields: hash the sorted items so settings can key caches
        return hash((tuple(sorted(self.columns.items())), tuple(sorted(self.event_map.items())),
                     self.items_path, self.on_bad_rows, self.base_path))


@dataclass(frozen=True)
class DataSpec:
    kind: str
    path: str | None = None          # file or folder for events/retailrocket/seq
    size: str = "small"              # synthetic only
    options: ReadOptions = field(default_factory=ReadOptions)
    text: str = ""                   # the spec as the user wrote it (for logs and cache keys)

    @property
    def name(self) -> str:
        """A short data-set name, used for MLflow experiments and file names."""
        if self.kind == "synthetic":
            return f"synthetic-{self.size}"
        if self.kind == "store":
            return "store"
        base = Path(self.path or "data").name
        for suffix in (".gz", ".csv", ".parquet", ".txt", ".tsv"):
            base = base.removesuffix(suffix)
        if base in ("interactions", "events") and self.path:
            base = f"{Path(self.path).parent.name}-{base}"
        return f"{self.kind}-{base}"


def parse_event_map(text: str, *, where: str = "map") -> dict[str, str]:
    """``click=view,cart=addtocart`` -> {'click': 'view', 'cart': 'addtocart'}."""
    mapping: dict[str, str] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        if "=" not in part:
            raise DataError(f"{where}: expected name=canonical, got {part!r}")
        raw, canonical = (s.strip() for s in part.split("=", 1))
        if canonical not in EVENT_TYPES:
            raise DataError(f"{where}: '{raw}' maps to unknown event '{canonical}'; "
                            f"canonical events are {', '.join(EVENT_TYPES)}")
        mapping[raw.lower()] = canonical
    return mapping


def _options_from_pairs(pairs: dict[str, str], spec_text: str) -> ReadOptions:
    columns: dict[str, str] = {}
    event_map: dict[str, str] = {}
    items_path = base_path = None
    on_bad_rows = "error"
    for key, value in pairs.items():
        if key in COLUMN_KEYS:
            columns[key] = value
        elif key == "map":
            event_map = parse_event_map(value, where=f"data spec {spec_text!r}")
        elif key == "items":
            items_path = value
        elif key == "base":
            base_path = value
        elif key == "on_bad_rows":
            if value not in ("error", "skip"):
                raise DataError(f"data spec {spec_text!r}: on_bad_rows must be 'error' or 'skip', "
                                f"got {value!r}")
            on_bad_rows = value
        else:
            raise DataError(f"data spec {spec_text!r}: unknown option {key!r}; "
                            f"known: {', '.join(OPTION_KEYS)}")
    return ReadOptions(columns=columns, event_map=event_map, items_path=items_path,
                       on_bad_rows=on_bad_rows, base_path=base_path)


def parse_spec(text: str) -> DataSpec:
    """Parse ``DATA=...``. Raises DataError with a one-line message on anything malformed."""
    text = text.strip()
    if not text:
        raise DataError("empty data spec; try DATA=synthetic or DATA=events:PATH")
    kind, _, rest = text.partition(":")
    if kind not in KINDS:
        raise DataError(f"data spec {text!r}: unknown kind {kind!r}; known: {', '.join(KINDS)}")
    if kind == "synthetic":
        size = rest or "small"
        if size not in SYNTHETIC_SIZES:
            raise DataError(f"data spec {text!r}: synthetic size must be one of "
                            f"{', '.join(SYNTHETIC_SIZES)}, got {size!r}")
        return DataSpec(kind="synthetic", size=size, text=text)
    path, _, query = rest.partition("?")
    if not path and kind == "store":
        path = ""   # the default store
    elif not path:
        raise DataError(f"data spec {text!r}: missing path after '{kind}:'")
    pairs: dict[str, str] = {}
    for part in filter(None, query.split("&")):
        key, sep, value = part.partition("=")
        if not sep:
            raise DataError(f"data spec {text!r}: option {part!r} needs key=value")
        pairs[key.strip()] = value.strip()
    options = _options_from_pairs(pairs, text)
    if options.base_path and kind != "store":
        raise DataError(f"data spec {text!r}: option 'base' is for store: specs only")
    return DataSpec(kind=kind, path=path, options=options, text=text)


def with_overrides(spec: DataSpec, *, columns: dict[str, str] | None = None,
                   event_map: dict[str, str] | None = None, items_path: str | None = None,
                   on_bad_rows: str | None = None) -> DataSpec:
    """Apply command-line flags on top of what the spec said; flags win."""
    opts = spec.options
    opts = replace(
        opts,
        columns={**opts.columns, **(columns or {})},
        event_map={**opts.event_map, **(event_map or {})},
        items_path=items_path or opts.items_path,
        on_bad_rows=on_bad_rows or opts.on_bad_rows,
    )
    return replace(spec, options=opts)
