"""Raw events -> validated events -> split, vocabulary, item features, bought-together: cached.

``prepare(spec, cfg)`` is the one entry point training, batch scoring and the benchmarks use.
The processed data set is cached as Parquet under ``$TAILOR_CACHE`` (default ``.cache/tailor``)
in a folder keyed by the data's content hash, the spec and the settings, so a second run with
the same inputs reads it back instead of redoing the work. Nothing is written until every stage
has passed, and the folder appears atomically.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pandas as pd

from features.config import SERVING_SPLIT, FeatureConfig
from features.cooccur import bought_together
from features.history import Histories, build_histories
from features.infra import DataError, atomic_path, cache_root
from features.item_features import item_features
from features.schema import EVENT_TYPES, EventData
from features.spec import DataSpec
from features.split import Split, make_split
from features.vocab import Vocabulary

FEATURES_VERSION = "3"  # bump when any stage's output changes, so old caches are not reused
TABLES = ("events", "items", "targets", "item_vocab", "item_features", "bought_together")


@dataclass(frozen=True, eq=False)
class Prepared:
    spec: DataSpec
    config: FeatureConfig
    split: Split
    items: pd.DataFrame               # item metadata as read
    item_vocab: Vocabulary            # items of the train fold
    item_features: pd.DataFrame       # one row per item_vocab row
    bought_together: pd.DataFrame     # from every event before the test window
    has_time: bool
    meta: dict = field(default_factory=dict)

    @property
    def events(self) -> pd.DataFrame:
        return self.split.events

    @property
    def targets(self) -> pd.DataFrame:
        return self.split.targets

    @property
    def ordered(self) -> bool:
        """Whether each shopper's event order means something (time, or file order) rather than
        a predefined split's unordered rows; the refit keeps the evaluation's reading."""
        protocol = self.split.protocol
        if protocol == SERVING_SPLIT:
            return self.has_time or "split" not in self.events.columns
        return self.has_time or protocol != "predefined"

    def histories(self, fold: str, users: object = None, *, item_vocab: Vocabulary | None = None,
                  max_len: int | None = None) -> Histories:
        """Inputs for ``fold``'s targets (valid: train events; test: train + valid events).

        ``item_vocab`` / ``max_len``: another model's vocabulary and history length (default:
        this data set's), to score that model on these shoppers."""
        cut = {"valid": self.split.valid_start, "test": self.split.test_start}[fold]
        return build_histories(self.split.history_for(fold), item_vocab or self.item_vocab,
                               max_len=max_len or self.config.history_len, cut=cut, users=users)


def source_files(spec: DataSpec) -> list[Path]:
    """The files whose bytes define the data (for the fingerprint)."""
    if spec.kind == "synthetic":
        return []
    if spec.kind == "store":
        return [Path(p) for p in (spec.options.base_path, spec.options.items_path) if p]
    path = Path(spec.path or "")
    files = sorted(p for p in path.iterdir() if p.is_file()) if path.is_dir() else [path]
    if spec.kind == "seq":
        stem = path.name.removesuffix(".gz").removesuffix(".txt")
        files += sorted(path.parent.glob(f"{stem}_item2attributes.json*"))
    if spec.options.items_path:
        files.append(Path(spec.options.items_path))
    return files


