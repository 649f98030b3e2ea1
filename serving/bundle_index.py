"""The FAISS index of a bundle: built once at training time and saved inside the bundle folder
(``index.faiss`` + ``index.json``), so the index is part of the logged MLflow model; serving
loads it. A bundle without one (or with one that does not match its item vectors) gets the
index built in memory at load time; logged artifacts are never written to.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from features.schema import DataError
from serving.index import INDEX_FILE, IndexConfig, ItemIndex, build_index

DEFAULT_CONFIG = IndexConfig()


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
