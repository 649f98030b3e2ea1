"""`make train DATA=...`: train the two-tower model, compare it with the baselines, log it all.

One run: prepare the data (cached), fit every baseline, fit the model with early stopping on
NDCG@10 of the validation fold, evaluate the model and the baselines on the test fold with the
same full-ranking protocol, print the comparison, and log settings, data fingerprint, per-epoch
metrics, results, figures and the serving bundle to MLflow (``training/tracking.py`` names them).
The bundle is registered as model ``tailor`` with alias ``candidate``; it becomes ``champion``
when its lift over the champion on ``test/tailor/ndcg_at_10`` is beyond the bootstrap margin
(``training/promotion.py``), or with ``--force-promote``.

Under ``torchrun`` every rank prepares the data and runs ``fit`` (which owns the process group);
only rank 0 evaluates, prints, logs to MLflow and writes the bundle.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pandas as pd

from features.cli import add_data_args, spec_from_args
from features.config import (
    FeatureConfig,
    add_config_args,
    add_feature_args,
    config_from_args,
    feature_config_from_args,
)
from features.infra import add_traceback_arg, command, git_state
from features.item_features import item_features
from features.pipeline import Prepared, prepare
from models.base import Recommender
from models.baselines import BASELINES
from models.blend import BlendConfig, BlendWeights
from models.bundle import Bundle, build_bundle
from models.scoring import TwoTowerRecommender, compute_item_vectors, recommender_for
from models.two_tower import TwoTower, TwoTowerConfig
from training.challenge import champion_scorer
from training.distributed import Group
from training.evaluate import (
    DEFAULT_KS,
    build_task,
    evaluate_all_per_user,
    evaluate_task,
    format_table,
)
from training.fit import FitResult, TrainConfig, fit, newest_weight, sized_for
from training.kernels import LOGITS_DTYPES
from training.promotion import promote
from training.refit import Refit, refit, reserve_for_refit
from training.run_summary import (
    MAIN_METRIC,
    MODEL,
    TOWERS,
    data_source,
    lineage,
    run_description,
    run_name,
)
from training.stack import sources_for_test, tune_blend
from training.tracking import RunLogger, metric_key

SCORE_KEY = metric_key("test", MODEL, MAIN_METRIC)
VALID_USERS = 2000                 # validation sample: cheap enough to score every epoch
PRINT_KS = (10, 20)                # the printed table; MLflow gets every cut-off
UNKNOWN_USER = "new-shopper"       # the input example's unseen shopper (popular fallback)

# Sizes come from the data; the history length is the feature stage's (one L for both).
MODEL_FROM_DATA = ("n_items", "n_categories", "n_attributes", "history_len")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tailor-train",
        description="Train the two-tower model on a data set, compare it with the baselines on "
                    "the test fold, print the comparison and log the run to MLflow: settings, "
                    "data fingerprint, per-epoch metrics, test metrics, figures and the serving "
                    "bundle, registered as model 'tailor' (alias candidate; champion when it "
                    "beats the champion on test ndcg@10 for the same data and protocol).",
        epilog="Store: $MLFLOW_TRACKING_URI, else mlflow/mlflow.db (browse: make mlflow-ui). "
               "Processed data is cached under $TAILOR_CACHE (default .cache/tailor).")
    add_data_args(parser)
    add_feature_args(parser)
    add_config_args(parser, TwoTowerConfig, title="model", skip=MODEL_FROM_DATA)
    add_config_args(parser, TrainConfig, title="training", choices={"logits_dtype": LOGITS_DTYPES},
                    flags={"seed": "train-seed"})  # --seed is the feature stage's split seed
    add_config_args(parser, BlendConfig, title="ranking stack",
                    flags={"sources": "stack-sources", "grid": "stack-grid",
                           "rounds": "stack-rounds", "max_users": "stack-users",
                           "max_cells": "stack-max-cells", "k": "stack-k"})
    run = parser.add_argument_group("run")
    run.add_argument("--valid-users", type=int, default=VALID_USERS, metavar="N",
                     help="validation shoppers scored after every epoch, a seeded sample "
                          "(default: %(default)s)")
    run.add_argument("--run-name", metavar="NAME",
                     help="MLflow run name (default: data, encoder, dim and start time, e.g. "
                          "amazon-Toys-sasrec-d64-20261202-0915)")
    run.add_argument("--force-promote", action="store_true",
                     help="make this model the champion even if it does not beat the current "
                          "one or was evaluated on other data")
    run.add_argument("--out", metavar="DIR",
                     help="also save the bundle to DIR (replaced if it exists)")
    run.add_argument("--refit", action=argparse.BooleanOptionalAction, default=True,
                     help="after evaluating, refit the served bundle on every event in DATA with "
                          "the chosen settings (epochs scaled to the data, the stack's weights), "
                          "so it knows the newest items and events; --no-refit serves the model "
                          "fitted on the training fold, as evaluated (default: %(default)s)")
    run.add_argument("--no-mlflow", action="store_true",
                     help="log nothing to MLflow and register nothing (a quick experiment; "
                          "with --out the bundle is still saved)")
    add_traceback_arg(parser)
    return parser


# --- the pure middle ---------------------------------------------------------------------------

def model_config(args: argparse.Namespace, prepared: Prepared) -> TwoTowerConfig:
    return sized_for(config_from_args(TwoTowerConfig, args, n_items=0), prepared)


def features_at_valid_cut(prepared: Prepared) -> pd.DataFrame:
    """Item features as of the validation cut.

    ``prepared.item_features`` counts popularity up to the test cut, i.e. inside the validation
    window: a model that uses popularity would be validated on what it is asked to predict.
    """
    return item_features(prepared.split.history_for("valid"), prepared.items,
                         prepared.item_vocab, popularity_days=prepared.config.popularity_days,
                         cut=prepared.split.valid_start)


def validator(prepared: Prepared, max_users: int,
              seed: int) -> Callable[[TwoTower], float] | None:
    """NDCG@10 on a seeded sample of the validation fold, ranked as evaluation ranks.

    None when the validation fold has no targets: fit then stops on the training loss.
    """
    task = build_task(prepared, "valid", max_users=max_users, seed=seed)
    if len(task) == 0:
        return None
    feats = features_at_valid_cut(prepared)
    k = int(MAIN_METRIC.split("@")[1])
    return lambda model: evaluate_task(recommender_for(model, feats), task, ks=(k,))[MAIN_METRIC]


def fit_baselines(prepared: Prepared) -> tuple[dict[str, Recommender], dict[str, float]]:
    """Every baseline fitted for the test fold, with its fit time in seconds.

    ``repeat`` (the shopper's own recent items) means nothing under leave-one-out, where every
    item seen before is excluded from the ranking: it would only show its popularity fill.
    (Under a predefined split only purchases are excluded: viewed and carted items stay.)
    """
    models, seconds = {}, {}
    for name, cls in BASELINES.items():
        if name == "repeat" and prepared.split.protocol == "leave-one-out":
            continue
        started = time.perf_counter()
        models[name] = cls.from_prepared(prepared, fold="test")
        seconds[name] = round(time.perf_counter() - started, 3)
    return models, seconds


def results_table(model: Recommender, towers: Recommender, result: FitResult,
                  baselines: dict[str, Recommender], baseline_seconds: dict[str, float],
                  prepared: Prepared) -> tuple[pd.DataFrame, pd.Series]:
    """Test metrics of the model, its towers alone and every baseline (one shared task), and
    the model's ``MAIN_METRIC`` per test shopper (promotion's bootstrap resamples them)."""
    table, per_user = evaluate_all_per_user({MODEL: model, TOWERS: towers, **baselines},
                                            prepared, "test", ks=DEFAULT_KS,
                                            per_user=MAIN_METRIC)
    table["fit_seconds"] = pd.Series({MODEL: round(result.seconds, 3),
                                      TOWERS: round(result.seconds, 3), **baseline_seconds})
    return table, per_user[MODEL]


def bundle_info(configs: dict, result: FitResult, table: pd.DataFrame) -> dict:
    """What the bundle records beside the features config and the data fingerprint."""
    git = git_state()
    return {"train": configs["train"], "stack": configs["stack"],
            "fit": {"best_epoch": result.best_epoch, "best_valid_score": result.best_score,
                    "epochs": len(result.history), "examples": result.examples,
                    "seconds": round(result.seconds, 3), "logits_dtype": result.logits_dtype,
                    "newest_weight": newest_weight(result.model), "history": result.history},
            "metrics": {"test": table.to_dict(orient="index")},
            "created_at": pd.Timestamp.now(tz="UTC").isoformat(),
            "git": {"commit": git["git.commit"], "dirty": git["git.dirty"]}}


def input_example(bundle: Bundle) -> pd.DataFrame:
    """A known shopper and an unseen one: the signature's example and a smoke test."""
    users = set(bundle.histories.user_ids.astype(str))
    unknown = UNKNOWN_USER
    while unknown in users:  # a shop may really have a shopper called that
        unknown += "-"
    known = sorted(users)[:1]
    return pd.DataFrame({"user_id": [*known, unknown], "k": [5] * (len(known) + 1)})


