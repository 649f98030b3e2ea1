"""The synthetic shop: canonical form, determinism, and the structure it plants."""

from __future__ import annotations

import time

import numpy as np
import pandas as pd
import pytest

from features.schema import EVENT_DTYPE, TIMESTAMP_DTYPE, EventData
from features.synthetic import SIZES, ShopTruth, generate, generate_with_truth

EVENT_COLUMNS = ["user_id", "item_id", "event", "timestamp", "seq", "session_id", "price"]
ITEM_COLUMNS = ["item_id", "category_id", "parent_category_id", "available", "title", "price"]


@pytest.fixture(scope="module")
def shop() -> tuple[EventData, ShopTruth]:
    return generate_with_truth("small", seed=0)


@pytest.fixture(scope="module")
def events(shop: tuple[EventData, ShopTruth]) -> pd.DataFrame:
    return shop[0].events


@pytest.fixture(scope="module")
def with_category(shop: tuple[EventData, ShopTruth]) -> pd.DataFrame:
    data = shop[0]
    return data.events.merge(data.items[["item_id", "category_id"]], on="item_id", how="left")


def test_same_seed_is_identical_and_other_seed_differs() -> None:
    a, b, c = generate("small", 0), generate("small", 0), generate("small", 1)
    pd.testing.assert_frame_equal(a.events, b.events)
    pd.testing.assert_frame_equal(a.items, b.items)
    assert not a.events.equals(c.events)
    assert not a.items.equals(c.items)


def test_unknown_size_is_an_error() -> None:
    with pytest.raises(ValueError, match="small"):
        generate("huge")


def test_canonical_schema(shop: tuple[EventData, ShopTruth]) -> None:
    data, truth = shop
    ev, items = data.events, data.items
    assert data.source == "synthetic:small" and data.has_time
    assert list(ev.columns) == EVENT_COLUMNS
    for col in ("user_id", "item_id", "session_id"):
        assert ev[col].dtype == pd.StringDtype(), col
        assert ev[col].notna().all() and (ev[col].str.len() > 0).all()
    assert ev["event"].dtype == EVENT_DTYPE
    assert ev["timestamp"].dtype == TIMESTAMP_DTYPE
    assert ev["seq"].dtype == np.int64 and (ev["seq"].to_numpy() == np.arange(len(ev))).all()
    assert ev["price"].dtype == np.float64 and (ev["price"] > 0).all()
    assert ev.index.equals(pd.RangeIndex(len(ev)))
    assert not ev.duplicated().any()
    assert not ev.duplicated(["user_id", "item_id", "event", "timestamp"]).any()
    # Sorted by (timestamp, user_id).
    key = pd.DataFrame({"t": ev["timestamp"], "u": ev["user_id"]})
    assert key.equals(key.sort_values(["t", "u"]).reset_index(drop=True))
    assert ev["timestamp"].min() >= truth.window_start
    assert ev["timestamp"].max() < truth.window_end == pd.Timestamp("2026-07-01", tz="UTC")

    assert list(items.columns) == ITEM_COLUMNS
    for col in ("item_id", "category_id", "parent_category_id", "title"):
        assert items[col].dtype == pd.StringDtype(), col
        assert items[col].notna().all()
    assert items["available"].dtype == bool and items["price"].dtype == np.float64
    assert items["item_id"].is_unique and items["item_id"].str.fullmatch(r"i\d{6}").all()
    assert set(ev["item_id"].unique()) <= set(items["item_id"])


def test_category_tree(shop: tuple[EventData, ShopTruth]) -> None:
    items = shop[0].items
    parents_per_leaf = items.groupby("category_id")["parent_category_id"].nunique()
    assert (parents_per_leaf == 1).all()  # a tree: each leaf has one parent
    leaves_per_parent = items.groupby("parent_category_id")["category_id"].nunique()
    assert len(leaves_per_parent) >= 6 and (leaves_per_parent >= 3).all()
    assert {"electronics", "office", "home", "sports", "toys", "garden"} <= set(
        leaves_per_parent.index)


def test_funnel_shares(events: pd.DataFrame) -> None:
    share = events["event"].value_counts(normalize=True)
    assert 0.90 <= share["view"] <= 0.97
    assert 0.02 <= share["addtocart"] <= 0.05
    assert 0.008 <= share["purchase"] <= 0.03


