"""Choosing the ranking stack's weights (models/blend.py) on the validation fold.

The sparse sources are fitted on the events before the validation window and the towers are
scored with item features as of that cut, so the weights are chosen on exactly the information
the test-time stack will have one window later, and nothing from the test window.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from features.history import Histories
from features.infra import phase
from features.pipeline import Prepared
from models.baselines import Baseline
from models.blend import BlendConfig, BlendWeights, fit_source, signal
from models.scoring import TwoTowerRecommender, compute_item_vectors
from models.two_tower import TwoTower
from training.evaluate import build_task
from training.metrics import ndcg_at_k


def tune_blend(model: TwoTower, prepared: Prepared, valid_features: pd.DataFrame,
               cfg: BlendConfig, seed: int = 0) -> BlendWeights:
    """Weights of ``cfg.sources`` next to the towers; all 0 when validation has no targets."""
    task = build_task(prepared, "valid", max_users=cfg.max_users, seed=seed)
    if len(task) == 0 or not cfg.sources:
        return BlendWeights({name: 0.0 for name in cfg.sources})
    with phase("stack", f"choosing {len(cfg.sources)} weights on {len(task):,} validation "
                        "shoppers"):
        towers = TwoTowerRecommender(model, compute_item_vectors(model, valid_features))
        sources = {name: fit_source(name, prepared, "valid") for name in cfg.sources}
        return choose_weights(towers, sources, task.histories, task.targets, task.exclude, cfg)


def sources_for_test(prepared: Prepared, cfg: BlendConfig,
                     fitted: dict[str, Baseline] | None = None) -> dict[str, Baseline]:
    """The sources fitted for the test fold (reusing baselines already fitted there)."""
    fitted = fitted or {}
    return {name: fitted.get(name) or fit_source(name, prepared, "test") for name in cfg.sources}


def _ndcg(scores: torch.Tensor, target_mask: torch.Tensor, n_targets: np.ndarray,
          k: int) -> float:
    """Mean NDCG@k of dense scores against a dense target mask (``training.metrics``)."""
    top = torch.topk(scores, k, dim=1).indices
    hits = torch.gather(target_mask, 1, top).numpy()
    return float(ndcg_at_k(hits, n_targets, k).mean())


def choose_weights(towers: TwoTowerRecommender, sources: dict[str, Baseline], histories: Histories,
                   targets: tuple[np.ndarray, np.ndarray],
                   exclude: tuple[np.ndarray, np.ndarray] | None,
                   cfg: BlendConfig) -> BlendWeights:
    """Coordinate ascent over ``cfg.grid`` for each source's weight, maximizing NDCG@k.

    ``targets``/``exclude`` are CSR (offsets, item rows) per history, as in
    ``training.evaluate.EvalTask``. Ties keep the smaller weight, so a useless source stays off.
    """
    n_users, n_items = len(histories), towers.n_items
    keep = min(n_users, max(1, cfg.max_cells // max(n_items * (len(sources) + 1), 1)))
    rows = np.arange(keep)
    hist = histories.select(rows)
    t_off, t_items = targets
    t_off, t_items = t_off[:keep + 1], t_items[:t_off[keep]]
    target_mask = torch.zeros(keep, n_items, dtype=torch.bool)
    target_mask[np.repeat(rows, np.diff(t_off)), t_items] = True
    n_targets = np.diff(t_off)
    base = torch.from_numpy(towers.score(hist))
    if exclude is not None:
        e_off, e_items = exclude
        e_off, e_items = e_off[:keep + 1], e_items[:e_off[keep]]
        base[np.repeat(rows, np.diff(e_off)), e_items] = -torch.inf

    parts, scales = {}, {}
    for name, source in sources.items():
        raw = source.score(hist)
        positive_max = raw.max(axis=1)
        positive_max = positive_max[positive_max > 1e-12]
        scales[name] = float(np.median(positive_max)) if len(positive_max) else 1.0
        parts[name] = torch.from_numpy(signal(raw, scales[name]))

    k = min(cfg.k, n_items)
    weights = {name: 0.0 for name in sources}

    def others(name: str) -> torch.Tensor:
        """The stack's scores with every source but ``name`` at its current weight."""
        scores = base.clone()
        for other, value in weights.items():
            if value and other != name:
                scores.add_(parts[other], alpha=value)
        return scores

    towers_only = best = _ndcg(base, target_mask, n_targets, k)
    for _ in range(cfg.rounds):
        changed = False
        for name in sources:
            # One pass over the (users, items) scores per trial: the other sources are summed
            # once per source, not once per trial.
            rest = others(name)
            for value in cfg.grid:
                trial = torch.add(rest, parts[name], alpha=value) if value else rest
                score = _ndcg(trial, target_mask, n_targets, k)
                if score > best + 1e-9:
                    best, weights, changed = score, {**weights, name: float(value)}, True
        if not changed:
            break
    return BlendWeights(weights, scales, best, towers_only)
