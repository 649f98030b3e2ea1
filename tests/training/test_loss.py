"""The softmax's candidates: a sampled set holds every item the batch needs, and the training
pass gives the same user vectors over it as over the full catalog."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import torch
import torch.nn.functional as F

from models.inputs import ItemTable
from models.score import score_matrix
from models.two_tower import TwoTower, TwoTowerConfig
from tests.models.recommender_contract import pairs_prepared
from training.data import collate, make_windows
from training.loss import SmoothedCrossEntropy, batch_loss, sampled_candidates


def batch_of_pairs(history_len: int = 10):
    p = pairs_prepared()
    windows = make_windows(p.split.fold("train"), p.item_vocab, history_len)
    return p, collate(windows, np.arange(12))


def test_sampled_candidates_hold_the_targets_pairs_and_history_items() -> None:
    p, batch = batch_of_pairs()
    negatives = torch.tensor([0, 0, len(p.item_vocab) - 1])
    rows, targets, pair_items, hist_cand = sampled_candidates(batch, negatives)
    assert torch.equal(rows, torch.unique(rows))   # sorted, each item once
    assert torch.equal(rows[targets], batch.targets)
    assert torch.equal(rows[pair_items], batch.pair_items)
    mask = batch.inputs.mask
    assert torch.equal(rows[hist_cand][mask], batch.inputs.items[mask])
    assert (hist_cand[~mask] == 0).all()
    assert {0, len(p.item_vocab) - 1} <= set(rows.tolist())


def test_the_training_pass_reads_the_newest_item_from_either_candidate_set() -> None:
    """Known answer: the user vectors of the training pass (with the newest item's vector) are
    the same whether the candidates are the whole catalog or a sampled set holding the batch's
    items in another order."""
    p, batch = batch_of_pairs()
    torch.manual_seed(0)
    model = TwoTower(TwoTowerConfig(n_items=len(p.item_vocab), dim=16, history_len=10)).eval()
    table = ItemTable.from_features(p.item_features)
    rows, targets, pair_items, hist_cand = sampled_candidates(batch, torch.tensor([1, 2]))
    pairs = (batch.pair_query, batch.pair_events, batch.pair_steps, batch.pair_age_days)

    def users(m: TwoTower, candidates, pair_rows, hist) -> torch.Tensor:
        with torch.no_grad():
            return m(*batch.inputs, *candidates, pairs[0], pair_rows, *pairs[1:], hist)[0]

    full = users(model, table.all, batch.pair_items, batch.inputs.items)
    sampled = users(model, table.take(rows.numpy()), pair_items, hist_cand)
    torch.testing.assert_close(sampled, full)
    # the same weights without the path give other vectors: the newest item is in them
    plain = TwoTower(replace(model.cfg, newest_item=False)).eval()
    plain.load_state_dict(model.state_dict(), strict=False)
    assert not torch.allclose(users(plain, table.all, batch.pair_items, batch.inputs.items), full)


def test_the_sampled_loss_trains() -> None:
    """A sampled softmax step runs end to end and lowers the loss on its own batch."""
    p, batch = batch_of_pairs()
    torch.manual_seed(0)
    model = TwoTower(TwoTowerConfig(n_items=len(p.item_vocab), dim=16, history_len=10))
    table = ItemTable.from_features(p.item_features)
    probs = torch.full((len(p.item_vocab),), 1.0 / len(p.item_vocab))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(20):
        loss = batch_loss(model, model.cfg, batch, table, torch.ones(3), probs, 4,
                          torch.Generator().manual_seed(0))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < losses[0]


def test_label_smoothing_spreads_the_target_share_over_the_whole_catalog() -> None:
    """Known answer: the smoothed loss is (1 - eps) x cross-entropy + eps x the mean over every
    item of -log p(item), from the same logits; the sampled softmax ignores it."""
    p, batch = batch_of_pairs()
    torch.manual_seed(0)
    model = TwoTower(TwoTowerConfig(n_items=len(p.item_vocab), dim=16, history_len=10)).eval()
    table = ItemTable.from_features(p.item_features)
    weights = torch.ones(3)
    with torch.no_grad():
        plain = batch_loss(model, model.cfg, batch, table, weights, None, 0)
        smoothed = batch_loss(model, model.cfg, batch, table, weights, None, 0,
                              label_smoothing=0.3)
        users, items, interest = model(
            *batch.inputs, *table.all, batch.pair_query, batch.pair_items, batch.pair_events,
            batch.pair_steps, batch.pair_age_days, batch.inputs.items)
        users = users.reshape(-1, users.shape[-1])[batch.position]
        log_p = torch.log_softmax(score_matrix(users, items, model.cfg, interest), dim=-1)
    uniform = -log_p.mean(dim=-1).mean()
    torch.testing.assert_close(smoothed, 0.7 * plain + 0.3 * uniform)
    assert not torch.isclose(smoothed, plain)
    probs = torch.full((len(p.item_vocab),), 1.0 / len(p.item_vocab))

    def sampled(eps: float) -> torch.Tensor:
        with torch.no_grad():
            return batch_loss(model, model.cfg, batch, table, weights, probs, 4,
                              torch.Generator().manual_seed(0), label_smoothing=eps)
    torch.testing.assert_close(sampled(0.3), sampled(0.0))


def test_the_smoothed_loss_and_its_gradient_are_pytorchs() -> None:
    """The one-pass kernel gives F.cross_entropy(label_smoothing=)'s losses and gradients."""
    torch.manual_seed(0)
    logits = (torch.randn(7, 50, dtype=torch.float64) * 5).requires_grad_()
    targets = torch.randint(0, 50, (7,))
    row_weights = torch.rand(7, dtype=torch.float64)
    ours = SmoothedCrossEntropy.apply(logits, targets, 0.3)
    (ours * row_weights).sum().backward()
    grad, logits.grad = logits.grad, None
    theirs = F.cross_entropy(logits, targets, reduction="none", label_smoothing=0.3)
    (theirs * row_weights).sum().backward()
    torch.testing.assert_close(ours, theirs)
    torch.testing.assert_close(grad, logits.grad)
