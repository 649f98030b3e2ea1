"""``models.merchandising``: plans checked against a catalog, and lists arranged by them, on a
six-item catalog whose answers are worked out by hand."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from features.rules import Boost, Pin, Rules
from models.merchandising import (
    BOOSTED,
    DEFAULT_DIVERSITY,
    PINNED,
    RANKED,
    Catalog,
    RuleError,
    arrange,
    make_plan,
)

# Items 0-2 are near-copies ("a" leaf), 3-4 another leaf, 5 a third; prices 10..60.
IDS = np.array([f"i{n}" for n in range(6)], dtype=object)
ITEMS = pd.DataFrame({"category_id": ["a", "a", "a", "b", "b", "c"],
                      "parent_category_id": ["p", "p", "p", "p", "q", "q"],
                      "price": [10.0, 20.0, 30.0, 40.0, 50.0, 60.0]})
VECTORS = np.array([[1, 0, 0], [0.99, 0.14, 0], [0.98, 0, 0.2], [0, 1, 0], [0, 0.98, 0.2],
                    [0, 0, 1]], dtype=np.float32)
VECTORS /= np.linalg.norm(VECTORS, axis=1, keepdims=True)
CATALOG = Catalog(IDS, ITEMS, VECTORS)
# One list: the model ranks the items in row order, scores 6..1.
ROWS = np.array([[0, 1, 2, 3, 4, 5]])
SCORES = np.array([[6, 5, 4, 3, 2, 1]], dtype=np.float32)


def top(rules: Rules, k: int = 3, **kwargs) -> tuple[list[int], list[int]]:
    rows, _, flags = arrange(make_plan(rules, CATALOG), CATALOG, ROWS, SCORES, k, **kwargs)
    keep = rows[0] >= 0
    return rows[0][keep].tolist(), flags[0][keep].tolist()


def test_no_rules_means_the_default_diversity_and_zero_the_model_order() -> None:
    assert make_plan(Rules(), CATALOG).diversity == DEFAULT_DIVERSITY
    assert make_plan(Rules(diversity=0.0), CATALOG).plain
    assert top(Rules(diversity=0.0)) == ([0, 1, 2], [RANKED] * 3)


def test_diversity_trades_relevance_for_distance() -> None:
    assert top(Rules(diversity=0.0))[0] == [0, 1, 2]
    # Some diversity: after item 0, its near-copies lose to the best item of another direction.
    assert top(Rules(diversity=0.5))[0] == [0, 3, 5]
    # Full diversity: the first pick is still the most relevant; then the least similar ones.
    assert top(Rules(diversity=1.0))[0][0] == 0


def test_max_per_category_caps_each_leaf() -> None:
    # only three leaves exist
    assert top(Rules(diversity=0.0, max_per_category=1), k=4)[0] == [0, 3, 5]
    assert top(Rules(diversity=0.0, max_per_category=2), k=4)[0] == [0, 1, 3, 4]


def test_boosts_multiply_or_add_to_relevance_and_the_cap_holds() -> None:
    # Relevance within the candidates: (score - 1) / 5, so item 3 has 0.4 and item 0 has 1.0.
    rows, flags = top(Rules(diversity=0.0, boosts=(Boost(category="b", multiply=3.0),)))
    assert rows == [3, 0, 1] and flags == [BOOSTED, RANKED, RANKED]   # 1.2 beats 1.0
    rows, _ = top(Rules(diversity=0.0, boosts=(Boost(item_id="i5", add=0.7),)))
    assert rows == [0, 1, 5]   # 0 + 0.7 beats item 2's 0.6, not item 1's 0.8
    rows, flags = top(Rules(diversity=0.0, boosts=(Boost(category="b", add=2.0),), max_boosted=1))
    assert rows == [3, 0, 1] and flags == [BOOSTED, RANKED, RANKED]   # item 4 loses its boost


def test_pins_take_their_slots_when_the_item_is_allowed() -> None:
    rows, flags = top(Rules(diversity=0.0, pins=(Pin("i5", 1), Pin("i4", 9))), k=4)
    assert rows == [5, 0, 1, 4]            # a slot past the end appends
    assert flags == [PINNED, RANKED, RANKED, PINNED]
    blocked = [np.array([5])]
    assert top(Rules(diversity=0.0, pins=(Pin("i5", 1),)), blocked=blocked)[0] == [0, 1, 2]
    allowed = np.ones(6, dtype=bool)
    allowed[5] = False
    assert top(Rules(diversity=0.0, pins=(Pin("i5", 1),)), allowed=allowed)[0] == [0, 1, 2]


def test_filters_become_an_allowed_mask() -> None:
    plan = make_plan(Rules(diversity=0.0, exclude_categories=("q",), exclude_items=("i0",),
                           price_min=15), CATALOG)
    assert plan.allowed.tolist() == [False, True, True, True, False, False]
    assert plan.plain   # filters act before ranking: nothing to arrange


@pytest.mark.parametrize(("rules", "table", "key"), [
    (Rules(boosts=(Boost(category="a", add=1), Boost(category="zz", add=1))), "boost",
     "category"),
    (Rules(pins=(Pin("nope", 1),)), "pin", "item_id"),
    (Rules(exclude_categories=("zz",)), "filter", "exclude_categories"),
])
def test_unknown_categories_and_items_are_named(rules: Rules, table: str, key: str) -> None:
    with pytest.raises(RuleError) as err:
        make_plan(rules, CATALOG)
    assert (err.value.table, err.value.key) == (table, key)
    if table == "boost":
        assert err.value.index == 1


def test_a_price_rule_needs_prices() -> None:
    catalog = Catalog(IDS, ITEMS.drop(columns="price"), VECTORS)
    with pytest.raises(RuleError, match="no price"):
        make_plan(Rules(price_max=10), catalog)
