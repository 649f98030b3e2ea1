"""Item attributes as tokens: what the item tower's embedding bag reads beside the item id.

Every metadata column except the id, the category (which has its own table) and availability
becomes tokens ``column=value``:
  - ``attributes`` is multi-valued: space-separated values (the Amazon ``item2attributes`` ids);
  - numeric columns (price) are cut into powers of two (``price=log2:4``: 15 <= price < 31), so
    a value the model never saw still lands in a bucket it knows;
  - any other column is one categorical value (``brand=acme``, ``parent_category_id=toys``).
A token shared by fewer than ``MIN_ITEMS`` items is dropped: on one item it is just another id
(a title, a SKU), which carries nothing to a new item.

``attribute_tokens`` writes the space-joined tokens of each item-vocabulary row (the
``attribute_tokens`` column of ``item_features``); ``AttributeTable`` turns that column into the
rows the model reads. Both are pure, so serving rebuilds the table from the bundle's items.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np
import pandas as pd

MULTI_VALUED = "attributes"
NOT_ATTRIBUTES = ("item_id", "category_id", "available")
MIN_ITEMS = 2
TOKENS_COLUMN = "attribute_tokens"


def _column_tokens(name: str, values: pd.Series) -> list[list[str]]:
    """Each row's tokens of one metadata column (aligned with ``values``)."""
    if name == MULTI_VALUED:
        text = values.astype("string").fillna("")
        return [[f"{name}={v}" for v in s.split()] for s in text.tolist()]
    numeric = pd.to_numeric(values, errors="coerce")
    if values.notna().any() and numeric.notna().sum() == values.notna().sum():
        # Powers of two: an item's bucket depends on its own value only, so an item added
        # after training lands in the bucket its peers were trained in.
        number = numeric.to_numpy(dtype=np.float64, na_value=np.nan)
        buckets = np.sign(number) * np.floor(np.log2(1.0 + np.abs(number)))
        return [[f"{name}=log2:{int(b)}"] if np.isfinite(b) else [] for b in buckets]
    # Tokens are joined by spaces: a value's own spaces become "_" ("acme corp": acme_corp).
    text = values.astype("string").str.strip().str.replace(r"\s+", "_", regex=True)
    return [[f"{name}={v}"] if v is not pd.NA and v else [] for v in text.tolist()]


def attribute_tokens(items: pd.DataFrame, item_ids: pd.Series, *,
                     min_items: int = MIN_ITEMS) -> pd.Series:
    """Space-joined attribute tokens of each item in ``item_ids`` ("" when it has none), keeping
    tokens that ``min_items`` of them share."""
    n = len(item_ids)
    if not len(items):
        return pd.Series(pd.array([""] * n, dtype="string"))
    meta = items.drop_duplicates("item_id", keep="last").set_index("item_id")
    meta = meta.reindex(pd.Index(item_ids.astype("string")))
    per_item: list[list[str]] = [[] for _ in range(n)]
    for name in meta.columns:
        if name in NOT_ATTRIBUTES:
            continue
        for row, tokens in enumerate(_column_tokens(name, meta[name].reset_index(drop=True))):
            per_item[row].extend(tokens)
    counts = pd.Series([t for tokens in per_item for t in set(tokens)]).value_counts()
    shared = set(counts.index[counts >= min_items])
    return pd.Series(pd.array([" ".join(t for t in tokens if t in shared) for tokens in per_item],
                              dtype="string"))


