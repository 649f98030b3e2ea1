"""Softmax cross-entropy for next-item prediction: full over the catalog where it fits, sampled
with a popularity-corrected (logQ) candidate set where it does not."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from models.inputs import ItemTable
from models.score import score_matrix
from models.two_tower import TwoTowerConfig
from training.data import WindowBatch


def batch_loss(model: torch.nn.Module, model_config: TwoTowerConfig, batch: WindowBatch,
               item_table: ItemTable, target_weights: torch.Tensor,
               sampler_probs: torch.Tensor | None, n_negatives: int,
               generator: torch.Generator | None = None,
               matmul_dtype: torch.dtype = torch.float32,
               label_smoothing: float = 0.0) -> torch.Tensor:
    """Weighted mean cross-entropy over the batch's target positions.

    ``model`` is a ``TwoTower`` or the ``DistributedModelParallel`` wrapping one: only its
    forward is called, so sharded tables and gradient all-reduce work the same way.

    sampler_probs None: full softmax over every item. Otherwise ``n_negatives`` items are drawn
    from ``sampler_probs`` and, with the batch's targets and history items, form the candidate
    set; each candidate's logit is corrected by -log(expected draws) so the estimate stays
    unbiased towards popular items. ``matmul_dtype``: of the logits' matmul (``score_matrix``).
    ``label_smoothing``: the target's share of the loss spread over every item, full softmax
    only: over a sampled set it would go to the popular items the sampler draws most.
    """
    cfg = model_config
    if sampler_probs is None:   # every item is a candidate, at its own row
        candidates = item_table.all
        targets, pair_items, hist_cand = batch.targets, batch.pair_items, batch.inputs.items
        logq = None
    else:
        negatives = torch.multinomial(sampler_probs, n_negatives, replacement=True,
                                      generator=generator)
        rows, targets, pair_items, hist_cand = sampled_candidates(batch, negatives)
        logq = torch.log(1.0 - (1.0 - sampler_probs[rows]) ** n_negatives + 1e-12)
        candidates = item_table.take(rows.numpy())
    users, items, interest = model(
        *batch.inputs, *candidates,
        batch.pair_query, pair_items, batch.pair_events, batch.pair_steps, batch.pair_age_days,
        hist_cand)
    users = users.reshape(-1, users.shape[-1])[batch.position]
    logits = score_matrix(users, items, cfg, interest, matmul_dtype)
    if logq is not None:
        logits = logits - logq
    weights = target_weights[batch.target_events]
    if label_smoothing and logq is None:
        losses = SmoothedCrossEntropy.apply(logits, targets, label_smoothing)
    else:
        losses = F.cross_entropy(logits, targets, reduction="none")
    return (losses * weights).sum() / weights.sum().clamp(min=1e-9)


def sampled_candidates(batch: WindowBatch, negatives: torch.Tensor
                       ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """A sampled softmax's candidate item rows (sorted, unique): the batch's targets, its
    history items and ``negatives``. Returns them with the candidate position of each target,
    of each interest pair's item and of each history event ((B, L), 0 where padded): the newest
    event's item vector is part of each position's user vector (``TwoTower.with_newest_item``)."""
    items, present = batch.inputs.items, batch.inputs.mask
    rows, inverse = torch.unique(
        torch.cat([batch.targets, batch.pair_items, items[present], negatives]),
        return_inverse=True)
    n_t, n_p = batch.targets.numel(), batch.pair_items.numel()
    hist_cand = torch.zeros_like(items)
    hist_cand[present] = inverse[n_t + n_p:n_t + n_p + int(present.sum())]
    # the interest term is indexed by candidate position
    return rows, inverse[:n_t], inverse[n_t:n_t + n_p], hist_cand


class SmoothedCrossEntropy(torch.autograd.Function):
    """Per-row (1 - eps) x cross-entropy + eps x the mean over every item of -log p(item).

    One pass each way: the gradient is softmax - (1 - eps) x onehot - eps / items, written
    straight from the saved log-probabilities. Composed from log_softmax, gather and mean it
    made a Sports step 20% slower than plain cross-entropy (45% as logsumexp - mean logit), and
    F.cross_entropy(label_smoothing=) gave two runs of one seed different models.
    """

    @staticmethod
    def forward(ctx, logits: torch.Tensor, targets: torch.Tensor, eps: float) -> torch.Tensor:
        log_p = torch.log_softmax(logits, dim=-1)
        losses = -(1.0 - eps) * log_p.gather(1, targets.unsqueeze(1)).squeeze(1) \
            - eps * log_p.mean(dim=-1)
        ctx.save_for_backward(log_p, targets)
        ctx.eps = eps
        return losses

    @staticmethod
    def backward(ctx, grad_losses: torch.Tensor):
        log_p, targets = ctx.saved_tensors
        grad = log_p.exp().sub_(ctx.eps / log_p.shape[1])
        grad[torch.arange(len(targets)), targets] -= 1.0 - ctx.eps
        return grad.mul_(grad_losses.unsqueeze(1)), None, None

