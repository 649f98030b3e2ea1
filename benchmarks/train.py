"""`make bench-train`: what a training run costs, on one process and on NPROC=2, as data grows.

Each measurement is the command ``make train`` runs (``python -m training.train``, under
``python -m training.distributed`` for NPROC > 1) with MLflow off and a fixed number of epochs
(patience = epochs, so early stopping cannot make runs of different lengths), in a fresh
process tree whose resident memory is sampled while it runs. The data is prepared once
beforehand, so every run reads the same cache and times training, not parsing.

Per (data set, processes): wall time of the whole run, model fit seconds, examples per second
(the median over epochs, every rank's examples counted), and peak memory (the largest sum of
RSS over the process tree). Ratios against one process come from the same run of the benchmark.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shlex
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

from benchmarks.common import (
    ROOT,
    command_line,
    median,
    publish,
    real_data_sets,
    say,
    table,
)
from features.config import FeatureConfig, add_config_args, config_from_args, setting
from features.infra import add_traceback_arg, run_cli
from features.pipeline import prepare
from features.spec import parse_spec
from training.tracking import metric_key

SAMPLE_S = 0.2   # how often the process tree's memory is sampled


@dataclass(frozen=True)
class TrainBenchConfig:
    data: tuple[str, ...] = setting(
        ("synthetic", "synthetic:large"),
        "data specs to train on (default: the embedded shop, small and large; add e.g. "
        "'seq:../shared/data/amazon2014-5core-s3rec/Sports_and_Outdoors.txt.gz')")
    epochs: tuple[int, ...] = setting(
        (10, 2),
        "epochs per data set, in the order of --data (the last value repeats)")
    nproc: tuple[int, ...] = setting(
        (1, 2),
        "process counts to compare (1: plain python; more: torchrun with TorchRec DMP)")
    repeats: int = setting(1, "runs per (data set, processes); figures are medians")
    train_args: str = setting("", "extra flags for every training run, e.g. '--dim 32'")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.train",
        description="Time full training runs (wall time, fit time, examples/s, peak memory) on "
                    "one process and under torchrun, on data of growing size; print the table, "
                    "write benchmarks/results/train.json and BENCHMARKS.md, log to MLflow.")
    add_config_args(parser, TrainBenchConfig, title="training benchmark")
    parser.add_argument("--no-mlflow", action="store_true", help="do not log to MLflow")
    add_traceback_arg(parser)
    return parser


def train_command(spec: str, nproc: int, epochs: int, out: Path, extra: str) -> list[str]:
    """What ``make train DATA=spec NPROC=nproc EPOCHS=epochs`` runs, without MLflow."""
    launcher = [sys.executable] if nproc <= 1 else \
        [sys.executable, "-m", "training.distributed", "--standalone",
         f"--nproc_per_node={nproc}"]
    return [*launcher, "-m", "training.train", "--data", spec, "--epochs", str(epochs),
            "--patience", str(epochs), "--no-mlflow", "--no-progress", "--out", str(out),
            *shlex.split(extra)]


def run_measured(cmd: list[str]) -> tuple[float, float, str]:
    """Run ``cmd``; wall seconds, peak RSS of its whole process tree (MB), and its output."""
    peak = 0.0
    done = threading.Event()
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)

    def sample() -> None:
        nonlocal peak
        root = psutil.Process(proc.pid)
        while not done.is_set():
            try:
                tree = [root, *root.children(recursive=True)]
                total = 0
                for p in tree:
                    with contextlib.suppress(psutil.Error):
                        total += p.memory_info().rss
                peak = max(peak, total / 2 ** 20)
            except psutil.Error:
                return
            done.wait(SAMPLE_S)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    output, _ = proc.communicate()
    seconds = time.perf_counter() - started
    done.set()
    sampler.join()
    if proc.returncode != 0:
        tail = "\n".join(output.strip().splitlines()[-5:])
        raise RuntimeError(f"{shlex.join(cmd)} failed (exit {proc.returncode}):\n{tail}")
    return seconds, peak, output


def measure(spec: str, nproc: int, epochs: int, cfg: TrainBenchConfig) -> dict[str, Any]:
    runs = []
    for _ in range(max(1, cfg.repeats)):
        with tempfile.TemporaryDirectory(prefix="tailor-bench-train-") as tmp:
            cmd = train_command(spec, nproc, epochs, Path(tmp) / "bundle", cfg.train_args)
            say(f"  $ {shlex.join(cmd[1:])}")
            wall, peak_mb, _ = run_measured(cmd)
            info = json.loads((Path(tmp) / "bundle" / "bundle.json").read_text())
        fit = info["fit"]
        runs.append({"wall_s": wall, "fit_s": fit["seconds"], "peak_mb": peak_mb,
                     "examples": fit["examples"], "epochs": fit["epochs"],
                     "examples_per_s": median(r["examples_per_s"] for r in fit["history"]),
                     "ndcg@10": info["metrics"]["test"]["tailor"]["ndcg@10"]})
        say(f"    {wall:.0f} s, fit {fit['seconds']:.0f} s, "
            f"{runs[-1]['examples_per_s']:,.0f} examples/s, peak {peak_mb:,.0f} MB")
    row = {key: median(r[key] for r in runs) for key in runs[0]}
    row.update(examples=int(row["examples"]), epochs=int(row["epochs"]))
    return {"spec": spec, "nproc": nproc, "epochs": epochs, **row, "runs": runs}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    cfg = config_from_args(TrainBenchConfig, args)
    if not cfg.data or not cfg.nproc or not cfg.epochs or min(cfg.nproc) < 1 or \
            min(cfg.epochs) < 1:
        raise ValueError("--data, --nproc and --epochs need at least one value, all >= 1")
    started = time.perf_counter()
    rows = []
    for i, spec in enumerate(cfg.data):
        epochs = cfg.epochs[min(i, len(cfg.epochs) - 1)]
        prepared = prepare(parse_spec(spec), FeatureConfig())   # fills the cache every run reads
        say(f"\n== {spec}: {prepared.meta['events']:,} events, {len(prepared.item_vocab):,} "
            f"items, {epochs} epoch(s)")
        for nproc in cfg.nproc:
            row = measure(spec, nproc, epochs, cfg)
            row.update(events=int(prepared.meta["events"]), items=len(prepared.item_vocab))
            rows.append(row)
    for row in rows:  # ratios against one process on the same data, from this run
        single = next((r for r in rows if r["spec"] == row["spec"] and r["nproc"] == 1), None)
        row["speedup"] = single["wall_s"] / row["wall_s"] if single else None
        row["examples_ratio"] = row["examples_per_s"] / single["examples_per_s"] if single \
            else None
    cols = ["spec", "events", "items", "nproc", "epochs", "wall_s", "fit_s", "examples_per_s",
            "examples_ratio", "speedup", "peak_mb", "ndcg@10"]
    headers = {"wall_s": "wall s", "fit_s": "fit s", "examples_per_s": "examples/s",
               "examples_ratio": "examples/s vs 1 proc", "speedup": "wall speed-up",
               "peak_mb": "peak MB", "ndcg@10": "test ndcg@10"}
    markdown = (
        "Full `make train` runs with MLflow off and a fixed number of epochs (patience = "
        "epochs), the data prepared beforehand. `wall s`: the whole run (baselines, training, "
        "ranking stack, evaluation, bundle and index); `examples/s`: the median epoch, every "
        "rank counted; `peak MB`: the largest sum of resident memory over the process tree; "
        "NPROC > 1 runs under torchrun with TorchRec DMP (gloo), ranks sharing the cores.\n\n"
        + table(rows, cols, headers=headers, digits=3))
    if real_data_sets() and not any(r["spec"].startswith("seq:") for r in rows):
        markdown += ("\nReal files are not in the default set (the quality part reports their "
                     "training times); add one with `--data`.\n")
    say("\n" + markdown)
    metrics = {}
    for row in rows:
        name = parse_spec(row["spec"]).name
        for key in ("wall_s", "fit_s", "examples_per_s", "peak_mb"):
            metrics[metric_key("train", name, f"nproc{row['nproc']}", key)] = row[key]
    publish("train", command=command_line("train", argv), settings=cfg.__dict__,
            results={"rows": rows, "seconds": round(time.perf_counter() - started, 1)},
            markdown=markdown, metrics=metrics, mlflow_log=not args.no_mlflow)
    return 0


if __name__ == "__main__":
    run_cli(main)
