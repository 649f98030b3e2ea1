"""`make bench-train-step`: the training step's kernels side by side, in one process.

A training step of the two-tower model on real batches, timed with the kernels of
``training.kernels`` (bfloat16 logits where the CPU has them, ``TrainConfig.logits_dtype``
auto; the fused AdamW) against float32 logits and PyTorch's default CPU AdamW, which loops over
the parameters. Both variants start from the same weights and take the same batches; they
alternate, ``repeats`` times each, so a drift in the machine's speed hits both alike. The loss
after the timed steps shows that both train alike.

Per data set and user tower: examples (target positions) per second of each variant, the
median over repeats, and their ratio.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from benchmarks.common import (
    EMBEDDED,
    command_line,
    median,
    publish,
    real_data_sets,
    say,
    select,
    table,
)
from features.config import add_config_args, config_from_args, setting
from features.infra import add_traceback_arg, run_cli
from features.pipeline import Prepared, prepare
from features.spec import parse_spec
from models.inputs import ItemTable
from models.two_tower import TwoTower, TwoTowerConfig
from training.data import (
    WindowBatch,
    collate,
    length_bucketed_batches,
    make_windows,
    timeline_order,
)
from training.fit import TrainConfig, sized_for
from training.kernels import adamw, dtype_name, logits_dtype
from training.loss import batch_loss
from training.tracking import metric_key

WARMUP = 5  # steps before the clock starts: first-call allocations, the optimizer's state


@dataclass(frozen=True)
class StepBenchConfig:
    data: str = setting(
        "",
        "data sets by name, comma-separated (default: every real file present, else the "
        "embedded shop)")
    encoders: tuple[str, ...] = setting(("pooling", "transformer"), "user towers to time")
    steps: int = setting(60, "timed steps per run")
    repeats: int = setting(3, "runs of each variant, alternating; figures are medians")
    seed: int = setting(0, "seed of the weights and of the batches")


@dataclass(frozen=True)
class Variant:
    name: str
    logits: torch.dtype
    fused: bool


def variants() -> list[Variant]:
    return [Variant("float32 logits, AdamW", torch.float32, False),
            Variant("training.kernels", logits_dtype("auto"), True)]


def step_batches(prepared: Prepared, model_cfg: TwoTowerConfig, n: int, seed: int
                 ) -> list[WindowBatch]:
    """``n`` training batches as ``training.fit`` builds them (windows bucketed by length)."""
    rng = np.random.default_rng(seed)
    train = prepared.split.fold("train")
    windows = make_windows(timeline_order(train, prepared.ordered, rng), prepared.item_vocab,
                           model_cfg.history_len)
    batches = length_bucketed_batches(windows, TrainConfig().batch_tokens, rng)[:n]
    return [collate(windows, idx) for idx in batches]


def time_steps(model_cfg: TwoTowerConfig, batches: list[WindowBatch], item_table: ItemTable,
               variant: Variant, seed: int) -> tuple[float, float]:
    """Examples per second over ``batches[WARMUP:]`` and the last batch's loss."""
    torch.manual_seed(seed)
    model = TwoTower(model_cfg)
    model.train()
    train_cfg = TrainConfig()
    opt = adamw(model.parameters(), train_cfg.lr, train_cfg.weight_decay) if variant.fused \
        else torch.optim.AdamW(model.parameters(), lr=train_cfg.lr,
                               weight_decay=train_cfg.weight_decay)
    weights = train_cfg.target_weights()
    examples, started, loss = 0, 0.0, torch.zeros(())
    for step, batch in enumerate(batches):
        if step == WARMUP:
            started = time.perf_counter()
        loss = batch_loss(model, model_cfg, batch, item_table, weights, None, 0,
                          matmul_dtype=variant.logits, label_smoothing=train_cfg.label_smoothing)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step >= WARMUP:
            examples += int(batch.targets.numel())
    return examples / (time.perf_counter() - started), float(loss.detach())


