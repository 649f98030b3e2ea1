"""`make bench-quality`: the two-tower stack against every baseline, on every data set, one split.

For each data set (the real files in ``../shared/data`` when present, and the embedded shop):

1. ``make train`` minus MLflow (``benchmarks.common.trained_bundle``): the model, its towers
   alone and every baseline of the training run, evaluated on the test fold by the training
   code; the results table is read back from the bundle.
2. implicit-feedback ALS (``benchmarks/als.py``), its confidence ``alpha`` chosen on the
   validation fold like the stack's weights, refitted for the test fold and evaluated by the
   same ``training.evaluate`` code on the same prepared split (the cache makes it the same
   data, vocabulary and split, bit for bit).
3. Published full-ranking numbers on the same files, beside ours, with their source.

Reports HR/NDCG@{5,10,20,50} (Recall for temporal data), catalog coverage and each method's
training time.
"""

from __future__ import annotations

import argparse
import json
import shlex
import time
from dataclasses import dataclass, replace
from typing import Any

import pandas as pd

from benchmarks import common
from benchmarks.als import ALS, ALSConfig
from benchmarks.common import (
    EMBEDDED,
    REAL_DATA,
    DataSet,
    bundle_dir,
    command_line,
    publish,
    real_data_sets,
    say,
    select,
    table,
    trained_bundle,
)
from benchmarks.served import SERVED, measure_served
from features.config import FeatureConfig, add_config_args, config_from_args, setting
from features.infra import add_traceback_arg, run_cli
from features.pipeline import Prepared, prepare
from features.spec import parse_spec
from training.evaluate import DEFAULT_KS, build_task, evaluate_all, evaluate_task
from training.plots import comparison_chart
from training.run_summary import MODEL  # the model's row, as training names it
from training.tracking import metric_key

SERVED_METRICS = ("hr@10", "ndcg@10", "recall@20")


@dataclass(frozen=True)
class QualityBenchConfig:
    data: str = setting(
        "",
        "data sets to measure, comma-separated (Sports, Toys, Taobao, Tmall, synthetic); default:"
        " every real file present in ../shared/data, plus the embedded shop")
    embedded: bool = setting(True, "include the embedded shop (synthetic)")
    als_alphas: tuple[float, ...] = setting(
        (1.0, 10.0, 40.0),
        "ALS confidence weights tried on the validation fold")
    als_factors: int = setting(64, "ALS latent factors")
    als_iterations: int = setting(15, "ALS alternating least squares sweeps")
    valid_users: int = setting(2000, "validation shoppers ALS's alpha is chosen on (seeded sample)")
    seed: int = setting(0, "seed of the validation sample and of ALS")
    train_args: str = setting(
        "",
        "extra flags for the training runs, e.g. '--epochs 2 --dim 32' (default: none, the "
        "settings `make train` uses)")
    keep_others: bool = setting(
        True,
        "with --data, keep the other data sets' results from the last run "
        "(benchmarks/results/quality.json), each with the date it was measured")
    served: bool = setting(
        True,
        "also measure the served model as a shop gets it: hold the newest days (or each shopper's"
        " last item, or a predefined split's test purchases) out, `make train` + "
        "`make recommend-batch` on the rest, score the batch output and the baselines on what "
        "was held out (benchmarks/served.py)")


