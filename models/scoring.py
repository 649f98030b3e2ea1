"""The trained two-tower model behind the shared ``Recommender`` contract.

``user_vectors`` and ``item_vectors`` are what the FAISS index and the service use; ``score``
adds the interest term for full-catalog ranking in evaluation and batch scoring.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pandas as pd
import torch

from features.history import Histories
from features.item_attributes import TOKENS_COLUMN, AttributeTable
from features.item_features import new_item_rows
from models.base import Recommender
from models.inputs import HistoryBatch, ItemTable, history_batch
from models.score import score_matrix
from models.two_tower import TwoTower


@torch.no_grad()
def compute_item_vectors(model: TwoTower, item_features: pd.DataFrame) -> np.ndarray:
    """Every item's vector (vocabulary order): what the index holds and the service ranks."""
    model.eval()
    return model.item_embed(*ItemTable.from_features(item_features).all).numpy() \
        .astype(np.float32)


@torch.no_grad()
def new_item_vectors(model: TwoTower, known: pd.DataFrame, new: pd.DataFrame) -> np.ndarray:
    """Vectors of items the model was not trained on (``new``: item metadata rows, as the items
    file has them), from their category and attributes alone: no id row. ``known`` is the
    model's item table (``item_features`` or a bundle's items), whose category and attribute
    vocabularies the new items are read with (``features.item_features.new_item_rows``); this
    is what ``compute_item_vectors`` gives those rows once they are appended to ``known``."""
    model.eval()
    rows = new_item_rows(known, new)
    cats = rows["category_idx"].to_numpy(dtype=np.int64) if "category_idx" in rows else \
        np.full(len(rows), -1, dtype=np.int64)
    table = ItemTable(cats, AttributeTable.from_features(known).encode(rows[TOKENS_COLUMN]))
    inputs = table.take()
    unknown_rows = torch.full((len(new),), -1, dtype=torch.long)
    return model.item_embed(*replace(inputs, items=unknown_rows)).numpy().astype(np.float32)


class TwoTowerRecommender(Recommender):
    """Scores under ``torch.inference_mode``: serving never needs autograd's bookkeeping, which
    costs a little on each of the few hundred small tensor operations of a request."""

    name = "towers"

    def __init__(self, model: TwoTower, item_vectors: np.ndarray) -> None:
        self.model = model.eval()
        self.item_vectors = np.ascontiguousarray(item_vectors, dtype=np.float32)
        self._items_t = torch.from_numpy(self.item_vectors)

    @property
    def n_items(self) -> int:
        return self.item_vectors.shape[0]

    def _trained_items(self, histories: Histories) -> Histories:
        """``histories`` without events on items added after training (rows past the id
        table): the user tower and the interest term read trained items only."""
        added = histories.item_idx >= self.model.cfg.n_items
        return histories.keep(~added) if added.any() else histories

    def _encode(self, histories: Histories) -> tuple[HistoryBatch, torch.Tensor]:
        """The batch of the histories' trained items and their user vectors (zero for an empty
        history). The newest item's vector (``TwoTower.with_newest_item``) is its row of the
        item vectors, so an item added after training (attributes only) that a shopper has
        just looked at counts too."""
        lengths = histories.lengths
        last = np.maximum(histories.offsets[1:] - 1, 0)
        newest = histories.item_idx[last] if len(histories.item_idx) else np.zeros_like(last)
        present = torch.from_numpy(lengths > 0)
        batch = history_batch(self._trained_items(histories), self.model.cfg.history_len,
                              trim=self.model.ignores_padding)
        vectors = None
        if self.model.cfg.history_item_tower:
            vectors = self._items_t[batch.inputs.items]  # user_embed masks the padding
        users = self.model.user_embed(*batch.inputs, history_vectors=vectors)
        users = users * batch.inputs.mask.any(dim=1, keepdim=True)
        users = self.model.with_newest_item(users, self._items_t[torch.from_numpy(newest)],
                                            present)
        return batch, users

    @torch.inference_mode()
    def user_vectors(self, histories: Histories) -> np.ndarray:
        """Normalized user vectors (n, dim); empty histories give zero vectors."""
        if len(histories) == 0:  # TorchRec cannot split a KeyedJaggedTensor of batch size 0
            return np.zeros((0, self.model.cfg.dim), dtype=np.float32)
        return self._encode(histories)[1].numpy().astype(np.float32)

    @torch.inference_mode()
    def score(self, histories: Histories) -> np.ndarray:
        if len(histories) == 0:
            return np.zeros((0, self.n_items), dtype=np.float32)
        batch, users = self._encode(histories)
        interest = self.model.interest(batch.hist_items, batch.hist_events, batch.steps_back,
                                       batch.age_days, batch.query) \
            if self.model.cfg.interest and batch.query.numel() else None
        return score_matrix(users, self._items_t, self.model.cfg, interest).numpy()

    @torch.inference_mode()
    def score_items(self, histories: Histories, rows: np.ndarray) -> np.ndarray:
        rows = np.asarray(rows, dtype=np.int64)
        if len(histories) == 0 or not len(rows):
            return np.zeros((len(histories), len(rows)), dtype=np.float32)
        batch, users = self._encode(histories)
        interest = None
        if self.model.cfg.interest and batch.query.numel():
            query, item, boost = self.model.interest(batch.hist_items, batch.hist_events,
                                                     batch.steps_back, batch.age_days,
                                                     batch.query)
            # The asked items' columns by binary search (no catalog-long table per call).
            order = torch.from_numpy(np.argsort(rows, kind="stable"))
            ordered = torch.from_numpy(rows)[order]
            at = torch.searchsorted(ordered, item).clamp(max=len(rows) - 1)
            keep = ordered[at] == item   # boosts of the asked items only, at their columns
            interest = (query[keep], order[at][keep], boost[keep])
        return score_matrix(users, self._items_t[torch.from_numpy(rows)], self.model.cfg,
                            interest).numpy()


def recommender_for(model: TwoTower, item_features: pd.DataFrame,
                    sources: dict | None = None, blend: object | None = None) -> Recommender:
    """The recommender a trained model is evaluated and served as: the one place that decides
    how tower scores and sparse signals combine, so evaluation, batch scoring and the service
    rank the same way. Without ``blend`` (``models.blend.BlendWeights``) or with every weight
    at 0 it is the towers alone."""
    towers = TwoTowerRecommender(model, compute_item_vectors(model, item_features))
    if blend is None or not blend.active:
        return towers
    from models.blend import BlendedRecommender  # local: blend builds on this module

    return BlendedRecommender(towers, sources or {}, blend)
