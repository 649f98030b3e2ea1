"""Items added to the catalog after a bundle was trained (``POST /admin/items``), placed in it
without retraining.

A new item gets the next item row. Its vector comes from its category and attributes alone
(the item tower without an id row: ``models.scoring.new_item_vectors``, which training prepares
for with item-id dropout); it goes into a copy of the FAISS index, so ``/similar_items`` finds it
and the towers can rank it. The sparse signals know nothing of it yet (no co-occurrence, no
popularity): their tables grow by empty rows and columns. The user tower reads trained items
only, but when a new item is a shopper's newest event its vector joins the user vector
(``TwoTower.with_newest_item``), so items like it rank higher next; the shopper's own-items
signals ("repeat") count it too.
The next training run learns it like any other item.
"""

from __future__ import annotations

import copy
import dataclasses

import numpy as np
import pandas as pd
import scipy.sparse as sp

from features.infra import DataError
from features.item_features import metadata_columns, new_item_rows
from features.vocab import Vocabulary
from models.baselines import Baseline
from models.bundle import Bundle
from models.index import ItemIndex
from models.scoring import new_item_vectors


def unknown_attributes(bundle: Bundle, names: list[str]) -> list[str]:
    """The names among ``names`` that are not item metadata columns of ``bundle``."""
    known = set(metadata_columns(bundle.items)) | {"item_id", "available"}
    return [name for name in names if name not in known]


def with_items(bundle: Bundle, index: ItemIndex,
               added: pd.DataFrame) -> tuple[Bundle, ItemIndex, list[str]]:
    """``bundle`` and ``index`` with the items of ``added`` (item metadata rows: ``item_id``
    and any of the bundle's metadata columns) that the bundle does not hold yet, in their order,
    and the ids of those items. Neither input is changed: serving swaps to the result."""
    if not len(added):
        return bundle, index, []
    unknown = unknown_attributes(bundle, list(added.columns))
    if unknown:
        raise DataError(f"unknown item attribute {unknown[0]!r}; this model's items have: "
                        f"{', '.join(metadata_columns(bundle.items)) or '(none)'}")
    ids = added["item_id"].astype("string")
    new = added[~ids.isin(bundle.item_vocab.index).to_numpy() & ~ids.duplicated(keep="last")
                .to_numpy()].reset_index(drop=True)
    if not len(new):
        return bundle, index, []
    rows = new_item_rows(bundle.items, new)
    vectors = new_item_vectors(bundle.model, bundle.items, new)
    vocab = Vocabulary(bundle.item_vocab.index.append(pd.Index(rows["item_id"],
                                                               dtype="string")))
    items = pd.concat([bundle.items, rows.astype(bundle.items.dtypes.to_dict(), errors="ignore")],
                      ignore_index=True)
    grown = dataclasses.replace(
        bundle, item_vocab=vocab, items=items,
        item_vectors=np.vstack([bundle.item_vectors, vectors]).astype(np.float32),
        sources={name: _grown(source, vocab) for name, source in bundle.sources.items()},
        info={**bundle.info, "added_items": bundle.info.get("added_items", 0) + len(rows)},
        index=None)
    # dataclasses.replace copies the cached recommender too (it lives in the instance dict):
    # the grown bundle must build its own over the grown items.
    grown.__dict__.pop("recommender", None)
    return grown, index.with_vectors(vectors), rows["item_id"].tolist()


def _grown(source: Baseline, vocab: Vocabulary) -> Baseline:
    """A copy of a sparse signal over the grown vocabulary: the new items score nothing."""
    grown = copy.copy(source)
    extra = len(vocab) - source.n_items
    grown.item_vocab = vocab
    grown.popularity = np.concatenate([source.popularity,
                                       np.zeros(extra, dtype=source.popularity.dtype)])
    similarity = getattr(source, "similarity", None)
    if similarity is not None:
        similarity = similarity.tocsr()
        indptr = np.concatenate([similarity.indptr,
                                 np.full(extra, similarity.indptr[-1], similarity.indptr.dtype)])
        grown.similarity = sp.csr_matrix((similarity.data, similarity.indices, indptr),
                                         shape=(len(vocab), len(vocab)))
    return grown