def fingerprint(spec: DataSpec) -> str:
    """sha256 over the source bytes (or the generator's identity for synthetic data, or the
    event store's state), and the forgotten shoppers: forgetting one invalidates caches."""
    from features.readers import forgotten_shoppers  # local: keeps the import light

    digest = hashlib.sha256()
    forgotten = sorted(forgotten_shoppers())
    if forgotten:
        digest.update(("forgotten:" + ",".join(forgotten)).encode())
    if spec.kind == "store":
        digest.update(store_state(spec.path or None).encode())
    if spec.kind == "synthetic":
        from features import synthetic  # local: the generator is only needed for synthetic data

        digest.update(f"synthetic:{spec.size}:{synthetic.VERSION}".encode())
        return digest.hexdigest()
    for path in source_files(spec):
        if not path.exists():
            raise DataError("file not found", path=str(path))
        digest.update(path.name.encode())
        with path.open("rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def store_state(url: str | None) -> str:
    """What identifies the stored events (``EventStore.state``)."""
    from features.event_store import EventStore

    store = EventStore(url, create=False)
    try:
        return f"store:{store.safe_url}:{store.state()}"
    finally:
        store.close()


def cache_key(spec: DataSpec, cfg: FeatureConfig, data_hash: str) -> str:
    payload = {"kind": spec.kind, "size": spec.size, "options": asdict(spec.options),
               "config": cfg.to_dict(), "data": data_hash, "version": FEATURES_VERSION}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def build(spec: DataSpec, cfg: FeatureConfig, data: EventData, data_hash: str) -> Prepared:
    """The pure middle: validated events in, every derived table out."""
    split = make_split(data.events, data.has_time, cfg)
    train = split.fold("train")
    if train.empty:
        raise DataError(f"{spec.text}: no training events after the split")
    item_vocab = Vocabulary.fit(train["item_id"])
    history = split.history_for("test")
    feats = item_features(history, data.items, item_vocab, popularity_days=cfg.popularity_days,
                          cut=split.test_start)
    pairs = bought_together(history, cfg)
    meta = summarize(spec, cfg, data, split, item_vocab, pairs, data_hash)
    return Prepared(spec, cfg, split, data.items, item_vocab, feats, pairs, data.has_time, meta)


def summarize(spec: DataSpec, cfg: FeatureConfig, data: EventData, split: Split,
              item_vocab: Vocabulary, pairs: pd.DataFrame, data_hash: str) -> dict:
    ev = data.events
    counts = ev["event"].value_counts()
    ts = ev["timestamp"]
    return {
        "spec": spec.text, "name": spec.name, "data_hash": data_hash,
        "features_version": FEATURES_VERSION, "config": cfg.to_dict(),
        "users": int(ev["user_id"].nunique()), "items": int(ev["item_id"].nunique()),
        "events": len(ev), "events_by_type": {e: int(counts.get(e, 0)) for e in EVENT_TYPES},
        "has_time": data.has_time,
        "first_event": str(ts.min()) if data.has_time else None,
        "last_event": str(ts.max()) if data.has_time else None,
        "protocol": split.protocol,
        "valid_start": str(split.valid_start) if split.valid_start is not None else None,
        "test_start": str(split.test_start) if split.test_start is not None else None,
        "test_days": split.test_days, "dropped_test_rows": split.dropped_rows,
        "train_items": len(item_vocab), "bought_together_pairs": len(pairs),
        "bad_rows_skipped": data.report.total, "duplicates_dropped": data.report.duplicates_dropped,
        "report": data.report.lines(), **split.sizes(),
    }


def _save(prepared: Prepared, folder: Path) -> None:
    tables = {"events": prepared.events, "items": prepared.items,
              "targets": prepared.targets, "item_vocab": prepared.item_vocab.to_frame(),
              "item_features": prepared.item_features, "bought_together": prepared.bought_together}
    # Another process that finished the same data first keeps its folder.
    with atomic_path(folder, keep_existing=True) as tmp:
        tmp.mkdir()
        for name, frame in tables.items():
            frame.to_parquet(tmp / f"{name}.parquet", index=False)
        (tmp / "meta.json").write_text(json.dumps(prepared.meta, indent=2, default=str))


def _load(spec: DataSpec, cfg: FeatureConfig, folder: Path) -> Prepared:
    t = {name: pd.read_parquet(folder / f"{name}.parquet") for name in TABLES}
    meta = json.loads((folder / "meta.json").read_text())
    split = Split(meta["protocol"], t["events"], t["targets"],
                  pd.Timestamp(meta["valid_start"]) if meta["valid_start"] else None,
                  pd.Timestamp(meta["test_start"]) if meta["test_start"] else None,
                  meta["test_days"], meta["dropped_test_rows"])
    return Prepared(spec, cfg, split, t["items"], Vocabulary.from_frame(t["item_vocab"]),
                    t["item_features"], t["bought_together"], meta["has_time"],
                    {**meta, "cache": "hit"})


def prepare(spec: DataSpec, cfg: FeatureConfig | None = None, *,
            use_cache: bool = True) -> Prepared:
    """Read, validate, split and featurize ``spec``; read the cache when it has this exact input."""
    from features.readers import read_events  # local: keeps `import features.pipeline` light

    cfg = cfg or FeatureConfig()
    started = time.perf_counter()
    data_hash = fingerprint(spec)
    folder = cache_root() / f"{spec.name}-{cache_key(spec, cfg, data_hash)}"
    if use_cache and (folder / "meta.json").exists():
        prepared = _load(spec, cfg, folder)
        prepared.meta["seconds"] = round(time.perf_counter() - started, 3)
        return prepared
    data = read_events(spec)
    read_s = time.perf_counter() - started
    prepared = build(spec, cfg, data, data_hash)
    prepared.meta.update(cache="miss", read_seconds=round(read_s, 3),
                         seconds=round(time.perf_counter() - started, 3), cache_dir=str(folder))
    if use_cache:
        _save(prepared, folder)
    return prepared
