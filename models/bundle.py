"""The trained bundle: everything serving needs to rebuild exactly what was trained.

A bundle is a folder:
  bundle.json             configs (features, model, training), data fingerprint, metrics, versions
  model.pt                TwoTower state_dict
  item_vocab.parquet      raw item id of each row
  items.parquet           per item row: metadata, category rows, availability, popularity
  item_vectors.npy        normalized item vectors (rows as in item_vocab)
  bought_together.parquet item_id, other_item_id, score, pair_users, rank
  histories.parquet       each known shopper's most recent L known-item events (user_id,
                          item_row, event_code, ts_ms), i.e. ``features.history.Histories``:
                          the stored history the service appends a request's events to
  index.faiss, index.json the FAISS index over item_vectors (models/index.py), written with the
                          bundle; serving loads it (built at load when missing)
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from functools import cached_property
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import torch

from features.history import Histories, build_histories, data_end_ms, histories_from_rows
from features.infra import DataError, atomic_path
from features.pipeline import Prepared
from features.split import sort_events
from features.vocab import Vocabulary
from models.base import Recommender
from models.blend import BlendWeights, load_sources, save_sources
from models.index import DEFAULT_CONFIG, INDEX_FILE, IndexConfig, ItemIndex
from models.index_build import build_index
from models.scoring import compute_item_vectors, recommender_for
from models.two_tower import TwoTower, TwoTowerConfig

# 2: histories.parquet holds Histories (item rows, event codes, ms); 1: raw events (read too).
BUNDLE_VERSION = 2
# Model settings added after bundles were already saved, with the behaviour those bundles were
# trained with (a bundle that lacks the key predates the setting).
TRAINED_BEFORE = {"mask_padding": False, "newest_item": False, "recency": False,
                  "attention_recency": False}
# Model settings since removed: a bundle trained with the first value is served as it was trained
# only by the release that had it. (``newest``: the pooling tower added the newest event's id row
# to the pooled history, replaced by ``newest_item`` on 2026-12-03.)
REMOVED = {"newest": False}
FILES = ("bundle.json", "model.pt", "item_vocab.parquet", "items.parquet", "item_vectors.npy",
         "bought_together.parquet", "histories.parquet")


@dataclass(eq=False)
class Bundle:
    model: TwoTower
    item_vocab: Vocabulary
    items: pd.DataFrame
    item_vectors: np.ndarray
    bought_together: pd.DataFrame
    # Each shopper's last L known-item events, ages measured from ``now_ms``.
    histories: Histories
    now_ms: int | None        # 1 ms after the newest event the model knows; None without time
    # The ranking stack's sparse signals and their weights (models/blend.py); none: towers only.
    sources: dict = field(default_factory=dict)
    blend: BlendWeights | None = None
    info: dict = field(default_factory=dict)   # configs, data fingerprint, metrics, timings
    path: Path | None = None
    index: ItemIndex | None = None             # the FAISS index written by ``save``

    @cached_property
    def recommender(self) -> Recommender:
        # recommender_for, like evaluation: the bundle ranks exactly as the logged metrics say.
        # ``items`` holds every item_features column, in vocabulary order.
        return recommender_for(self.model, self.items, self.sources, self.blend)

    @property
    def now(self) -> pd.Timestamp | None:
        """The end of the data the model knows: "now" for the stored histories' ages."""
        return None if self.now_ms is None else pd.Timestamp(self.now_ms, unit="ms", tz="UTC")

    def save(self, folder: str | Path, index_config: IndexConfig = DEFAULT_CONFIG) -> Path:
        folder = Path(folder)
        with atomic_path(folder) as tmp:   # replaces ``folder`` only once the bundle is complete
            self._write(tmp, index_config)
        self.path = folder
        return folder

    def _write(self, tmp: Path, index_config: IndexConfig) -> None:
        tmp.mkdir()
        info = {**self.info, "bundle_version": BUNDLE_VERSION, "now_ms": self.now_ms,
                "model": self.model.cfg.to_dict(),
                "blend": self.blend.to_dict() if self.blend is not None else None}
        (tmp / "bundle.json").write_text(json.dumps(info, indent=2, default=str))
        torch.save(self.model.state_dict(), tmp / "model.pt")
        self.item_vocab.to_frame().to_parquet(tmp / "item_vocab.parquet", index=False)
        self.items.to_parquet(tmp / "items.parquet", index=False)
        np.save(tmp / "item_vectors.npy", self.item_vectors)
        self.bought_together.to_parquet(tmp / "bought_together.parquet", index=False)
        write_histories(self.histories, tmp / "histories.parquet")
        if self.sources:
            save_sources(self.sources, tmp / "sources")
        # The index travels inside the bundle (and so inside the logged MLflow model).
        self.index = save_index(tmp, self.item_vectors, index_config)

    def item_index(self, cfg: IndexConfig = DEFAULT_CONFIG) -> tuple[ItemIndex, str]:
        """The saved FAISS index (searched with ``cfg``'s threads), or one built now when the
        bundle has none that matches its item vectors; and which of the two it is."""
        return load_index(self.path, self.item_vectors, cfg)

    @classmethod
    def load(cls, folder: str | Path) -> Bundle:
        folder = Path(folder)
        missing = [f for f in FILES if not (folder / f).exists()]
        if missing:
            raise DataError(f"not a Tailor bundle (missing {', '.join(missing)})",
                            path=str(folder))
        info = json.loads((folder / "bundle.json").read_text())
        model = TwoTower(model_config(info["model"], folder))
        model.load_state_dict(torch.load(folder / "model.pt", weights_only=True))
        model.eval()
        vocab = Vocabulary.from_frame(pd.read_parquet(folder / "item_vocab.parquet"))
        blend = BlendWeights(**info["blend"]) if info.get("blend") else None
        sources = load_sources(folder / "sources", vocab) if (folder / "sources").exists() else {}
        histories, now_ms = read_histories(folder / "histories.parquet", vocab,
                                           model.cfg.history_len, info.get("now_ms"))
        return cls(model=model,
                   item_vocab=vocab,
                   items=pd.read_parquet(folder / "items.parquet"),
                   item_vectors=np.load(folder / "item_vectors.npy"),
                   bought_together=pd.read_parquet(folder / "bought_together.parquet"),
                   histories=histories, now_ms=now_ms, sources=sources, blend=blend,
                   info=info, path=folder)


