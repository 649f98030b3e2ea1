"""The score formula of the towers, one for training's softmax and for serving."""

from __future__ import annotations

import torch

from models.two_tower import TwoTowerConfig


def score_matrix(users: torch.Tensor, items: torch.Tensor, cfg: TwoTowerConfig,
                 interest: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None,
                 matmul_dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The score formula, for training's softmax and for serving alike: (users, items) logits
    are cosine / temperature, plus the interest boosts ``(query, item, boost)`` of
    ``TwoTower.interest`` when the model uses the term.

    The temperature scales the (users, dim) vectors rather than the (users, items) logits, and
    the boosts are added in place: on a full-catalog softmax those logits are the largest tensor
    of a training step, and every extra pass over them costs as much as the matmul.
    ``matmul_dtype`` bfloat16 (training, ``training.kernels``) rounds the two factors for the
    matmul; the logits are float32 either way.
    """
    scaled = users / cfg.temperature
    if matmul_dtype == torch.float32:
        logits = scaled @ items.T
    else:
        logits = (scaled.to(matmul_dtype) @ items.to(matmul_dtype).T).float()
    if interest is not None and cfg.interest and interest[0].numel():
        query, item, boost = interest
        logits.index_put_((query, item), boost, accumulate=True)
    return logits