# --- the run -----------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.valid_users < 1:
        raise ValueError(f"--valid-users must be >= 1, got {args.valid_users}")
    lead = int(os.environ.get("RANK", 0)) == 0  # torchrun sets RANK; rank 0 reports
    say = (lambda *a: print(*a, flush=True)) if lead else (lambda *a: None)
    spec = spec_from_args(args)
    feature_cfg = feature_config_from_args(args)
    train_cfg = config_from_args(TrainConfig, args)
    blend_cfg = config_from_args(BlendConfig, args)
    if not lead:
        train_cfg = replace(train_cfg, progress=False)
    started = time.perf_counter()
    prepared = prepare(spec, feature_cfg)
    model_cfg = model_config(args, prepared)
    m = prepared.meta
    say(f"data      {m['spec']}: {m['events']:,} events, {m['users']:,} shoppers, "
        f"{m['train_items']:,} items; {m['protocol']} split, test {m['test_targets']:,} "
        f"targets of {m['test_users']:,} shoppers ({m.get('cache')} cache)")
    validate = validator(prepared, args.valid_users, train_cfg.seed)
    if validate is None:
        say("note      no validation targets: early stopping on the training loss")
    # The run's epochs budget covers the refit too: the evaluation fit keeps time for it.
    all_events = len(prepared.events) + int(m.get("dropped_test_rows") or 0)
    reserve = reserve_for_refit(len(prepared.split.fold("train")), all_events,
                                train_cfg.max_epoch_examples) if args.refit else None
    # One process group for both fits under torchrun (None in a single process).
    with Group.open():
        if not lead:  # the other ranks take part in the fits only
            result = fit(prepared, model_cfg, train_cfg, validate, reserve_minutes=reserve)
            if args.refit:
                refit(prepared, model_cfg, train_cfg, result, BlendWeights(), 0.0)
            return 0
        return lead_run(args, prepared, model_cfg, feature_cfg, train_cfg, blend_cfg, validate,
                        reserve, say, started)


