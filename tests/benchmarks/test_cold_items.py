"""New items placed by their attributes alone (benchmarks/cold_items.py), on a catalog of
families with a known answer: shoppers keep to one family, and an item's family is one of its
attributes."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from benchmarks.cold_items import (
    ColdBenchConfig,
    hold_out_items,
    measure,
    random_metrics,
    rank_metrics,
)
from benchmarks.common import DataSet
from features.readers import read_events
from features.spec import parse_spec

FAMILIES, PER_FAMILY = 20, 10


def family_shop(folder: Path, seed: int = 0) -> DataSet:
    """Items 1..200 in 20 families of 10 (attribute 1000 + family, plus a shared one, 7);
    each of 400 shoppers buys 6 items of one family."""
    rng = np.random.default_rng(seed)
    lines = []
    for u in range(400):
        family = u % FAMILIES
        items = rng.choice(PER_FAMILY, size=6, replace=False) + 1 + family * PER_FAMILY
        lines.append(" ".join([f"u{u}", *map(str, items)]))
    path = folder / "Shop.txt"
    path.write_text("\n".join(lines) + "\n")
    attributes = {str(i): [1000 + (i - 1) // PER_FAMILY, 7]
                  for i in range(1, FAMILIES * PER_FAMILY + 1)}
    (folder / "Shop_item2attributes.json").write_text(json.dumps(attributes))
    return DataSet("Shop", f"seq:{path}", "leave-one-out")


def test_rank_metrics_and_random_have_known_answers() -> None:
    scores = np.array([[0.9, 0.5, 0.1], [0.2, 0.3, 0.4], [0.5, 0.5, 0.5]])
    got = rank_metrics(scores, np.array([0, 0, 1]))
    # ranks 0, 2 and (ties count against the target) 2
    assert got["hr@10"] == 1.0
    assert got["ndcg@10"] == pytest.approx((1 + 2 * (1 / np.log2(4))) / 3)
    assert random_metrics(40)["hr@10"] == 0.25
    assert random_metrics(5)["hr@20"] == 1.0


def test_hold_out_removes_every_event_of_the_new_items(tmp_path: Path) -> None:
    ds = family_shop(tmp_path)
    held = hold_out_items(ds, tmp_path / "held", share=0.2, seed=0)
    new = set(held.new_items["item_id"])
    assert len(new) == 40
    seen = read_events(parse_spec(held.spec)).events
    assert not seen["item_id"].isin(new).any()
    assert set(held.targets["item_id"]) <= new and len(held.targets) > 20
    assert "attributes" in held.new_items.columns


@pytest.mark.slow
def test_new_items_land_in_their_family(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TAILOR_CACHE", str(tmp_path / "cache"))
    ds = family_shop(tmp_path)
    # all 10 epochs: a shopper's next item is any of the family's other items, so validation
    # here is flat from the first epoch on (NDCG@10 0.12-0.13), and early stopping on its noise
    # once ended a run after epoch 1, before the attributes had been learned (HR@10 0.73)
    cfg = replace(ColdBenchConfig(), share=0.2,
                  train_args="--dim 16 --epochs 10 --patience 10 --item-id-dropout 0.3 "
                             "--valid-users 100 --stack-users 100")
    result = measure(ds, cfg)
    methods = result["methods"]
    chance = methods["random"]["hr@10"]
    assert chance == pytest.approx(0.25)
    # two new items per family: knowing the family puts the target in the top 10, and the
    # towers know it from the newest item's attributes (0.71 before the newest item's vector)
    assert methods["shopper's attributes"]["hr@10"] > 0.9
    assert methods["towers (attributes only)"]["hr@10"] > 0.9
    assert result["new_items_with_attributes"] == 1.0