@dataclass(frozen=True)
class AttributeTable:
    """Attribute rows of every item, CSR: item r holds ``values[offsets[r]:offsets[r + 1]]``."""

    tokens: np.ndarray     # object array, the vocabulary: token string of each attribute row
    offsets: np.ndarray    # int64 (n_items + 1,)
    values: np.ndarray     # int64 attribute rows

    @property
    def n_attributes(self) -> int:
        return len(self.tokens)

    @property
    def n_items(self) -> int:
        return len(self.offsets) - 1

    @classmethod
    def from_features(cls, item_features: pd.DataFrame) -> AttributeTable:
        """The table of ``item_features``' ``attribute_tokens`` (vocabulary order); none when
        the column is missing (data without attributes, a bundle from before them)."""
        n = len(item_features)
        if TOKENS_COLUMN not in item_features:
            return cls(np.array([], dtype=object), np.zeros(n + 1, dtype=np.int64),
                       np.zeros(0, dtype=np.int64))
        per_item = [s.split() for s in item_features[TOKENS_COLUMN].fillna("").tolist()]
        lengths = np.fromiter((len(t) for t in per_item), dtype=np.int64, count=n)
        flat = [t for tokens in per_item for t in tokens]
        codes, vocab = pd.factorize(pd.Series(flat, dtype=object), sort=True)
        return cls(np.asarray(vocab, dtype=object), np.r_[0, np.cumsum(lengths)].astype(np.int64),
                   codes.astype(np.int64))

    def encode(self, tokens: pd.Series) -> AttributeTable:
        """A table of other items (space-joined tokens each, e.g. items added after training)
        over this vocabulary; tokens it does not hold are left out."""
        rows = {token: row for row, token in enumerate(self.tokens)}
        per_item = [[rows[t] for t in s.split() if t in rows]
                    for s in tokens.astype("string").fillna("").tolist()]
        lengths = np.fromiter((len(r) for r in per_item), dtype=np.int64, count=len(per_item))
        values = np.fromiter((v for r in per_item for v in r), dtype=np.int64,
                             count=int(lengths.sum()))
        return AttributeTable(self.tokens, np.r_[0, np.cumsum(lengths)].astype(np.int64), values)

    def take(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(values, lengths) of the items ``rows``, concatenated in that order."""
        rows = np.asarray(rows, dtype=np.int64)
        starts = self.offsets[rows]
        lengths = self.offsets[rows + 1] - starts
        total = int(lengths.sum())
        first = np.r_[0, np.cumsum(lengths)[:-1]]
        take = np.repeat(starts - first, lengths) + np.arange(total)
        return self.values[take], lengths

    def take_sets(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The distinct attribute sets of the items ``rows`` as (values, lengths), concatenated,
        and the set of each of ``rows``. Items of one brand and one category path hold the same
        set (Sports: 18,284 items, 6,071 sets), so a tower pools each set's rows once."""
        set_of_item, first_item = self._sets
        sets, set_of_row = np.unique(set_of_item[np.asarray(rows, dtype=np.int64)],
                                     return_inverse=True)
        values, lengths = self.take(first_item[sets])
        return values, lengths, set_of_row.astype(np.int64)

    @cached_property
    def _sets(self) -> tuple[np.ndarray, np.ndarray]:
        """Each item's set id (sets numbered as first held) and the first item holding each."""
        keys = pd.Series([self.values[a:b].tobytes()
                          for a, b in zip(self.offsets[:-1], self.offsets[1:], strict=True)],
                         dtype=object)
        set_of_item = pd.factorize(keys)[0].astype(np.int64)
        first_item = np.unique(set_of_item, return_index=True)[1]
        return set_of_item, first_item


class SharedValues:
    """Which items share attribute values with some given items: "the same scent", "more from
    the brands this shopper buys". ``names`` are the metadata columns a request may name."""

    def __init__(self, items: pd.DataFrame, names: list[str]) -> None:
        self.items, self.names = items, tuple(names)
        self._codes: dict[str, np.ndarray] = {}

    def codes(self, name: str) -> np.ndarray:
        """Each item's value of ``name`` as an integer code (-1: no value). A multi-valued
        column's value is its set of values, in any order."""
        if name not in self._codes:
            text = self.items[name].astype("string").str.strip()
            if name == MULTI_VALUED:
                text = text.map(lambda s: " ".join(sorted(set(s.split()))) if isinstance(s, str)
                                else s, na_action="ignore").astype("string")
            text = text.mask(text == "")
            codes, _ = pd.factorize(text, use_na_sentinel=True)
            self._codes[name] = codes.astype(np.int64)
        return self._codes[name]

    def unknown(self, names: list[str]) -> list[str]:
        return [n for n in names if n not in self.names]

    def mask(self, names: list[str], rows: np.ndarray) -> tuple[np.ndarray, list[str]]:
        """Items whose value of every name in ``names`` is one that ``rows`` hold, and the names
        none of ``rows`` has a value for (then nothing matches)."""
        keep = np.ones(len(self.items), dtype=bool)
        empty = []
        for name in names:
            codes = self.codes(name)
            wanted = np.unique(codes[rows])
            wanted = wanted[wanted >= 0]
            if not len(wanted):
                empty.append(name)
            keep &= np.isin(codes, wanted)
        return keep, empty