def lead_run(args: argparse.Namespace, prepared: Prepared, model_cfg: TwoTowerConfig,
             feature_cfg: FeatureConfig, train_cfg: TrainConfig, blend_cfg: BlendConfig,
             validate: Callable[[TwoTower], float] | None,
             reserve: Callable[[FitResult], float] | None, say: Callable[..., None],
             started: float) -> int:
    """Rank 0 (or the only process): evaluate, refit, report, log and register."""
    m = prepared.meta

    baselines, baseline_seconds = fit_baselines(prepared)
    say(f"baselines {', '.join(baselines)} ({sum(baseline_seconds.values()):.1f} s)")
    configs = {"features": feature_cfg.to_dict(), "model": model_cfg.to_dict(),
               "train": {**train_cfg.to_dict(), "valid_users": args.valid_users},
               "stack": blend_cfg.to_dict()}
    logger = contextlib.nullcontext() if args.no_mlflow else \
        RunLogger(m["name"], run_name=args.run_name or run_name(m, model_cfg),
                  description=f"Training on {m['spec']} ({m['protocol']} split): running.",
                  system_metrics=True)
    with logger as log:
        if log is not None:
            log.log_setup(m, configs)
            log.log_datasets(lineage(prepared), source=data_source(prepared))
            say(f"mlflow    run {log.run_id} in experiment tailor-{m['name']}")
        say(f"model     {model_cfg.encoder} dim {model_cfg.dim}, up to {train_cfg.epochs} "
            f"epochs, early stopping on {'valid ' + MAIN_METRIC if validate else 'the loss'}")
        # Each epoch reaches MLflow as it ends, so a long run can be watched in the UI.
        result = fit(prepared, model_cfg, train_cfg, validate,
                     on_epoch=log.log_epoch if log is not None else None,
                     reserve_minutes=reserve)
        newest = newest_weight(result.model)
        say(f"trained   best epoch {result.best_epoch} of {len(result.history)} "
            f"(valid score {result.best_score:.4f}), {result.examples:,} examples "
            f"in {result.seconds:.1f} s ({result.logits_dtype} logits"
            + ("" if newest is None else f", newest item weighs {newest:g}") + ")")

        blend = tune_blend(result.model, prepared, features_at_valid_cut(prepared), blend_cfg,
                           seed=train_cfg.seed)
        say(f"stack     weights {blend.weights} (valid {MAIN_METRIC} {blend.valid_ndcg:.4f}, "
            f"towers alone {blend.towers_valid_ndcg:.4f})")
        sources = sources_for_test(prepared, blend_cfg, baselines)
        towers = TwoTowerRecommender(result.model,
                                     compute_item_vectors(result.model, prepared.item_features))
        served_ranking = recommender_for(result.model, prepared.item_features, sources, blend)
        table, per_user = results_table(served_ranking, towers, result, baselines,
                                        baseline_seconds, prepared)
        say(f"\ntest fold, {int(table['users'].iloc[0]):,} shoppers ({m['protocol']}; full "
            f"table: results/test.md in the run):\n"
            f"{format_table(table.drop(columns='users'), ks=PRINT_KS)}\n")
        info = {"features": feature_cfg.to_dict(), "data": m,
                **bundle_info(configs, result, table)}
        served: Refit | None = None
        if args.refit:
            say(f"refit     on every event in DATA for serving: {all_events_text(prepared)}")
            served = refit(prepared, model_cfg, train_cfg, result, blend,
                           minutes_left=train_cfg.max_minutes - result.seconds / 60,
                           on_epoch=log.log_refit_epoch if log is not None else None)
            info["refit"] = refit_info = served.info()
            say(f"refit     {len(served.result.history)} epochs (planned {served.plan.epochs}) "
                f"on {refit_info['events']:,} events, {refit_info['items']:,} items "
                f"({len(prepared.item_vocab):,} in the evaluation's training fold), "
                f"{served.result.examples:,} examples in {served.result.seconds:.1f} s")
            bundle = build_bundle(served.prepared, served.result.model, info,
                                  sources=served.sources, blend=blend)
        else:
            bundle = build_bundle(prepared, result.model, info, sources=sources, blend=blend)
        with tempfile.TemporaryDirectory(prefix="tailor-bundle-") as tmp:
            folder = bundle.save(Path(args.out) if args.out else Path(tmp) / "bundle")
            index = bundle.index  # saved inside the bundle, so part of the logged model
            say(f"index     {index.info['factory']} over {index.n_items:,} items (recall@"
                f"{index.info['recall_k']} {index.info['recall']:.3f}, "
                f"{index.info['build_seconds']:.1f} s)")
            if args.out:
                say(f"bundle    {folder}")
            if log is not None:
                version = log.log_bundle(folder, input_example(bundle))  # before the metrics:
                # the served ranking's test metrics are linked to the logged model
                log_results(log, result, table, per_user, validated=validate is not None)
                log.client.log_dict(log.run_id, blend.to_dict(), "stack.json")
                if served is not None:  # what the registered model was fitted on
                    summary = {k: v for k, v in refit_info.items() if k != "history"}
                    log.client.log_dict(log.run_id, summary, "refit.json")
                    for key in ("epochs", "epochs_run", "seconds", "events", "items",
                                "examples"):
                        log.client.log_metric(log.run_id, metric_key("refit", key),
                                              float(summary[key]))
                for name, weight in blend.weights.items():
                    log.client.log_metric(log.run_id, metric_key("stack", "weight", name),
                                          float(weight))
                decision = promote(log.client, version, score_key=SCORE_KEY,
                                   data_hash=m["data_hash"], protocol=m["protocol"],
                                   force=args.force_promote,
                                   score_champion=champion_scorer(prepared, MAIN_METRIC))
                role = "champion" if decision["promoted"] else "candidate"
                say(f"registry  {version.name} v{version.version}: {role} "
                    f"({decision['reason']})")
                log.describe(run_description(m, model_cfg, table, decision))
    fits = result.seconds + (served.result.seconds if served is not None else 0.0)
    say(f"time      {time.perf_counter() - started:.1f} s in all, training {fits:.1f} s"
        + (f" (evaluation {result.seconds:.1f} s + refit {served.result.seconds:.1f} s)"
           if served is not None else ""))
    return 0


