"""The served model, scored from outside: hold the newest data out, run `make train` and
`make recommend-batch` on the rest as a shop would, and score the batch output on what the
shoppers did next.

This is the number a shop gets, next to the training run's own test fold. Nothing here uses the
training code's split or metrics: the hold-out, the targets and HR / Recall / NDCG are computed
here, from the raw events and the batch CSV.

- Data with time: the cut is ``days`` before the last event. The model sees the events before
  it; targets are the distinct items each shopper carted or bought after it (shoppers with an
  event before the cut), among the items the training data holds.
- Data without time (leave-one-out): each shopper with at least 3 events loses their last one,
  which becomes the target; the model sees the rest. Items a shopper bought are left out of
  their list (the batch default), so the target is always an item new to them.
- A predefined split (a ``split`` column, e.g. Tmall): the model sees the train rows; targets
  are the test purchases. So that `make train` still evaluates under the same protocol, one
  seeded train purchase per shopper (of those with two or more) is marked ``test`` in the file it
  is given: held out by its evaluation, trained on by its refit, like any other train row.

The baselines (``models.baselines``) are fitted on exactly the data the model was given and
ranked with the same exclusions from the same last events per shopper (the bundle's
``history_len``), so every row of the table is the same measurement.
"""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from features.history import build_histories
from features.infra import ROOT
from features.item_features import item_features
from features.readers import read_events
from features.spec import DataSpec
from features.split import auto_window_days, sort_events
from features.vocab import Vocabulary
from models.baselines import BASELINES
from models.bundle import model_config
from serving.batch import seen_items

K_LIST = 50
SERVED = "tailor (served)"  # the served model's row in the results
DAY = pd.Timedelta(days=1)


@dataclass(frozen=True)
class HoldOut:
    spec: str                # the `DATA=` spec of the data the model may see
    users: Path              # one shopper id a line: the shoppers to rank
    targets: pd.DataFrame    # user_id, item_id: what they did after the data
    protocol: str            # "temporal" or "leave-one-out"
    cut: str | None          # the cut time (temporal)
    seen: pd.DataFrame       # the events the model may see (canonical columns)
    items: pd.DataFrame      # item metadata of the data set
    new_items: np.ndarray    # items first seen in the last ``days`` before the cut (temporal)


def hold_out(spec: DataSpec, folder: Path, days: float | None = None) -> HoldOut:
    """Write the data the model may see to ``folder`` (events CSV + items CSV) and return the
    targets it is scored on."""
    data = read_events(spec)
    events = sort_events(data.events)
    folder.mkdir(parents=True, exist_ok=True)
    new_items = np.array([], dtype=object)
    columns = ["user_id", "item_id", "event"] + (["timestamp"] if data.has_time else [])
    if "split" in events.columns and not data.has_time:
        seen, targets = _predefined(events)
        protocol, cut_text = "predefined", None
        columns.append("split")
    elif data.has_time:
        days = days or auto_window_days(events)
        cut = events["timestamp"].max() + pd.Timedelta(milliseconds=1) - days * DAY
        seen, after = events[events["timestamp"] < cut], events[events["timestamp"] >= cut]
        intent = after[after["event"].isin(["addtocart", "purchase"])]
        targets = intent[intent["user_id"].isin(seen["user_id"])]
        first = seen.groupby("item_id", observed=True)["timestamp"].min()
        new_items = first.index[first >= cut - days * DAY].to_numpy(dtype=object)
        protocol, cut_text = "temporal", str(cut)
    else:
        last = last_events(events)
        seen, targets = events[~last], events[last]
        protocol, cut_text = "leave-one-out", None
    targets = targets[targets["item_id"].isin(seen["item_id"])]
    targets = targets[["user_id", "item_id"]].drop_duplicates().reset_index(drop=True)
    out = seen[columns].copy()
    if data.has_time:  # epoch ms, as the reader takes it
        out["timestamp"] = (out["timestamp"] - pd.Timestamp(0, tz="UTC")) // pd.Timedelta(
            milliseconds=1) if out["timestamp"].dt.tz is not None else \
            (out["timestamp"] - pd.Timestamp(0)) // pd.Timedelta(milliseconds=1)
    events_path, items_path = folder / "events.csv", folder / "items.csv"
    out.to_csv(events_path, index=False)
    text = f"events:{events_path}"
    if len(data.items) and len(data.items.columns) > 1:
        data.items.to_csv(items_path, index=False)
        text += f"?items={items_path}"
    users = folder / "users.txt"
    users.write_text("\n".join(targets["user_id"].astype(str).unique()) + "\n")
    return HoldOut(text, users, targets, protocol, cut_text, seen, data.items, new_items)


def last_events(events: pd.DataFrame, min_events: int = 3) -> np.ndarray:
    """Leave-one-out: True on each shopper's last event (``events`` sorted per shopper), for the
    shoppers with at least ``min_events`` events."""
    per_user = events.groupby("user_id", sort=False, observed=True)
    return (per_user.cumcount(ascending=False) == 0).to_numpy() & \
        (per_user["item_id"].transform("size") >= min_events).to_numpy()