# Published full-ranking results (every item ranked) on the same files and split, as read in
# the sources. Keys: data set -> (method, {metric: value}, source).
P5 = "P5, Geng et al., RecSys 2022 (arXiv 2203.13366), Table 3, all-item ranking"
ELECREC = "ELECRec, Chen et al., SIGIR 2022 (arXiv 2204.02011): YChen1993/ELECRec README"
ICLREC = "ICLRec, Chen et al., WWW 2022 (arXiv 2202.02519): salesforce/ICLRec README"
ISSUE = "reference figure from Tailor's training issue (#3)"
PUBLISHED: dict[str, list[tuple[str, dict[str, float], str]]] = {
    "Sports": [
        ("SASRec", {"hr@5": 0.0233, "ndcg@5": 0.0154, "hr@10": 0.0350, "ndcg@10": 0.0192}, P5),
        ("S3-Rec", {"hr@5": 0.0251, "ndcg@5": 0.0161, "hr@10": 0.0385, "ndcg@10": 0.0204}, P5),
        ("ICLRec", {"hr@5": 0.0290, "ndcg@5": 0.0191, "hr@10": 0.0437, "ndcg@10": 0.0238,
                    "hr@20": 0.0646, "ndcg@20": 0.0291}, ICLREC),
        ("ELECRec", {"hr@5": 0.0380, "ndcg@5": 0.0268, "hr@10": 0.0548, "ndcg@10": 0.0322,
                     "hr@20": 0.0766, "ndcg@20": 0.0377}, ELECREC),
    ],
    "Toys": [
        ("SASRec", {"hr@5": 0.0463, "ndcg@5": 0.0306, "hr@10": 0.0675, "ndcg@10": 0.0374}, P5),
        ("S3-Rec", {"hr@5": 0.0443, "ndcg@5": 0.0294, "hr@10": 0.0700, "ndcg@10": 0.0376}, P5),
        ("SASRec (cross-entropy)", {"hr@10": 0.0989, "ndcg@10": 0.0627}, ISSUE),
        ("ICLRec", {"hr@5": 0.0598, "ndcg@5": 0.0404, "hr@10": 0.0834, "ndcg@10": 0.0480,
                    "hr@20": 0.1138, "ndcg@20": 0.0557}, ICLREC),
        ("ELECRec", {"hr@5": 0.0756, "ndcg@5": 0.0557, "hr@10": 0.0997, "ndcg@10": 0.0634,
                     "hr@20": 0.1316, "ndcg@20": 0.0714}, ELECREC),
    ],
    "Taobao": [
        ("repeat", {"recall@20": 0.448, "ndcg@20": 0.338}, ISSUE),
        ("ALS", {"recall@20": 0.382}, ISSUE),
        ("item-kNN", {"recall@20": 0.300}, ISSUE),
    ],
    "Tmall": [
        ("EASE", {"hr@10": 0.208, "ndcg@10": 0.104}, ISSUE),
        ("item-kNN", {"hr@10": 0.144, "ndcg@10": 0.076}, ISSUE),
    ],
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.quality",
        description="Train the two-tower stack on every data set, evaluate it against every "
                    "baseline and implicit ALS on the same split (full ranking), print the "
                    "tables, write benchmarks/results/quality.json and BENCHMARKS.md, log to "
                    "MLflow (tailor-benchmarks).")
    add_config_args(parser, QualityBenchConfig, title="quality benchmark")
    parser.add_argument("--no-mlflow", action="store_true", help="do not log to MLflow")
    add_traceback_arg(parser)
    return parser


def data_sets(cfg: QualityBenchConfig) -> list[DataSet]:
    available = real_data_sets() + ([EMBEDDED] if cfg.embedded or cfg.data else [])
    return select(available, cfg.data or None)


# --- ALS next to the training run -------------------------------------------------------------

def fit_als(prepared: Prepared, cfg: QualityBenchConfig) -> tuple[ALS, dict[str, Any]]:
    """ALS with the alpha that scores best on validation NDCG@10, refitted for the test fold."""
    base = ALSConfig(factors=cfg.als_factors, iterations=cfg.als_iterations, seed=cfg.seed)
    task = build_task(prepared, "valid", max_users=cfg.valid_users, seed=cfg.seed)
    scores = {}
    if len(task) and len(cfg.als_alphas) > 1:
        for alpha in cfg.als_alphas:
            model = ALS.from_prepared(prepared, "valid", replace(base, alpha=alpha))
            scores[alpha] = evaluate_task(model, task, ks=(10,))["ndcg@10"]
        alpha = max(scores, key=lambda a: (scores[a], -a))
    else:
        alpha = cfg.als_alphas[0]
    started = time.perf_counter()
    model = ALS.from_prepared(prepared, "test", replace(base, alpha=alpha))
    return model, {"alpha": alpha, "valid_ndcg@10": scores,
                   "fit_seconds": round(time.perf_counter() - started, 3)}


def measure(ds: DataSet, cfg: QualityBenchConfig) -> dict[str, Any]:
    say(f"\n== {ds.name}: {ds.spec}")
    folder, wall = trained_bundle(ds, refresh=True, extra_args=shlex.split(cfg.train_args))
    info = json.loads((folder / "bundle.json").read_text())
    results = pd.DataFrame.from_dict(info["metrics"]["test"], orient="index")
    say(f"  trained in {wall:.0f} s (fit {info['fit']['seconds']:.0f} s, best epoch "
        f"{info['fit']['best_epoch']} of {info['fit']['epochs']})")
    # The same spec and feature settings as the training run: the cached split, bit for bit.
    prepared = prepare(parse_spec(ds.spec), FeatureConfig(**info["features"]))
    als, als_info = fit_als(prepared, cfg)
    als_row = evaluate_all({"als": als}, prepared, "test", ks=DEFAULT_KS)
    als_row["fit_seconds"] = als_info["fit_seconds"]
    say(f"  ALS alpha {als_info['alpha']} (fit {als_info['fit_seconds']:.1f} s)")
    results = pd.concat([results, als_row])
    if int(als_row["users"].iloc[0]) != int(results["users"].iloc[0]):
        raise RuntimeError(f"{ds.name}: ALS was evaluated on {int(als_row['users'].iloc[0])} "
                           f"shoppers, the training run on {int(results['users'].iloc[0])}")
    served = None
    if cfg.served:
        started = time.perf_counter()
        served = measure_served(parse_spec(ds.spec), bundle_dir(ds).with_name(
            bundle_dir(ds).name + "-served"), shlex.split(cfg.train_args))
        served["seconds"] = round(time.perf_counter() - started, 1)
        say(f"  served (refit), scored on what came after the data: "
            f"{json.dumps(served['methods']['tailor (served)'])}")
    return {"name": ds.name, "spec": ds.spec, "protocol": prepared.split.protocol,
            "served": served, "refit": {k: v for k, v in (info.get("refit") or {}).items()
                                        if k != "history"},
            "events": int(prepared.meta["events"]), "users": int(prepared.meta["users"]),
            "items": int(len(prepared.item_vocab)), "test_users": int(results["users"].iloc[0]),
            "train_wall_seconds": round(wall, 1), "fit": {k: info["fit"][k] for k in
                                                           ("seconds", "best_epoch", "epochs")},
            "stack_weights": (info.get("blend") or {}).get("weights", {}),
            "als": als_info, "methods": results.drop(columns=["users"]).to_dict(orient="index")}


