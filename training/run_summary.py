"""What a training run is called and says about itself in MLflow: its name, its inputs (data
lineage) and the summary at the top of its page."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from features.pipeline import Prepared
from models.two_tower import TwoTowerConfig
from training.tracking import lift_vs_best

MODEL = "tailor"                   # the served ranking's row in the results and metric names
TOWERS = "towers"                  # the same towers without the stack's sparse signals
MAIN_METRIC = "ndcg@10"            # early stopping and promotion, every protocol has it


def run_name(meta: dict, model_cfg: TwoTowerConfig) -> str:
    """``amazon-Toys-sasrec-d64-20261202-0915``: what a reviewer scans a run list for."""
    stamp = pd.Timestamp.now(tz="UTC").strftime("%Y%m%d-%H%M")
    return f"{meta['name']}-{model_cfg.encoder}-d{model_cfg.dim}-{stamp}"


def data_source(prepared: Prepared) -> str:
    """Where the data came from: the file or folder, else the spec (``synthetic``, ``store:``)."""
    path = prepared.spec.path
    return str(Path(path).resolve()) if path and prepared.spec.kind != "store" else \
        prepared.spec.text


def lineage(prepared: Prepared) -> dict[str, pd.DataFrame]:
    """The run's inputs by context: the fold the model trained on, the test targets, and every
    event (what the served bundle is refitted on)."""
    cols = ["user_id", "item_id", "event", "timestamp"]
    split = prepared.split
    return {"train": split.fold("train")[cols],
            "test": split.targets[split.targets["fold"] == "test"],
            "serving": prepared.events[cols]}


def run_description(meta: dict, model_cfg: TwoTowerConfig, table: pd.DataFrame,
                    decision: dict) -> str:
    """The run page's summary: data, model, headline result, and the promotion decision."""
    lift = lift_vs_best(table, (MODEL, TOWERS), MAIN_METRIC)
    score = float(table.loc[MODEL, MAIN_METRIC])
    vs = (f"{lift[1]:.2f}x the best baseline ({lift[0]}, "
          f"{float(table.loc[lift[0], MAIN_METRIC]):.4f})" if lift else "no baseline scored")
    return (f"**{meta['spec']}**: {meta['events']:,} events, {meta['users']:,} shoppers, "
            f"{meta['protocol']} split; {model_cfg.encoder} towers, dim {model_cfg.dim}.\n\n"
            f"Test {MAIN_METRIC} of the served ranking: **{score:.4f}**, {vs}; towers alone "
            f"{float(table.loc[TOWERS, MAIN_METRIC]):.4f}.\n\n"
            f"Registry: v{decision['version']} is "
            f"{'champion' if decision['promoted'] else 'candidate'}: {decision['reason']}.")
