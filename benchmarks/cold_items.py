"""New items from their attributes alone: hold a share of the items out of training entirely,
train as a shop would (`make train`), then rank those items for the shoppers who went on to
buy one of them.

- Data: the files with item attributes (Toys and Sports: the Amazon ``item2attributes`` beside
  the sequences). ``share`` of the items (seeded) are "new": every event of theirs is removed
  from what the model sees. Each shopper with at least 3 events loses their last one (leave-one-
  out); shoppers whose last item is a new item are the targets.
- The model: the bundle `make train` writes from the rest (refit included), default settings
  plus ``--train-args``. A new item's vector comes from its category and attributes alone
  (``models.scoring.new_item_vectors``: no id row), the shopper's from their history.
- Ranked among the new items only (nothing else knows them), HR@10 / NDCG@10 of the target,
  beside:
  - ``random``: the expected value of a random order (k / n for HR);
  - ``shopper's attributes``: new items scored by the cosine between their attributes and the
    attributes of the shopper's history items (content-based: the attribute counterpart of
    "popular in the shopper's category"; new items have no popularity of their own).
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp

from benchmarks.common import (
    DataSet,
    cache_root,
    command_line,
    publish,
    real_data_sets,
    say,
    select,
    table,
)
from benchmarks.served import last_events, run
from features.config import add_config_args, config_from_args, setting
from features.infra import add_traceback_arg, run_cli
from features.item_attributes import AttributeTable, attribute_tokens
from features.readers import read_events
from features.spec import parse_spec
from features.split import sort_events
from models.bundle import Bundle
from models.scoring import TwoTowerRecommender, new_item_vectors

KS = (10, 20)


@dataclass(frozen=True)
class ColdBenchConfig:
    data: str = setting("Toys,Sports", "data sets (names, comma-separated) with item attributes")
    share: float = setting(0.1, "share of the items held out of training entirely")
    seed: int = setting(0, "seed of the held-out items")
    # Dropping the id vector of 10% of the candidates in training is what teaches the
    # attribute path to stand alone (Toys: HR@10 0.095 without, 0.111 with); it is not the
    # default of `make train`, where it costs 2% of validation NDCG@10 on items with history.
    train_args: str = setting("--item-id-dropout 0.1", "extra `make train` flags for the model")


@dataclass(frozen=True)
class ColdHoldOut:
    spec: str                 # the `DATA=` spec of what the model may see
    new_items: pd.DataFrame   # metadata rows of the held-out items (item_id first)
    targets: pd.DataFrame     # user_id, item_id: the shopper's last item, a held-out one


def hold_out_items(ds: DataSet, folder: Path, share: float, seed: int) -> ColdHoldOut:
    data = read_events(parse_spec(ds.spec))
    if not len(data.items) or len(data.items.columns) < 2:
        raise ValueError(f"{ds.name} has no item metadata: nothing to place new items by")
    events = sort_events(data.events)
    items = np.sort(events["item_id"].unique().to_numpy(dtype=object))
    rng = np.random.default_rng(seed)
    new = set(rng.choice(items, size=int(round(share * len(items))), replace=False))
    is_new = events["item_id"].isin(new).to_numpy()
    last = last_events(events)
    seen = events[~last & ~is_new]
    targets = events[last & is_new]
    targets = targets[targets["user_id"].isin(seen["user_id"])][["user_id", "item_id"]]
    folder.mkdir(parents=True, exist_ok=True)
    seen[["user_id", "item_id", "event"]].to_csv(folder / "events.csv", index=False)
    data.items.to_csv(folder / "items.csv", index=False)
    meta = data.items[data.items["item_id"].isin(new)].drop_duplicates("item_id")
    missing = sorted(new - set(meta["item_id"]))   # new items without metadata still count
    meta = pd.concat([meta, pd.DataFrame({"item_id": pd.array(missing, dtype="string")})],
                     ignore_index=True)
    return ColdHoldOut(f"events:{folder / 'events.csv'}?items={folder / 'items.csv'}",
                       meta.reset_index(drop=True), targets.reset_index(drop=True))


def rank_metrics(scores: np.ndarray, target_col: np.ndarray) -> dict[str, float]:
    """HR@k / NDCG@k of one target column per row of ``scores`` (ties count against it)."""
    target = scores[np.arange(len(scores)), target_col]
    rank = (scores > target[:, None]).sum(1) + (scores == target[:, None]).sum(1) - 1
    out = {}
    for k in KS:
        hit = rank < k
        out[f"hr@{k}"] = float(hit.mean())
        out[f"ndcg@{k}"] = float((hit / np.log2(rank + 2)).mean())
    return out


def random_metrics(n: int) -> dict[str, float]:
    """The expected HR@k / NDCG@k of a random order of ``n`` items."""
    out = {}
    for k in KS:
        out[f"hr@{k}"] = min(k, n) / n
        out[f"ndcg@{k}"] = float(sum(1.0 / np.log2(i + 2) for i in range(min(k, n))) / n)
    return out


def _rows_matrix(table: AttributeTable) -> sp.csr_matrix:
    """Items x attributes, 0/1, each row scaled to unit length."""
    m = sp.csr_matrix((np.ones(len(table.values)), table.values, table.offsets),
                      shape=(table.n_items, max(table.n_attributes, 1)))
    norms = np.sqrt(np.asarray(m.multiply(m).sum(1)).ravel())
    return sp.diags(1.0 / np.maximum(norms, 1e-12)) @ m


def measure(ds: DataSet, cfg: ColdBenchConfig) -> dict[str, Any]:
    folder = cache_root() / "bench-cold" / ds.name
    held = hold_out_items(ds, folder, cfg.share, cfg.seed)
    say(f"{ds.name}: {len(held.new_items):,} new items, {len(held.targets):,} target shoppers")
    started = time.perf_counter()
    bundle_dir = folder / "bundle"
    run([sys.executable, "-m", "training.train", "--data", held.spec, "--no-mlflow",
         "--no-progress", "--out", str(bundle_dir), *shlex.split(cfg.train_args)])
    train_seconds = time.perf_counter() - started
    bundle = Bundle.load(bundle_dir)
    new_ids = held.new_items["item_id"].astype(str).to_numpy(dtype=object)
    column = pd.Series(np.arange(len(new_ids)), index=new_ids)
    target_col = column.loc[held.targets["item_id"].astype(str)].to_numpy()
    users = held.targets["user_id"].astype(object).to_numpy()
    histories = bundle.histories.of(users)

    towers = TwoTowerRecommender(bundle.model, bundle.item_vectors)
    vectors = new_item_vectors(bundle.model, bundle.items, held.new_items)
    methods = {"towers (attributes only)": rank_metrics(
        towers.user_vectors(histories) @ vectors.T, target_col)}

    known = AttributeTable.from_features(bundle.items)
    new_table = known.encode(attribute_tokens(held.new_items, held.new_items["item_id"],
                                              min_items=1))
    per_event = sp.csr_matrix(_rows_matrix(known)[histories.item_idx])
    owner = sp.csr_matrix((np.ones(len(histories.item_idx)),
                           (np.repeat(np.arange(len(histories)), histories.lengths),
                            np.arange(len(histories.item_idx)))),
                          shape=(len(histories), len(histories.item_idx)))
    profile = owner @ per_event
    content = np.asarray((profile @ _rows_matrix(new_table).T).todense())
    # a seeded jitter far below any real difference breaks the ties of equal attribute sets
    content += np.random.default_rng(cfg.seed).random(content.shape) * 1e-9
    methods["shopper's attributes"] = rank_metrics(content, target_col)
    methods["random"] = random_metrics(len(new_ids))
    with_attributes = float((np.diff(new_table.offsets) > 0).mean())
    return {"name": ds.name, "spec": ds.spec, "new_items": len(new_ids),
            "new_items_with_attributes": with_attributes, "targets": len(users),
            "model": bundle.model.cfg.to_dict(), "train_seconds": round(train_seconds, 1),
            "methods": methods}


def markdown(runs: list[dict[str, Any]], cfg: ColdBenchConfig) -> str:
    rows = [{"data": r["name"], "method": m, **v} for r in runs for m, v in r["methods"].items()]
    notes = "".join(
        f"- {r['name']}: {r['new_items']:,} new items ({r['new_items_with_attributes']:.0%} with "
        f"an attribute the model knows), {r['targets']:,} shoppers whose last item is one; "
        f"`make train {cfg.train_args}` {r['train_seconds']:.0f} s.\n" for r in runs)
    return (f"{cfg.share:.0%} of the items (seed {cfg.seed}) are held out of training entirely; "
            "the shoppers whose last item is one of them are ranked over the new items only, "
            "with the item vectors the model gives from category and attributes alone "
            "(`models.scoring.new_item_vectors`). See `benchmarks/cold_items.py`.\n\n"
            + notes + "\n" + table(rows, ["data", "method", "hr@10", "ndcg@10", "hr@20",
                                          "ndcg@20"], digits=4))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.cold_items",
                                     description=__doc__.split("\n\n")[0])
    add_config_args(parser, ColdBenchConfig, title="cold-start benchmark")
    parser.add_argument("--no-mlflow", action="store_true", help="do not log to MLflow")
    add_traceback_arg(parser)
    args = parser.parse_args(argv)
    cfg = config_from_args(ColdBenchConfig, args)
    runs = [measure(ds, cfg) for ds in select(real_data_sets(), cfg.data)]
    text = markdown(runs, cfg)
    say("\n" + text)
    metrics = {f"cold/{r['name']}/{m.split(' ')[0]}/{k.replace('@', '_at_')}": v
               for r in runs for m, vals in r["methods"].items() for k, v in vals.items()}
    publish("cold", command=command_line("cold_items", argv), settings=cfg.__dict__,
            results={"runs": runs}, markdown=text, metrics=metrics, mlflow_log=not args.no_mlflow)
    return 0


if __name__ == "__main__":
    run_cli(main)
