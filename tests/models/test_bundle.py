"""models/bundle.py: the stored histories survive a save and load, and a bundle of the first
format (raw events in histories.parquet) still loads into the same histories."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd

from features.history import NAT_MS
from models.bundle import Bundle
from tests.helpers import history_events

FIELDS = ("user_ids", "offsets", "item_idx", "event_code", "age_days", "steps_back", "ts_ms")


def test_stored_histories_round_trip(tiny_bundle: Path, tmp_path: Path) -> None:
    bundle = Bundle.load(tiny_bundle)
    h = bundle.histories
    assert len(h) > 100 and h.lengths.min() >= 1
    assert h.lengths.max() <= bundle.model.cfg.history_len
    assert (h.item_idx >= 0).all() and (h.ts_ms != NAT_MS).all()
    # ages are measured from the end of the data, 1 ms after the newest stored event
    assert bundle.now_ms == h.ts_ms.max() + 1
    np.testing.assert_allclose(h.age_days, (bundle.now_ms - h.ts_ms) / 86_400_000, rtol=1e-6)
    again = Bundle.load(bundle.save(tmp_path / "again"))
    assert again.now_ms == bundle.now_ms
    for name in FIELDS:
        np.testing.assert_array_equal(getattr(again.histories, name), getattr(h, name))


def test_a_version_1_bundle_still_loads(tiny_bundle: Path, tmp_path: Path) -> None:
    """Version 1 kept each shopper's last L raw events (item ids, event names, timestamps)."""
    new = Bundle.load(tiny_bundle)
    old = tmp_path / "v1"
    shutil.copytree(tiny_bundle, old)
    raw = history_events(new.histories, new.item_vocab.ids).drop(columns="seq")
    # v1 also kept events of items the model does not know: they must be left out again
    ghost = raw.iloc[:3].assign(item_id=pd.array(["gone-1", "gone-2", "gone-3"], dtype="string"))
    pd.concat([raw, ghost], ignore_index=True).to_parquet(old / "histories.parquet", index=False)
    info = json.loads((old / "bundle.json").read_text())
    del info["now_ms"]
    info["bundle_version"] = 1
    (old / "bundle.json").write_text(json.dumps(info))
    loaded = Bundle.load(old)
    assert loaded.now_ms == new.now_ms
    for name in FIELDS:
        np.testing.assert_array_equal(getattr(loaded.histories.of(new.histories.user_ids), name),
                                      getattr(new.histories, name), err_msg=name)
