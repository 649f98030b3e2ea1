"""The served model: refitted on every event in DATA with the settings the evaluation chose.

The evaluation run holds the newest events out (the last days, or each shopper's last items) to
choose the epoch count, the ranking stack's weights and everything else, and to report honest
test metrics. A model fitted on that training fold alone would never know the newest items nor
what shoppers did last: on a fast catalog it then loses to a "recently viewed" rule. So the
bundle that is registered and served is fitted again on *all* events (split ``all``: one fold,
no targets) with those settings fixed: vocabulary, towers, sparse signals, popularity,
bought-together and histories all come from the whole log.

The epoch count is scaled to the data: the refit trains on as many examples, relative to the
data it has, as the best evaluation epoch had seen (the same epochs when every epoch uses every
window; more sampled epochs when epochs are capped samples and the refit has more data).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

from features.config import SERVING_SPLIT, FeatureConfig
from features.pipeline import Prepared, prepare
from features.spec import DataSpec
from models.baselines import Baseline
from models.blend import BlendWeights, fit_source
from models.two_tower import TwoTowerConfig
from training.fit import FitResult, TrainConfig, fit, newest_weight, sized_for


@dataclass(frozen=True)
class RefitPlan:
    epochs: int           # epochs of the refit
    data_ratio: float     # events in DATA / events in the evaluation's training fold
    minutes: float        # the fit's expected wall time, from the evaluation's epochs

    def to_dict(self) -> dict:
        return {"epochs": self.epochs, "data_ratio": round(self.data_ratio, 4),
                "expected_minutes": round(self.minutes, 3)}


def plan_refit(evaluation: FitResult, train_events: int, all_events: int,
               max_epoch_examples: int) -> RefitPlan:
    """How long the refit trains: as many examples per event of data as the best epoch had."""
    ratio = all_events / max(train_events, 1)
    epochs_run = max(len(evaluation.history), 1)
    per_epoch = evaluation.history[0]["examples"] if evaluation.history else 0
    best = max(evaluation.best_epoch, 1)
    if per_epoch <= 0:
        return RefitPlan(best, ratio, 0.0)
    wanted = best * per_epoch * ratio                      # examples the refit should see
    refit_epoch = per_epoch * ratio                        # one pass over the refit's windows
    if max_epoch_examples > 0:
        refit_epoch = min(refit_epoch, float(max_epoch_examples))
    epochs = max(1, math.ceil(wanted / refit_epoch - 1e-6))
    minutes_per_example = evaluation.seconds / 60 / max(per_epoch * epochs_run, 1)
    return RefitPlan(epochs, ratio, minutes_per_example * refit_epoch * epochs)


def reserve_for_refit(train_events: int, all_events: int, max_epoch_examples: int):
    """``fit``'s ``reserve_minutes``: the refit's expected minutes given the best epoch so far,
    so the evaluation fit stops in time for the refit to fit the run's budget too."""
    return lambda best: plan_refit(best, train_events, all_events, max_epoch_examples).minutes


def refit_data(spec: DataSpec, cfg: FeatureConfig) -> Prepared:
    """``spec`` prepared with every event in the training fold (cached like any split)."""
    return prepare(spec, replace(cfg, split=SERVING_SPLIT))


@dataclass
class Refit:
    prepared: Prepared
    result: FitResult
    plan: RefitPlan
    sources: dict[str, Baseline]

    def info(self) -> dict:
        m = self.prepared.meta
        return {**self.plan.to_dict(), "seconds": round(self.result.seconds, 3),
                "epochs_run": len(self.result.history), "examples": self.result.examples,
                "events": m["events"], "users": m["users"], "items": len(self.prepared.item_vocab),
                "last_event": m.get("last_event"), "history": self.result.history}


def refit(prepared: Prepared, model_cfg: TwoTowerConfig, cfg: TrainConfig,
          evaluation: FitResult, blend: BlendWeights, minutes_left: float,
          on_epoch=None) -> Refit:
    """The served model and its sparse signals, fitted on every event of ``prepared``'s data."""
    full = refit_data(prepared.spec, prepared.config)
    plan = plan_refit(evaluation, len(prepared.split.fold("train")), len(full.events),
                      cfg.max_epoch_examples)
    # The plan's epochs, every one kept; a slower machine stops at the budget instead.
    refit_cfg = replace(cfg, epochs=plan.epochs, patience=plan.epochs + 1,
                        max_minutes=max(minutes_left, 0.0))
    result = fit(full, sized_for(model_cfg, full), refit_cfg, None, on_epoch=on_epoch,
                 keep_last=True)
    chosen = newest_weight(evaluation.model)   # chosen on validation, as the epochs were
    if chosen is not None:
        result.model.newest_weight.fill_(chosen)
    sources = {name: fit_source(name, full, "test") for name in blend.active}
    return Refit(full, result, plan, sources)