def test_cart_and_purchase_follow_a_view_in_the_same_session(events: pd.DataFrame) -> None:
    first_view = (events[events["event"] == "view"]
                  .groupby(["session_id", "item_id"])["timestamp"].min().rename("viewed"))
    acts = events[events["event"] != "view"].join(first_view, on=["session_id", "item_id"])
    assert len(acts) > 1000
    assert acts["viewed"].notna().all()
    assert (acts["viewed"] < acts["timestamp"]).all()


def test_sessions_are_short_ordered_and_do_not_overlap(events: pd.DataFrame) -> None:
    s = events.groupby("session_id").agg(users=("user_id", "nunique"), user=("user_id", "first"),
                                         start=("timestamp", "min"), end=("timestamp", "max"),
                                         n=("seq", "size"))
    assert (s["users"] == 1).all()
    assert 3 <= s["n"].mean() <= 12
    assert (s["end"] - s["start"]).max() < pd.Timedelta(hours=3)
    # Within a session, time strictly increases in row order.
    diffs = events.groupby("session_id")["timestamp"].diff().dropna()
    assert (diffs > pd.Timedelta(0)).all() and diffs.median() < pd.Timedelta(minutes=5)
    s = s.sort_values(["user", "start"])
    previous_end = s.groupby("user")["end"].shift()
    has_previous = previous_end.notna()
    assert (s["start"][has_previous] > previous_end[has_previous]).all()


def _bought(events: pd.DataFrame) -> pd.DataFrame:
    return (events[events["event"] == "purchase"].groupby(["user_id", "item_id"])["timestamp"]
            .min().reset_index())


def test_complements_are_bought_together_far_above_chance(
        shop: tuple[EventData, ShopTruth]) -> None:
    data, truth = shop
    bought = _bought(data.events)
    pairs = pd.DataFrame({"anchor": list(truth.complements),
                          "complement": list(truth.complements.values())})
    anchor_buys = bought.merge(pairs, left_on="item_id", right_on="anchor")
    both = anchor_buys.merge(bought, left_on=["user_id", "complement"],
                             right_on=["user_id", "item_id"], suffixes=("", "_c"))
    within = both[(both["timestamp_c"] >= both["timestamp"])
                  & (both["timestamp_c"] <= both["timestamp"] + pd.Timedelta(days=7))]
    assert len(anchor_buys) > 100
    p_complement = len(within) / len(anchor_buys)
    assert p_complement > 0.4
    # Base rate: the share of shoppers who buy a given complement item.
    n_users = data.events["user_id"].nunique()
    base = bought[bought["item_id"].isin(pairs["complement"])].groupby("item_id").size()
    assert base.max() / n_users < 0.02 < p_complement / 20

    items = data.items.set_index("item_id")
    cats = items.loc[list(truth.complements), "category_id"].to_numpy()
    comp_cats = items.loc[list(truth.complements.values()), "category_id"].to_numpy()
    assert (cats != comp_cats).mean() > 0.9


def test_named_printer_and_its_ink(shop: tuple[EventData, ShopTruth]) -> None:
    data, truth = shop
    items = data.items.set_index("item_id")
    printer, ink = items.loc[truth.printer_item], items.loc[truth.printer_ink]
    assert truth.complements[truth.printer_item] == truth.printer_ink
    assert printer["category_id"] == "printers" and printer["parent_category_id"] == "electronics"
    assert ink["category_id"] == "ink" and ink["title"] == f"ink for {printer['title']}"
    assert str(printer["title"]).startswith("printer ")
    bought = _bought(data.events)
    printer_buyers = set(bought.loc[bought["item_id"] == truth.printer_item, "user_id"])
    ink_buyers = set(bought.loc[bought["item_id"] == truth.printer_ink, "user_id"])
    assert len(printer_buyers) >= 10
    assert len(printer_buyers & ink_buyers) / len(printer_buyers) > 0.4
    assert len(ink_buyers) / data.events["user_id"].nunique() < 0.02


def test_no_events_for_an_item_after_it_went_unavailable(
        shop: tuple[EventData, ShopTruth]) -> None:
    data, truth = shop
    gone = pd.Series(truth.unavailable_items, name="gone")
    assert len(gone) > 10
    unavailable = set(data.items.loc[~data.items["available"], "item_id"])
    assert unavailable == set(gone.index)
    ev = data.events.join(gone, on="item_id")
    ev = ev[ev["gone"].notna()]
    assert (ev["timestamp"] < ev["gone"]).all()
    assert len(ev) > 100  # they were live for part of the window
    assert not set(gone.index) & set(truth.complements.values())


