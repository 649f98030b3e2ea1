"""The merchandising benchmark's measurements (benchmarks/merchandising.py) on the session's tiny
bundle, with answers worked out by hand where they can be."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from benchmarks.common import DataSet
from benchmarks.merchandising import (
    MerchBenchConfig,
    cart_cases,
    cart_hit_rates,
    diversity_sweep,
    list_spread,
    markdown,
    planted_complements,
)
from benchmarks.served import HoldOut
from features.readers import read_events
from features.schema import EventData
from features.spec import parse_spec
from serving.engine import Engine, load_engine


@pytest.fixture(scope="module")
def engine(tiny_bundle) -> Engine:
    return load_engine(str(tiny_bundle))


@pytest.fixture(scope="module")
def synthetic_events() -> EventData:
    return read_events(parse_spec("synthetic"))


def test_list_spread_has_known_answers(engine: Engine) -> None:
    # Two lists: one item twice over (distance 0), and an item with itself plus one more.
    a, b = engine.ids[0], engine.ids[1]
    frame = pd.DataFrame({"user_id": ["u1", "u1", "u2", "u2"], "item_id": [a, a, a, b],
                          "rank": [1, 2, 1, 2]})
    got = list_spread(engine, frame)
    va, vb = engine.catalog.unit[0], engine.catalog.unit[1]
    assert got["ild"] == pytest.approx((0.0 + (1 - float(va @ vb))) / 2, abs=1e-6)
    same = engine.categories[0] == engine.categories[1]
    assert got["categories"] == pytest.approx((1 + (1 if same else 2)) / 2)
    assert got["coverage"] == pytest.approx(2 / engine.available.sum())


def test_diversity_raises_spread_and_caps_hold(engine: Engine, synthetic_events) -> None:
    events = synthetic_events.events
    users = engine.bundle.histories.user_ids[:200]
    seen = events[events["user_id"].isin(users)]
    last = seen.groupby("user_id").tail(1)[["user_id", "item_id"]]
    held = HoldOut("synthetic", None, last, "temporal", None, seen, pd.DataFrame(),
                   np.array([]))
    cfg = MerchBenchConfig(diversity=(0.0, 0.7), caps=(1,), max_users=200)
    rows = diversity_sweep(engine, held, cfg)
    assert [(r["diversity"], r["max_per_category"]) for r in rows] == [("0", 0), ("0.7", 0),
                                                                      ("0", 1)]
    assert rows[1]["ild"] > rows[0]["ild"]
    # One item per leaf: as many leaves as items (a few lists run out of leaves among the
    # candidates and come back shorter rather than break the cap).
    assert 9.5 < rows[2]["categories"] <= 10.0
    assert rows[2]["categories"] > rows[1]["categories"] > rows[0]["categories"]
    assert all(0 <= r["ndcg@10"] <= r["hr@10"] <= 1 for r in rows)


def test_carts_after_the_cut_and_their_hit_rates(engine: Engine, synthetic_events) -> None:
    events = synthetic_events.events
    cut = events["timestamp"].max() - pd.Timedelta(days=7)
    seen = events[events["timestamp"] < cut]
    held = HoldOut("synthetic", None, pd.DataFrame(columns=["user_id", "item_id"]), "temporal",
                   str(cut), seen, pd.DataFrame(), np.array([]))
    cases = cart_cases(DataSet("synthetic", "synthetic", "temporal"), held, engine,
                       MerchBenchConfig(max_carts=100))
    assert cases
    after = events[events["timestamp"] >= cut]
    for user, cart, bought in cases[:20]:
        mine = after[after["user_id"] == user]
        assert set(cart) <= set(mine.loc[mine["event"] == "addtocart", "item_id"])
        assert bought <= set(mine.loc[mine["event"] == "purchase", "item_id"]) - set(cart)
    rates = cart_hit_rates(engine, cases, 10)
    assert set(rates) == {"complete_cart", "also_bought (last cart item)",
                          "recommend (cart as session)", "popular"}
    assert all(0 <= v <= 1 for v in rates.values())
    planted = planted_complements(engine)
    assert planted["complement_first_with_statistics"] == 1.0   # what the statistics hold
    text = markdown([{"name": "synthetic", "protocol": "temporal", "method": engine.method,
                      "diversity": [], "cart": {"shoppers": len(cases), **rates},
                      "planted": planted, "ms_per_request": {"plain": 1.0}}], 10, None)
    assert "Cart completion" in text and "planted anchor" in text