def model_config(saved: dict, folder: Path) -> TwoTowerConfig:
    """The model settings a bundle was trained with: settings added since it was saved take the
    value it was trained with; one it used and this release no longer has is refused."""
    saved = dict(saved)
    for name, harmless in REMOVED.items():
        value = saved.pop(name, harmless)
        if value != harmless:
            raise DataError(f"the model was trained with the setting '{name}' = {value!r}, which "
                            "this release no longer has: retrain it (make train)",
                            path=str(folder / "bundle.json"))
    return TwoTowerConfig(**{**TRAINED_BEFORE, **saved})


def build_bundle(prepared: Prepared, model: TwoTower, info: dict | None = None,
                 sources: dict | None = None, blend: BlendWeights | None = None) -> Bundle:
    """The bundle of ``model`` trained on ``prepared``, for serving.

    Items are ``prepared.item_features`` (vocabulary order) with the metadata columns of
    ``prepared.items`` beside them. Histories come from every event, test window included:
    evaluation hides the test window, serving knows everything that happened.
    """
    feats = prepared.item_features
    extra = [c for c in prepared.items.columns if c not in feats.columns]
    meta = prepared.items[["item_id", *extra]].drop_duplicates("item_id", keep="last")
    items = feats.merge(meta, on="item_id", how="left", validate="one_to_one")  # keeps order
    histories, now_ms = stored_histories(sort_events(prepared.events), prepared.item_vocab,
                                         prepared.config.history_len)
    return Bundle(model=model.eval(), item_vocab=prepared.item_vocab, items=items,
                  item_vectors=compute_item_vectors(model, feats),
                  bought_together=prepared.bought_together,
                  histories=histories, now_ms=now_ms,
                  sources={n: sources[n] for n in blend.active} if blend and sources else {},
                  blend=blend,
                  info={"features": prepared.config.to_dict(), "data": prepared.meta,
                        **(info or {})})


