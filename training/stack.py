"""Choosing the ranking stack's weights (models/blend.py) on the validation fold.

The sparse sources are fitted on the events before the validation window and the towers are
scored with item features as of that cut, so the weights are chosen on exactly the information
the test-time stack will have one window later, and nothing from the test window.
"""

from __future__ import annotations

import pandas as pd

from features.pipeline import Prepared
from models.baselines import Baseline
from models.blend import BlendConfig, BlendWeights, choose_weights, fit_source
from models.scoring import TwoTowerRecommender, compute_item_vectors
from models.two_tower import TwoTower
from training.evaluate import build_task


def tune_blend(model: TwoTower, prepared: Prepared, valid_features: pd.DataFrame,
               cfg: BlendConfig, seed: int = 0) -> BlendWeights:
    """Weights of ``cfg.sources`` next to the towers; all 0 when validation has no targets."""
    task = build_task(prepared, "valid", max_users=cfg.max_users, seed=seed)
    if len(task) == 0 or not cfg.sources:
        return BlendWeights({name: 0.0 for name in cfg.sources})
    towers = TwoTowerRecommender(model, compute_item_vectors(model, valid_features))
    sources = {name: fit_source(name, prepared, "valid") for name in cfg.sources}
    return choose_weights(towers, sources, task.histories, task.targets, task.exclude, cfg)


def sources_for_test(prepared: Prepared, cfg: BlendConfig,
                     fitted: dict[str, Baseline] | None = None) -> dict[str, Baseline]:
    """The sources fitted for the test fold (reusing baselines already fitted there)."""
    fitted = fitted or {}
    return {name: fitted.get(name) or fit_source(name, prepared, "test") for name in cfg.sources}
