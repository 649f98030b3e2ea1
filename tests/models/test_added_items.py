"""models/added_items.py: items added after training get the next rows, a vector from their
category and attributes, a place in a copy of the index and empty rows in the sparse signals;
the bundle they were added to is left as it was."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from features.history import histories_from_rows
from features.infra import DataError
from features.item_features import metadata_columns
from models.added_items import with_items
from models.bundle import Bundle
from models.scoring import compute_item_vectors, new_item_vectors


@pytest.fixture(scope="module")
def bundle(tiny_bundle: Path) -> Bundle:
    return Bundle.load(tiny_bundle)


def twins(bundle: Bundle, rows: list[int], ids: list[str]) -> pd.DataFrame:
    """Metadata rows of items ``rows`` under new ids: new items that look like known ones."""
    meta = bundle.items.iloc[rows][["item_id", *metadata_columns(bundle.items)]]
    return meta.assign(item_id=ids).reset_index(drop=True)


def test_new_items_get_the_next_rows_and_their_attribute_vectors(bundle: Bundle) -> None:
    index, _ = bundle.item_index()
    n = len(bundle.item_vocab)
    new = twins(bundle, [3, 8], ["new-a", "new-b"])
    grown, grown_index, placed = with_items(bundle, index, new)
    assert placed == ["new-a", "new-b"]
    assert grown.item_vocab.lookup(["new-a", "new-b", bundle.item_vocab.ids[0]]).tolist() == \
        [n, n + 1, 0]
    expected = new_item_vectors(bundle.model, bundle.items, new)
    np.testing.assert_array_equal(grown.item_vectors[n:], expected)
    np.testing.assert_array_equal(grown.item_vectors[:n], bundle.item_vectors)
    # what the model's own item path gives the grown table: the recommender ranks with these
    np.testing.assert_allclose(compute_item_vectors(grown.model, grown.items)[n:], expected,
                               rtol=1e-5, atol=1e-6)
    assert grown.recommender.n_items == n + 2
    # the copy of the index finds each new item as its own nearest neighbour
    assert grown_index.n_items == n + 2 and index.n_items == n
    rows, _ = grown_index.search(expected, 1)
    assert rows[:, 0].tolist() == [n, n + 1]
    # same category, attributes and availability as the twins; no events yet
    added = grown.items.iloc[n:]
    assert added["category_id"].tolist() == bundle.items["category_id"].iloc[[3, 8]].tolist()
    assert added["category_idx"].tolist() == bundle.items["category_idx"].iloc[[3, 8]].tolist()
    assert (added["popularity"] == 0).all() and added["available"].all()
    # the sparse signals grew by empty rows and columns
    for source in grown.sources.values():
        assert source.n_items == n + 2 and len(source.popularity) == n + 2
        if hasattr(source, "similarity"):
            assert source.similarity.shape == (n + 2, n + 2)
            assert source.similarity[n:].nnz == 0 and source.similarity[:, n:].nnz == 0
    # the bundle they were added to is unchanged
    assert len(bundle.item_vocab) == n and len(bundle.items) == n
    assert bundle.recommender.n_items == n


def test_items_the_bundle_knows_are_not_placed_again(bundle: Bundle) -> None:
    index, _ = bundle.item_index()
    known = twins(bundle, [1], [bundle.item_vocab.ids[1]])
    same, same_index, placed = with_items(bundle, index, known)
    assert placed == [] and same is bundle and same_index is index
    grown, grown_index, _ = with_items(bundle, index, twins(bundle, [2], ["new-c"]))
    again, _, placed = with_items(grown, grown_index,
                                  twins(bundle, [2, 4], ["new-c", "new-d"]))
    assert placed == ["new-d"] and len(again.item_vocab) == len(bundle.item_vocab) + 2


def test_an_unknown_attribute_is_named(bundle: Bundle) -> None:
    index, _ = bundle.item_index()
    with pytest.raises(DataError, match="unknown item attribute 'scent'"):
        with_items(bundle, index, pd.DataFrame({"item_id": ["x"], "scent": ["rose"]}))


def test_a_history_holding_a_new_item_is_ranked(bundle: Bundle) -> None:
    index, _ = bundle.item_index()
    grown, _, _ = with_items(bundle, index, twins(bundle, [3], ["new-a"]))
    n = len(bundle.item_vocab)
    known_rows = bundle.histories.items_of(0)[-3:]

    def history(rows: np.ndarray):
        return histories_from_rows(np.array(["u"] * len(rows), dtype=object), rows,
                                   np.zeros(len(rows), dtype=np.int8),
                                   np.arange(len(rows), dtype=np.int64) + 1_000, now_ms=2_000)

    with_new = grown.recommender.score(history(np.r_[known_rows, n]))
    without = grown.recommender.score(history(known_rows))
    assert with_new.shape == (1, n + 1)
    # The user tower reads trained items only; the new item, the newest event, joins the user
    # vector through its own vector (attributes only) at the newest item's weight.
    towers = getattr(grown.recommender, "towers", grown.recommender)
    weight = towers.model.newest_weight
    chosen = float(weight)
    try:
        weight.fill_(0.0)   # off: the towers' part is the other events' alone
        off = towers.score(history(np.r_[known_rows, n]))
        np.testing.assert_allclose(off, towers.score(history(known_rows)), rtol=1e-5, atol=1e-5)
        weight.fill_(1.0)   # on: the user vector turns towards the new item
        on = towers.score(history(np.r_[known_rows, n]))
        assert on[0, n] > off[0, n]
        only_new = towers.user_vectors(history(np.array([n])))
        np.testing.assert_allclose(only_new[0], grown.item_vectors[n], rtol=1e-5, atol=1e-6)
    finally:
        weight.fill_(chosen)
    if grown.sources:   # the shopper's own-item signals count the new item
        assert with_new[0, n] > without[0, n]