def all_events_text(prepared: Prepared) -> str:
    m = prepared.meta
    held = m["events"] - m.get("train_events", m["events"])
    return (f"{m['events']:,} events, {held:,} of them held out by the evaluation"
            + (f" and {m['dropped_test_rows']:,} test rows it left out"
               if m.get("dropped_test_rows") else ""))


def log_results(log: RunLogger, result: FitResult, table: pd.DataFrame, per_user: pd.Series,
                *, validated: bool) -> None:
    """Validation and test results, fit summary and figures (epochs went out as they ended)."""
    log.log_results(table, "test", main=(MODEL, TOWERS), headline=MAIN_METRIC,
                    per_user=per_user)
    if validated:  # else best_score is the negated training loss, not a validation metric
        valid = pd.DataFrame({MAIN_METRIC: [result.best_score]},
                             index=pd.Index([MODEL], name="method"))
        log.log_results(valid, "valid", main=(MODEL,))
    for key, value in {"best_epoch": result.best_epoch, "epochs": len(result.history),
                       "examples": result.examples, "seconds": result.seconds}.items():
        log.client.log_metric(log.run_id, metric_key("fit", key), float(value))
    log.log_figures(result.history, table[[c for c in table.columns if "@" in c]], "test")


cli = command(main)  # `tailor-train` (pyproject.toml [project.scripts])

if __name__ == "__main__":
    cli()