def earlier_runs(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The last published runs of the data sets not in ``runs`` (measured on their own date)."""
    path = common.RESULTS_DIR / "quality.json"
    if not path.is_file():
        return []
    last = json.loads(path.read_text())
    names = {run["name"] for run in runs}
    return [run | {"measured": run.get("measured", last.get("date"))}
            for run in last.get("results", {}).get("runs", []) if run["name"] not in names]


# --- reporting ----------------------------------------------------------------------------------

def main_metric(protocol: str) -> str:
    return "recall" if protocol == "temporal" else "hr"


def best_baseline(methods: dict[str, dict[str, float]]) -> str:
    """The baseline with the highest test NDCG@10 (ALS included)."""
    baselines = [n for n in methods if n not in (MODEL, "towers")]
    return max(baselines, key=lambda n: methods[n].get("ndcg@10") or 0.0)


def section(run: dict[str, Any]) -> str:
    """One data set's markdown: every method, every cut-off, and the published numbers."""
    first = main_metric(run["protocol"])
    methods = run["methods"]
    cols = [f"{m}@{k}" for m in (first, "ndcg") for k in DEFAULT_KS] + \
        ["coverage@10", "fit_seconds"]
    rows = [{"method": name, **{c: values.get(c) for c in cols}}
            for name, values in methods.items()]
    rows.sort(key=lambda r: -(r.get(f"{first}@10") or 0.0))
    best = best_baseline(methods)
    model, other = methods[MODEL]["ndcg@10"], methods[best]["ndcg@10"]
    verdict = f"beats every baseline (best: {best}, {other:.4f})" if model > other else \
        f"does NOT beat {best} ({other:.4f})"
    text = (f"### {run['name']} — {run['protocol']}, {run['events']:,} events, "
            f"{run['users']:,} shoppers, {run['items']:,} items, {run['test_users']:,} test "
            f"shoppers\n\n"
            f"`{run['spec']}` · training run {run['train_wall_seconds']:.0f} s in all (model fit "
            f"{run['fit']['seconds']:.0f} s, best epoch {run['fit']['best_epoch']} of "
            f"{run['fit']['epochs']}) · stack weights {run['stack_weights']} · ALS alpha "
            f"{run['als']['alpha']} · on NDCG@10 the model ({model:.4f}) {verdict}"
            + (f" · measured {run['measured']}" if run.get("measured") else "") + ".\n\n")
    text += table(rows, ["method", *cols], headers={"fit_seconds": "fit s"}, digits=4)
    served = run.get("served")
    if served:
        scols = ["hr@10", "ndcg@10", "recall@10", "hr@20", "ndcg@20", "recall@20"]
        srows = [{"method": name, **values} for name, values in served["methods"].items()]
        srows.sort(key=lambda r: -r["ndcg@10"])
        text += (f"\nServed (refit), scored from outside on what came after the data "
                 f"({served['protocol']}; {served['target_users']:,} shoppers, "
                 f"{served['targets']:,} targets; {served['new_items']:,} items first seen in "
                 f"the last window before the cut, recommended {served['new_items_recommended']:,}"
                 f" times; {served['seconds']:.0f} s):\n\n")
        text += table(srows, ["method", *scols], digits=4)
    published = PUBLISHED.get(run["name"], [])
    if published:
        pcols = sorted({m for _, values, _ in published for m in values},
                       key=lambda c: (c.split("@")[0] != first, int(c.split("@")[1])))
        ours = {"method": "Tailor (this run)",
                **{c: methods[MODEL].get(c) for c in pcols}, "source": "above"}
        prow = [ours] + [{"method": m, **v, "source": s} for m, v, s in published]
        text += (f"\nPublished on the same file ({run['protocol']}, full ranking; "
                 f"references from the issue are not independent publications):\n\n")
        text += table(prow, ["method", *pcols, "source"], digits=4)
    return text + "\n"


def summary(runs: list[dict[str, Any]]) -> str:
    """@10 and @20 of the model, its towers alone and the best baseline, per data set."""
    rows = []
    for run in runs:
        first, methods = main_metric(run["protocol"]), run["methods"]
        best = best_baseline(methods)
        row = {"data": run["name"], "metric": first.upper() if first == "hr" else "Recall",
               "best baseline": best, "model fit s": run["fit"]["seconds"]}
        for who, name in (("model", MODEL), ("towers", "towers"), ("baseline", best)):
            for k in (10, 20):
                row[f"{who} @{k}"] = methods[name].get(f"{first}@{k}")
                row[f"{who} NDCG@{k}"] = methods[name].get(f"ndcg@{k}")
        rows.append(row)
    cols = ["data", "metric", *[f"{w} {m}{k}" for w in ("model", "towers", "baseline")
                                for k in (10, 20) for m in ("@", "NDCG@")],
            "best baseline", "model fit s"]
    return ("`metric` is HR for leave-one-out and predefined splits, Recall for temporal ones; "
            "`model` is the ranking Tailor serves (towers + weighted sparse signals), `towers` "
            "the towers alone, `baseline` the best baseline on NDCG@10 (ALS included), all on "
            "the training run's own test fold.\n\n"
            + table(rows, cols, digits=4) + "\n" + served_summary(runs))


def served_summary(runs: list[dict[str, Any]]) -> str:
    """The served (refitted) model scored on what came after the data, against the baselines
    fitted on the same data and ranked the same way (benchmarks/served.py)."""
    rows = []
    for run in runs:
        served = run.get("served")
        if not served:
            continue
        methods = served["methods"]
        ours = methods[SERVED]
        best = max((n for n in methods if n != SERVED), key=lambda n: methods[n]["ndcg@10"])
        row = {"data": run["name"], "protocol": served["protocol"],
               "shoppers": served["target_users"], "best baseline": best}
        for m in SERVED_METRICS:
            row[f"served {m}"] = ours[m]
            row[f"baseline {m}"] = methods[best][m]
            row[f"x {m}"] = ours[m] / methods[best][m] if methods[best][m] else None
        rows.append(row)
    if not rows:
        return ""
    cols = ["data", "protocol", "shoppers", *[f"{w} {m}" for m in SERVED_METRICS
                                              for w in ("served", "baseline", "x")],
            "best baseline"]
    return ("**Served (refit), scored on the days / items after the data:** the data minus its "
            "newest days (temporal), minus each shopper's last item (leave-one-out) or minus its "
            "test purchases (predefined) goes through `make train` and `make recommend-batch` "
            "as a shop would run them; the batch "
            "output is scored on what was held out, beside every baseline fitted on the same "
            "data and ranked the same way (purchases left out). `x` is served / best baseline "
            "(by NDCG@10).\n\n" + table(rows, cols, digits=4))


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    cfg = config_from_args(QualityBenchConfig, args)
    started = time.perf_counter()
    runs = [measure(ds, cfg) | {"measured": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
            for ds in data_sets(cfg)]
    if cfg.data and cfg.keep_others:
        order = [ds.name for ds in (*REAL_DATA, EMBEDDED)]
        runs = sorted(earlier_runs(runs) + runs,
                      key=lambda r: order.index(r["name"]) if r["name"] in order else len(order))
    markdown = summary(runs) + "\n" + "".join(section(run) for run in runs)
    say("\n" + markdown)
    metrics = {metric_key("quality", run["name"], method, name): value
               for run in runs for method, values in run["methods"].items()
               for name, value in values.items() if "@" in name or name == "fit_seconds"}
    figures = {f"quality_{run['name']}": comparison_chart(
        pd.DataFrame.from_dict(run["methods"], orient="index")[
            [f"{main_metric(run['protocol'])}@{k}" for k in (10, 20)] +
            [f"ndcg@{k}" for k in (10, 20)]], title=run["name"]) for run in runs}
    publish("quality", command=command_line("quality", argv), settings=cfg.__dict__ | {
                "data_sets": [run["spec"] for run in runs]},
            results={"runs": runs, "seconds": round(time.perf_counter() - started, 1)},
            markdown=markdown, metrics=metrics, figures=figures, mlflow_log=not args.no_mlflow)
    return 0


if __name__ == "__main__":
    run_cli(main)
