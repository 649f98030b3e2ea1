"""The trained two-tower model behind the shared ``Recommender`` contract.

``user_vectors`` and ``item_vectors`` are what the FAISS index and the service use; ``score``
adds the interest term for full-catalog ranking in evaluation and batch scoring.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from features.history import Histories
from models.base import Recommender
from models.inputs import history_batch
from models.two_tower import TwoTower, score_matrix


def item_tensors(item_features: pd.DataFrame) -> tuple[torch.Tensor, torch.Tensor]:
    """(item rows, category rows) of every item, in vocabulary order."""
    item_idx = torch.arange(len(item_features), dtype=torch.long)
    cats = torch.from_numpy(item_features["category_idx"].to_numpy(dtype=np.int64, copy=True)) \
        if "category_idx" in item_features else torch.full_like(item_idx, -1)
    return item_idx, cats


@torch.no_grad()
def compute_item_vectors(model: TwoTower, item_features: pd.DataFrame) -> np.ndarray:
    model.eval()
    item_idx, cats = item_tensors(item_features)
    return model.item_embed(item_idx, cats).numpy().astype(np.float32)


class TwoTowerRecommender(Recommender):
    name = "towers"

    def __init__(self, model: TwoTower, item_vectors: np.ndarray) -> None:
        self.model = model.eval()
        self.item_vectors = np.ascontiguousarray(item_vectors, dtype=np.float32)
        self._items_t = torch.from_numpy(self.item_vectors)

    @property
    def n_items(self) -> int:
        return self.item_vectors.shape[0]

    @torch.no_grad()
    def user_vectors(self, histories: Histories) -> np.ndarray:
        """Normalized user vectors (n, dim); empty histories give zero vectors."""
        if len(histories) == 0:  # TorchRec cannot split a KeyedJaggedTensor of batch size 0
            return np.zeros((0, self.model.cfg.dim), dtype=np.float32)
        batch = history_batch(histories, self.model.cfg.history_len)
        vecs = self.model.user_embed(*batch.inputs)
        vecs = vecs * batch.inputs.mask.any(dim=1, keepdim=True)
        return vecs.numpy().astype(np.float32)

    @torch.no_grad()
    def score(self, histories: Histories) -> np.ndarray:
        if len(histories) == 0:
            return np.zeros((0, self.n_items), dtype=np.float32)
        batch = history_batch(histories, self.model.cfg.history_len)
        users = self.model.user_embed(*batch.inputs)
        users = users * batch.inputs.mask.any(dim=1, keepdim=True)
        interest = self.model.interest(batch.hist_items, batch.hist_events, batch.steps_back,
                                       batch.age_days, batch.query) \
            if self.model.cfg.interest and batch.query.numel() else None
        return score_matrix(users, self._items_t, self.model.cfg, interest).numpy()


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