def stored_histories(events: pd.DataFrame, vocab: Vocabulary,
                     max_len: int) -> tuple[Histories, int | None]:
    """Each shopper's last ``max_len`` known-item events of ``events`` (sorted), and the end of
    the data (1 ms after its newest event, unknown items included) that their ages count from."""
    now_ms = data_end_ms(events["timestamp"])
    now = None if now_ms is None else pd.Timestamp(now_ms, unit="ms", tz="UTC")
    return build_histories(events, vocab, max_len=max_len, now=now), now_ms


def write_histories(hist: Histories, path: Path) -> None:
    pd.DataFrame({
        "user_id": pd.array(np.repeat(hist.user_ids, hist.lengths), dtype="string"),
        "item_row": hist.item_idx, "event_code": hist.event_code, "ts_ms": hist.ts_ms,
    }).to_parquet(path, index=False)


def read_histories(path: Path, vocab: Vocabulary, max_len: int,
                   now_ms: int | None) -> tuple[Histories, int | None]:
    """The stored histories, ages as of ``now_ms``. A version-1 bundle stored raw events: they
    are built into histories here, so models registered before still serve."""
    if "item_id" in pq.read_schema(path).names:   # version 1
        table = pd.read_parquet(path)
        events = sort_events(table.assign(seq=np.arange(len(table), dtype=np.int64)))
        return stored_histories(events, vocab, max_len)
    # The user id repeats on every event: read as a dictionary (one string per shopper, a code
    # per event), not one Python string per event (for 1M shoppers, 4.2 GB instead of ~1).
    table = pq.read_table(path, read_dictionary=["user_id"])
    users = table.column("user_id").combine_chunks()
    codes = users.indices.to_numpy(zero_copy_only=False).astype(np.int64)

    def column(name: str, dtype: type) -> np.ndarray:
        return table.column(name).to_numpy().astype(dtype, copy=False)

    hist = histories_from_rows(codes, column("item_row", np.int64),
                               column("event_code", np.int8), column("ts_ms", np.int64),
                               now_ms=now_ms)
    ids = np.asarray(users.dictionary.to_pylist(), dtype=object)
    return replace(hist, user_ids=ids[hist.user_ids]), now_ms


# --- the index inside a bundle folder ------------------------------------------------------------
# Built once at training time and saved with the bundle (``Bundle.save``), so it is part of the
# logged MLflow model; serving loads it. A bundle without one (or with one that does not match
# its item vectors) gets it built in memory at load time; logged artifacts are never written to.

def save_index(bundle_dir: str | Path, item_vectors: np.ndarray,
               cfg: IndexConfig = DEFAULT_CONFIG) -> ItemIndex:
    """Build the index over ``item_vectors`` (recall gate included) into ``bundle_dir``."""
    index = build_index(item_vectors, cfg)
    index.save(bundle_dir)
    return index


def load_index(bundle_dir: str | Path | None, item_vectors: np.ndarray,
               cfg: IndexConfig = DEFAULT_CONFIG) -> tuple[ItemIndex, str]:
    """The bundle's index and where it came from: ``"bundle"`` or ``"built at load"``."""
    n, dim = item_vectors.shape
    if bundle_dir is not None and (Path(bundle_dir) / INDEX_FILE).is_file():
        try:
            index = ItemIndex.load(bundle_dir, threads=cfg.threads)
        except DataError:  # unreadable: rebuilding is cheaper than refusing to serve
            index = None
        if index is not None and (index.n_items, index.dim) == (n, dim):
            return index, "bundle"
    return build_index(item_vectors, cfg), "built at load"
