"""Item attributes as tokens and their CSR table, on a catalog with a known answer."""

from __future__ import annotations

import numpy as np
import pandas as pd

from features.item_attributes import (
    TOKENS_COLUMN,
    AttributeTable,
    attribute_tokens,
)


def catalog() -> pd.DataFrame:
    return pd.DataFrame({
        "item_id": pd.array(["a", "b", "c", "d"], dtype="string"),
        "category_id": pd.array(["x", "x", "y", "y"], dtype="string"),
        "available": [True, True, False, True],
        "brand": pd.array(["acme corp", " acme  corp", "zeta", pd.NA], dtype="string"),
        "title": pd.array(["A", "B", "C", "D"], dtype="string"),   # unique: not an attribute
        "attributes": pd.array(["1 2", "2", "", "1 9"], dtype="string"),
        "price": [1.0, 2.0, 3.0, 4.0],
    })


def test_tokens_per_column_kind() -> None:
    tokens = attribute_tokens(catalog(), pd.Series(["a", "b", "c", "d", "new"])).tolist()
    # brand=zeta and attributes=9 sit on one item only and are dropped, like every title;
    # prices 1 and 2 share the bucket log2:1 (log2(1 + price) in [1, 2)), 3 and 4 the next one
    assert tokens == ["brand=acme_corp attributes=1 attributes=2 price=log2:1",
                      "brand=acme_corp attributes=2 price=log2:1", "price=log2:2",
                      "attributes=1 price=log2:2", ""]


def test_numeric_columns_are_power_of_two_buckets() -> None:
    items = pd.DataFrame({"item_id": pd.array([f"i{k}" for k in range(6)], dtype="string"),
                          "price": [0.5, 2.0, 2.5, 20.0, 30.0, np.nan]})
    tokens = attribute_tokens(items, items["item_id"], min_items=1).tolist()
    # log2(1 + price): 0.58, 1.58, 1.81, 4.39, 4.95 -> buckets 0, 1, 1, 4, 4; no price, no token
    assert tokens == ["price=log2:0", "price=log2:1", "price=log2:1", "price=log2:4",
                      "price=log2:4", ""]
    # an item's bucket is its own: the same price gives the same token in any catalog
    alone = attribute_tokens(items.iloc[[3]], items["item_id"].iloc[[3]], min_items=1)
    assert alone.tolist() == ["price=log2:4"]


def test_no_metadata_no_tokens() -> None:
    empty = pd.DataFrame({"item_id": pd.array([], dtype="string")})
    assert attribute_tokens(empty, pd.Series(["a", "b"])).tolist() == ["", ""]


def test_table_rows_and_take() -> None:
    feats = pd.DataFrame({TOKENS_COLUMN: pd.array(["b=1 a=2", "", "a=2", pd.NA],
                                                  dtype="string")})
    table = AttributeTable.from_features(feats)
    assert table.tokens.tolist() == ["a=2", "b=1"]          # sorted vocabulary
    assert table.offsets.tolist() == [0, 2, 2, 3, 3]
    assert table.values.tolist() == [1, 0, 0]
    values, lengths = table.take(np.array([2, 1, 0, 0]))
    assert lengths.tolist() == [1, 0, 2, 2]
    assert values.tolist() == [0, 1, 0, 1, 0]


def test_take_sets_lists_each_distinct_set_once() -> None:
    """Items 0 and 2 hold the same set, 1 and 3 none: two bags for the four."""
    feats = pd.DataFrame({TOKENS_COLUMN: pd.array(["a=2 b=1", "", "a=2 b=1", pd.NA],
                                                  dtype="string")})
    table = AttributeTable.from_features(feats)
    values, lengths, sets = table.take_sets(np.array([3, 2, 0, 1]))
    assert lengths.tolist() == [2, 0] and values.tolist() == [0, 1]   # sets as first held
    assert sets.tolist() == [1, 0, 0, 1]
    values, lengths, sets = table.take_sets(np.array([1]))
    assert lengths.tolist() == [0] and values.size == 0 and sets.tolist() == [0]


def test_encode_maps_other_items_onto_the_vocabulary() -> None:
    feats = pd.DataFrame({TOKENS_COLUMN: pd.array(["b=1 a=2", "a=2"], dtype="string")})
    table = AttributeTable.from_features(feats)
    new = table.encode(pd.Series(["a=2 z=9", "", "b=1"]))
    assert new.tokens is table.tokens and new.n_items == 3
    assert new.offsets.tolist() == [0, 1, 1, 2] and new.values.tolist() == [0, 1]


def test_table_without_the_column_is_empty() -> None:
    table = AttributeTable.from_features(pd.DataFrame({"item_id": ["a", "b", "c"]}))
    assert table.n_attributes == 0 and table.n_items == 3
    values, lengths = table.take(np.array([0, 2]))
    assert values.size == 0 and lengths.tolist() == [0, 0]