def test_new_users_first_appear_in_the_last_14_days(shop: tuple[EventData, ShopTruth]) -> None:
    data, truth = shop
    assert truth.new_user_cutoff == truth.window_end - pd.Timedelta(days=14)
    first = data.events.groupby("user_id")["timestamp"].min()
    assert 0.05 <= len(truth.new_users) / len(first) <= 0.12
    new = first.index.isin(list(truth.new_users))
    assert (first[new] >= truth.new_user_cutoff).all()
    assert (first[~new] < truth.new_user_cutoff).all()


def test_events_concentrate_in_a_few_tastes(with_category: pd.DataFrame) -> None:
    per_user = with_category.groupby(["user_id", "category_id"]).size()
    totals = per_user.groupby(level=0).sum()
    top3 = (per_user.sort_values(ascending=False).groupby(level=0).head(3)
            .groupby(level=0).sum())
    active = totals[totals >= 20].index
    assert len(active) > 500
    assert (top3[active] / totals[active]).median() > 0.75  # of ~50 leaf categories


def test_events_follow_the_planted_tastes(shop: tuple[EventData, ShopTruth],
                                          with_category: pd.DataFrame) -> None:
    tastes = shop[1].tastes
    assert list(tastes.columns) == ["user_id", "category_id", "weight", "start", "end"]
    m = with_category.merge(tastes, on=["user_id", "category_id"], suffixes=("", "_taste"))
    inside = m[(m["timestamp"] >= m["start"]) & (m["timestamp"] < m["end"])]
    assert inside["seq"].nunique() / len(with_category) > 0.8


def test_tastes_drift(shop: tuple[EventData, ShopTruth], with_category: pd.DataFrame) -> None:
    tastes, start = shop[1].tastes, shop[1].window_start
    late = tastes[tastes["start"] > start]  # a taste that a drifting shopper switched to
    assert late["user_id"].nunique() > 0.2 * tastes["user_id"].nunique()
    ev = with_category.merge(late[["user_id", "category_id", "start"]].rename(
        columns={"category_id": "new_category", "start": "switch"}), on="user_id")
    after = ev["timestamp"] >= ev["switch"]
    in_new = ev["category_id"] == ev["new_category"]
    share_before, share_after = in_new[~after].mean(), in_new[after].mean()
    assert share_after > 0.1 and share_after > 4 * share_before


def test_repeat_interest_across_sessions(events: pd.DataFrame) -> None:
    views = events[events["event"] == "view"]
    sessions_per_pair = views.groupby(["user_id", "item_id"])["session_id"].nunique()
    assert (sessions_per_pair >= 2).mean() > 0.1
    first_session = views.groupby(["user_id", "item_id"])["session_id"].first().rename("first")
    buys = events[events["event"] == "purchase"].join(first_session, on=["user_id", "item_id"])
    assert (buys["first"] != buys["session_id"]).mean() > 0.25


def test_popularity_is_skewed(events: pd.DataFrame) -> None:
    counts = events.loc[events["event"] == "view", "item_id"].value_counts()
    top = counts.iloc[: max(1, len(counts) // 100)].sum()
    assert top / counts.sum() > 0.1  # the top 1% of items draw over 10% of views
    assert counts.iloc[0] > 20 * counts.median()


def test_weekly_rhythm(events: pd.DataFrame) -> None:
    per_day = events.groupby(events["timestamp"].dt.floor("D")).size()
    weekend = per_day.index.day_of_week >= 5
    assert per_day[weekend].mean() > 1.1 * per_day[~weekend].mean()


def test_small_size_and_speed() -> None:
    t0 = time.perf_counter()
    data = generate("small", seed=3)
    assert time.perf_counter() - t0 < 5
    assert 2_000 <= data.events["user_id"].nunique() <= 3_000
    assert 1_000 <= len(data.items) <= 2_000
    assert 50_000 <= len(data.events) <= 100_000
    assert SIZES["medium"].n_users == 10 * SIZES["small"].n_users


@pytest.mark.slow
def test_large_has_a_million_events_and_100k_items() -> None:
    data = generate("large", seed=0)
    assert len(data.events) >= 1_000_000
    assert len(data.items) >= 100_000
    assert data.events["item_id"].nunique() > 50_000
    assert data.source == "synthetic:large"
