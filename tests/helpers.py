"""Test helpers: small hand-written event tables with answers worked out by hand, a throw-away
MLflow store, the registry's aliases."""

from __future__ import annotations

import functools
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from features.config import FeatureConfig
from features.history import Histories
from features.pipeline import Prepared, build
from features.schema import EVENT_DTYPE, TIMESTAMP_DTYPE
from features.spec import DataSpec
from features.synthetic import ShopTruth, generate_with_truth


def make_events(rows: list[tuple], *, with_time: bool = True, **extra: list) -> pd.DataFrame:
    """rows: (user_id, item_id, event[, 'YYYY-MM-DD HH:MM'])  ->  canonical frame, seq = order."""
    users = [r[0] for r in rows]
    items = [r[1] for r in rows]
    events = [r[2] for r in rows]
    if with_time:
        ts = pd.to_datetime([r[3] for r in rows], utc=True).astype(TIMESTAMP_DTYPE)
    else:
        ts = pd.Series(pd.NaT, index=range(len(rows)), dtype=TIMESTAMP_DTYPE)
    frame = pd.DataFrame({
        "user_id": pd.array(users, dtype="string"),
        "item_id": pd.array(items, dtype="string"),
        "event": pd.Categorical(events, dtype=EVENT_DTYPE),
        "timestamp": pd.Series(ts).reset_index(drop=True),
        "seq": pd.Series(range(len(rows)), dtype="int64"),
    })
    for name, values in extra.items():
        frame[name] = values
    return frame


@contextmanager
def isolated_store(root: Path) -> Iterator[Path]:
    """A throw-away MLflow store and data cache under ``root`` for a block of tests."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root}/mlflow.db")
        mp.setenv("TAILOR_CACHE", str(root / "cache"))
        mp.delenv("RANK", raising=False)
        # configure() sets MLflow's process-wide URI; put it back for the tests after these.
        mp.setattr("mlflow.tracking._tracking_service.utils._tracking_uri", None, raising=False)
        yield root


def aliases(client) -> dict[str, int]:
    """The registered model ``tailor``'s aliases -> version numbers."""
    return {k: int(v) for k, v in client.get_registered_model("tailor").aliases.items()}


def one_event_histories(n: int) -> Histories:
    """``n`` shoppers ``u0..``, each with one view of the item at their own row, just now."""
    return Histories(np.array([f"u{i}" for i in range(n)], dtype=object),
                     np.arange(n + 1, dtype=np.int64), np.arange(n, dtype=np.int64),
                     np.zeros(n, np.int8), np.zeros(n, np.float32), np.zeros(n, np.int32),
                     np.zeros(n, np.int64))


def history_events(hist: Histories, item_ids: np.ndarray) -> pd.DataFrame:
    """Histories back as canonical event rows (``item_ids``: the raw id of each item row), so a
    test can rebuild them with ``build_histories`` or feed them to batch scoring."""
    return pd.DataFrame({
        "user_id": pd.array(np.repeat(hist.user_ids, hist.lengths), dtype="string"),
        "item_id": pd.array(item_ids[hist.item_idx], dtype="string"),
        "event": pd.Categorical.from_codes(hist.event_code, dtype=EVENT_DTYPE),
        "timestamp": pd.Series(hist.ts_ms.view("datetime64[ms]")).dt.tz_localize("UTC")
                       .astype(TIMESTAMP_DTYPE),
        "seq": np.arange(len(hist.item_idx), dtype=np.int64),
    })


@functools.cache
def small_shop() -> tuple[Prepared, ShopTruth]:
    """The embedded shop (small, seed 0), prepared with default settings, and its planted truth."""
    data, truth = generate_with_truth("small", seed=0)
    spec = DataSpec(kind="synthetic", size="small", text="synthetic:small")
    return build(spec, FeatureConfig(), data, "synthetic-small-0"), truth