def measure(name: str, spec: str, encoder: str, cfg: StepBenchConfig) -> dict[str, Any]:
    prepared = prepare(parse_spec(spec))
    model_cfg = sized_for(TwoTowerConfig(n_items=0, encoder=encoder), prepared)
    if model_cfg.n_items > TrainConfig().full_softmax_max_items:
        raise ValueError(f"{name}: {model_cfg.n_items:,} items take the sampled softmax; this "
                         "benchmark times the full one")
    batches = step_batches(prepared, model_cfg, WARMUP + cfg.steps, cfg.seed)
    item_table = ItemTable.from_features(prepared.item_features)
    old, new = variants()
    runs: dict[str, list[tuple[float, float]]] = {old.name: [], new.name: []}
    for _ in range(cfg.repeats):
        for variant in (old, new):
            runs[variant.name].append(
                time_steps(model_cfg, batches, item_table, variant, cfg.seed))
    before, after = runs[old.name], runs[new.name]
    row = {"data": name, "items": model_cfg.n_items, "encoder": encoder,
           "logits": dtype_name(new.logits),
           "before_ex_s": median(r[0] for r in before), "after_ex_s": median(r[0] for r in after),
           "before_loss": before[-1][1], "after_loss": after[-1][1],
           "runs": {key: [r[0] for r in value] for key, value in runs.items()}}
    row["speedup"] = row["after_ex_s"] / row["before_ex_s"]
    say(f"  {name} {encoder}: {row['before_ex_s']:,.0f} -> {row['after_ex_s']:,.0f} examples/s "
        f"({row['speedup']:.2f}x); loss after {cfg.steps + WARMUP} steps "
        f"{row['before_loss']:.4f} / {row['after_loss']:.4f}")
    return row


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.train_step",
        description="Time training steps with training.kernels' choices (bfloat16 logits where "
                    "the CPU has them, the fused AdamW) against float32 logits and the default "
                    "AdamW, alternating in one process; write benchmarks/results/train-step.json "
                    "and BENCHMARKS.md, log to MLflow.")
    add_config_args(parser, StepBenchConfig, title="training step benchmark")
    parser.add_argument("--no-mlflow", action="store_true", help="do not log to MLflow")
    add_traceback_arg(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    cfg = config_from_args(StepBenchConfig, args)
    if cfg.steps < 1 or cfg.repeats < 1:
        raise ValueError("--steps and --repeats must be at least 1")
    available = real_data_sets() + [EMBEDDED]
    chosen = select(available, cfg.data) if cfg.data else (real_data_sets() or [EMBEDDED])
    say(f"kernels: {variants()[1].logits} logits where auto; fused AdamW")
    rows = [measure(ds.name, ds.spec, encoder, cfg) for ds in chosen for encoder in cfg.encoders]
    cols = ["data", "items", "encoder", "before_ex_s", "after_ex_s", "speedup", "logits",
            "before_loss", "after_loss"]
    headers = {"before_ex_s": "float32 logits, AdamW: examples/s",
               "after_ex_s": "training.kernels: examples/s", "speedup": "speed-up",
               "logits": "logits (auto)", "before_loss": "loss before",
               "after_loss": "loss now"}
    markdown = (
        f"Training steps on real batches (256 positions, full-catalog softmax, the default "
        f"model), {cfg.steps} timed after {WARMUP} warm-up steps, the two variants alternating "
        f"{cfg.repeats} times from the same weights; medians. `training.kernels`: the logits' "
        f"matmul in bfloat16 where the CPU has native bfloat16 (`--logits-dtype auto`), the "
        f"fused AdamW. The losses after the last step show both train alike.\n\n"
        + table(rows, cols, headers=headers, digits=3))
    say("\n" + markdown)
    metrics = {metric_key("train_step", r["data"], r["encoder"], key): r[key]
               for r in rows for key in ("before_ex_s", "after_ex_s", "speedup")}
    publish("train-step", command=command_line("train_step", argv), settings=cfg.__dict__,
            results={"rows": rows}, markdown=markdown, metrics=metrics,
            mlflow_log=not args.no_mlflow)
    return 0


if __name__ == "__main__":
    run_cli(main)
