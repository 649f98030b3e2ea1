import pandas as pd

from features.config import FeatureConfig
from features.cooccur import bought_together
from features.split import sort_events
from tests.helpers import make_events


def _shop() -> pd.DataFrame:
    """Printer buyers buy ink; everybody buys the bestseller; one stale pair is weeks apart."""
    rows = []
    for u in range(6):  # printer + ink, same day
        rows += [(f"p{u}", "printer", "purchase", "2024-01-02 10:00"),
                 (f"p{u}", "ink", "addtocart", "2024-01-02 10:05"),
                 (f"p{u}", "best", "purchase", "2024-01-03 10:00")]
    for u in range(30):  # the bestseller alone, bought by many
        rows.append((f"b{u}", "best", "purchase", "2024-01-02 10:00"))
        rows.append((f"b{u}", "mug", "view", "2024-01-02 10:01"))  # views never count
    for u in range(3):  # far apart in time: not bought together
        rows += [(f"s{u}", "printer", "purchase", "2024-01-01 10:00"),
                 (f"s{u}", "cable", "purchase", "2024-03-01 10:00")]
    return sort_events(make_events(rows))


def test_printer_ranks_its_ink_above_the_bestseller():
    table = bought_together(_shop(), FeatureConfig())
    printer = table[table["item_id"] == "printer"].sort_values("rank")
    assert list(printer["other_item_id"]) == ["ink", "best"]
    assert printer["pair_users"].tolist() == [6, 6]
    ink_score = 6 / (9 * 6) ** 0.5
    assert abs(printer["score"].iloc[0] - ink_score) < 1e-12
    assert "cable" not in set(table["other_item_id"])  # 59 days apart
    assert "mug" not in set(table["item_id"])  # views only


def test_min_count_and_top_m():
    cfg = FeatureConfig(cooccur_min_count=7)
    assert bought_together(_shop(), cfg).empty
    top1 = bought_together(_shop(), FeatureConfig(cooccur_top_m=1))
    assert top1.groupby("item_id").size().max() == 1


def test_without_time_neighbours_bound_the_pairs():
    rows = [("u", x, "purchase") for x in "abcd"] + [("v", x, "purchase") for x in "abcd"]
    events = make_events(rows, with_time=False)
    table = bought_together(events, FeatureConfig(cooccur_neighbors=1))
    pairs = set(map(tuple, table[["item_id", "other_item_id"]].to_numpy()))
    assert ("a", "b") in pairs and ("a", "c") not in pairs
    wide = bought_together(events, FeatureConfig(cooccur_neighbors=3))
    assert ("a", "d") in set(map(tuple, wide[["item_id", "other_item_id"]].to_numpy()))
