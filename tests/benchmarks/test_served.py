"""The served path, scored from outside the training code: cut the embedded shop's log at a day,
`make train` on the part before it, `make recommend-batch`, and score what shoppers carted and
bought after the cut (benchmarks/served.py)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from benchmarks.served import SERVED, baseline_recs, hold_out, measure_served, score
from features.spec import parse_spec
from models.bundle import Bundle


def test_score_has_a_known_answer() -> None:
    recs = pd.DataFrame({"user_id": ["a", "a", "a", "b", "b"],
                         "item_id": ["x", "y", "z", "x", "y"], "rank": [1, 2, 3, 1, 2]})
    targets = pd.DataFrame({"user_id": ["a", "a", "b", "c"], "item_id": ["y", "q", "z", "x"]})
    got = score(recs, targets, ks=(1, 2))
    # a: y at rank 2 of targets {y, q}; b: z not in its list; c: no list at all
    assert got["hr@1"] == 0.0
    assert got["hr@2"] == pytest.approx(1 / 3)
    assert got["recall@2"] == pytest.approx((1 / 2) / 3)
    ideal = 1 + 1 / 1.5849625007211562
    assert got["ndcg@2"] == pytest.approx((1 / 1.5849625007211562) / ideal / 3)


def test_hold_out_keeps_what_came_after_the_cut_out(tmp_path: Path) -> None:
    held = hold_out(parse_spec("synthetic"), tmp_path, days=3)
    cut = pd.Timestamp(held.cut)
    assert held.seen["timestamp"].max() < cut
    written = pd.read_csv(tmp_path / "events.csv")
    assert len(written) == len(held.seen)
    assert set(held.targets["item_id"]) <= set(held.seen["item_id"])
    assert len(held.new_items) > 0


@pytest.mark.slow
def test_served_model_beats_every_baseline_after_the_cut(tmp_path: Path) -> None:
    result = measure_served(parse_spec("synthetic"), tmp_path)
    methods = result["methods"]
    served = methods[SERVED]
    for name, values in methods.items():
        if name == SERVED:
            continue
        for metric in ("hr@10", "ndcg@10", "recall@20"):
            assert served[metric] > values[metric], (name, metric, served, values)
    # items that first appeared in the last days before the cut are known and recommended
    bundle = Bundle.load(result["bundle"])
    held_new = set(hold_out(parse_spec("synthetic"), tmp_path / "again").new_items)
    assert held_new and held_new <= set(bundle.item_vocab.ids)
    assert result["new_items_recommended"] > 0


def test_a_predefined_split_holds_its_test_purchases_out(tmp_path: Path) -> None:
    rows = []
    for u in range(20):
        rows += [(f"u{u}", f"i{(u + j) % 15}", "view", "train") for j in range(5)]
        rows += [(f"u{u}", f"i{(u + j) % 15}", "buy", "train") for j in (5, 6)]
        rows += [(f"u{u}", f"i{(u + 7) % 15}", "buy", "test"),
                 (f"u{u}", f"i{(u + 8) % 15}", "view", "test")]
    path = tmp_path / "shop.csv"
    pd.DataFrame(rows, columns=["user_id", "item_id", "event", "split"]).to_csv(path,
                                                                                 index=False)
    held = hold_out(parse_spec(f"events:{path}"), tmp_path / "out")
    assert held.protocol == "predefined"
    # the targets are the test purchases, and no test row reaches the model
    assert len(held.targets) == 20
    written = pd.read_csv(tmp_path / "out" / "events.csv")
    assert len(written) == 20 * 7
    # one train purchase per shopper is the evaluation's test row, so `make train` still runs
    # the predefined protocol on it
    test_rows = written[written["split"] == "test"]
    assert len(test_rows) == 20 and set(test_rows["event"]) == {"purchase"}


def test_baselines_read_as_many_events_per_shopper_as_the_bundle(tmp_path: Path) -> None:
    # u0 carted x, then looked at six other items; after the cut they buy x. Ranked from the
    # last 3 events (as a bundle with history_len 3 would be), repeat no longer knows x.
    day = pd.Timestamp("2026-01-01")
    rows = [("u0", "x", "addtocart", day)]
    rows += [("u0", f"v{j}", "view", day + pd.Timedelta(hours=j + 1)) for j in range(6)]
    rows += [(f"u{u}", f"v{(u + j) % 6}", "view", day + pd.Timedelta(hours=j))
             for u in range(1, 8) for j in range(3)]
    rows += [("u0", "x", "purchase", day + pd.Timedelta(days=5))]
    path = tmp_path / "shop.csv"
    pd.DataFrame(rows, columns=["user_id", "item_id", "event", "timestamp"]).to_csv(path,
                                                                                     index=False)
    held = hold_out(parse_spec(f"events:{path}"), tmp_path / "out", days=2)
    assert held.targets.to_dict("records") == [{"user_id": "u0", "item_id": "x"}]

    def rank_of_x(history_len: int) -> int | None:
        recs = baseline_recs(held, history_len, k=5)["repeat"]
        mine = recs[(recs["user_id"] == "u0") & (recs["item_id"] == "x")]
        return int(mine["rank"].iloc[0]) if len(mine) else None

    assert rank_of_x(10) == 1
    assert rank_of_x(3) != 1