def _predefined(events: pd.DataFrame, seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(the train rows with one seeded train purchase per shopper marked ``test``, the test
    purchases)."""
    split = events["split"].astype(str)
    seen = events[(split == "train").to_numpy()].copy()
    targets = events[((split == "test") & (events["event"] == "purchase")).to_numpy()]
    buys = seen.index[(seen["event"] == "purchase").to_numpy()]
    owners = seen.loc[buys, "user_id"].astype(str)
    counts = owners.value_counts()
    pool = pd.DataFrame({"row": buys, "user": owners.to_numpy()})
    pool = pool[pool["user"].isin(counts.index[counts >= 2])]
    pool["key"] = np.random.default_rng(seed).random(len(pool))
    picked = pool.sort_values(["user", "key"]).drop_duplicates("user")["row"]
    seen["split"] = "train"
    seen.loc[picked, "split"] = "test"
    return seen, targets


# --- running the public commands ----------------------------------------------------------------

def run(cmd: list[str]) -> str:
    proc = subprocess.run(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True)
    if proc.returncode != 0:
        tail = "\n".join(proc.stdout.strip().splitlines()[-8:])
        raise RuntimeError(f"`{shlex.join(cmd)}` failed (exit {proc.returncode}):\n{tail}")
    return proc.stdout


def train_and_recommend(held: HoldOut, folder: Path, train_args: list[str] = (),
                        k: int = K_LIST) -> tuple[Path, pd.DataFrame]:
    """`make train` (to a bundle folder, no MLflow) then `make recommend-batch` on ``held``."""
    bundle, recs = folder / "bundle", folder / "recs.csv"
    run([sys.executable, "-m", "training.train", "--data", held.spec, "--no-mlflow",
         "--no-progress", "--out", str(bundle), *train_args])
    run(["make", "--no-print-directory", "recommend-batch", f"DATA={held.spec}",
         f"MODEL={bundle}", f"K={k}", f"OUT={recs}", f"USERS={held.users}"])
    return bundle, pd.read_csv(recs, dtype={"user_id": str, "item_id": str})


def bundle_history_len(bundle: Path) -> int:
    """Events per shopper history the bundle ranks from (what the batch reads), read through
    the bundle's own interpretation of its saved model settings."""
    info = json.loads((bundle / "bundle.json").read_text())
    return model_config(info["model"], bundle).history_len


def baseline_recs(held: HoldOut, history_len: int, k: int = K_LIST) -> dict[str, pd.DataFrame]:
    """Every baseline fitted on the data the model saw, ranked like the batch (purchases out),
    from the same ``history_len`` last events per shopper as the served bundle."""
    seen = held.seen
    vocab = Vocabulary.fit(seen["item_id"])
    feats = item_features(seen, held.items, vocab, popularity_days=7.0)
    users = held.targets["user_id"].astype(object).unique()
    histories = build_histories(seen, vocab, max_len=history_len, users=users)
    bought = seen[seen["event"] == "purchase"]
    exclude = seen_items(bought, users, vocab.lookup(bought["item_id"]))  # as the batch does
    out = {}
    for name, cls in BASELINES.items():
        top, _ = cls.fit(seen, vocab, feats).recommend(histories, k, exclude=exclude)
        out[name] = pd.DataFrame({"user_id": np.repeat(users, k),
                                  "item_id": vocab.ids[top.ravel()],
                                  "rank": np.tile(np.arange(1, k + 1), len(users))})
    return out


# --- scoring, independent of training.metrics --------------------------------------------------

def score(recs: pd.DataFrame, targets: pd.DataFrame, ks: tuple[int, ...] = (10, 20)
          ) -> dict[str, float]:
    """HR@k, Recall@k and NDCG@k over every target shopper (no list: zero)."""
    wanted = targets.groupby("user_id")["item_id"].agg(set).to_dict()
    lists = recs.sort_values(["user_id", "rank"]).groupby("user_id")["item_id"].agg(list).to_dict()
    out = {}
    for k in ks:
        hr = rec = ndcg = 0.0
        for user, items in wanted.items():
            top = lists.get(user, [])[:k]
            gains = [1.0 / np.log2(i + 2) for i, item in enumerate(top) if item in items]
            ideal = sum(1.0 / np.log2(i + 2) for i in range(min(len(items), k)))
            hr += 1.0 if gains else 0.0
            rec += len(gains) / min(len(items), k)
            ndcg += sum(gains) / ideal
        n = max(len(wanted), 1)
        out |= {f"hr@{k}": hr / n, f"recall@{k}": rec / n, f"ndcg@{k}": ndcg / n}
    return out


def measure_served(spec: DataSpec, folder: Path, train_args: list[str] = (),
                   days: float | None = None) -> dict:
    """The served model and every baseline scored on what came after the data."""
    held = hold_out(spec, folder, days)
    bundle, recs = train_and_recommend(held, folder, list(train_args))
    rows = {SERVED: score(recs, held.targets)}
    rows |= {name: score(r, held.targets)
             for name, r in baseline_recs(held, bundle_history_len(bundle)).items()}
    new = set(held.new_items)
    return {"protocol": held.protocol, "cut": held.cut, "spec": held.spec,
            "target_users": int(held.targets["user_id"].nunique()),
            "targets": len(held.targets), "bundle": str(bundle),
            "new_items": len(new), "new_items_recommended": int(recs["item_id"].isin(new).sum()),
            "methods": rows}
