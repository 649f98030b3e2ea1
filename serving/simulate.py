"""`make simulate`: the embedded shop's shoppers against a running server, in an experiment with a
control group, then the experiment's report. The test of the whole experiment machinery, with
a known answer.

    tailor-simulate [--model REF] [--shoppers 2500] [--visits 2] [--no-mlflow]

1. A model: ``--model`` (trained on the embedded shop), else a small one trained here (a minute
   or two, into ``.cache/simulate/bundle``, no registry).
2. A real server (what `make serve` starts) with its own event store and one experiment: three
   variants with a third of the shoppers each: ``control`` (no recommendations), ``popular``
   (the bestsellers) and ``model``.
3. Each simulated shopper (a returning shopper of the shop, whose hidden tastes the generator
   planted: ``ShopTruth.tastes``) asks ``/recommend`` on each of its visits and reacts to what
   it is shown: an item
   of a category it likes is clicked with a probability that grows with how much it likes it and
   falls with the slot; a clicked item is carted, a carted one bought, each with a fixed
   probability; an item it does not like is ignored. Whatever it is shown, it also buys one item
   of its tastes on its own with ``organic`` probability (the shop's other pages). Its events go
   to ``POST /events`` with the answer's ``request_id``.
4. The report (``serving/experiment_report.py``): the known answer is model > popular > control
   in conversion, with intervals of the lifts that exclude zero at this traffic.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import numpy as np
import pandas as pd

from features.event_store import URL_ENV, EventStore
from features.experiments import load_experiment
from features.infra import ROOT, TailorError, add_traceback_arg, command
from features.synthetic import generate_with_truth
from serving.experiment_report import build_report, format_table, log_report, model_prices
from serving.experiments import EXPERIMENTS_ENV, FLUSH_SECONDS
from serving.process import free_port, served

NAME = "simulated-personalization"
TRAIN = ["--data", "synthetic", "--epochs", "4", "--dim", "32", "--encoder", "pooling",
         "--max-minutes", "2", "--no-progress", "--no-mlflow"]
CLICK, CART, BUY = 0.9, 0.5, 0.6      # click scale; P(cart | click); P(buy | cart)
SLOT_DECAY = 0.15                     # attention falls with the slot: 1 / (1 + decay * slot)


def experiment_file(folder: Path, model: str) -> Path:
    start = datetime.now(UTC) - timedelta(hours=1)
    path = folder / "experiment.toml"
    path.write_text(f"""[experiment]
name = "{NAME}"
endpoint = "recommend"
start = {start:%Y-%m-%dT%H:%M:%SZ}
end = {start + timedelta(days=7):%Y-%m-%dT%H:%M:%SZ}

[[variant]]
name = "control"
kind = "control"
share = 0.34

[[variant]]
name = "popular"
kind = "popular"
share = 0.33

[[variant]]
name = "model"
kind = "model"
model = "{model}"
share = 0.33
""")
    return path


def shop_tastes(truth) -> dict[str, dict[str, float]]:
    """Per shopper, the weight of each leaf category they like (the taste in force at the end)."""
    tastes = truth.tastes
    current = tastes[tastes["end"].isna() | (tastes["end"] >= truth.window_end - pd.Timedelta(
        days=1))] if "end" in tastes else tastes
    out: dict[str, dict[str, float]] = {}
    for row in current.itertuples():
        out.setdefault(str(row.user_id), {})[str(row.category_id)] = float(row.weight)
    return out


def react(rng: np.random.Generator, answer: dict, likes: dict[str, float], organic: float,
          catalog: dict[str, list[str]]) -> list[dict]:
    """The events a shopper posts after seeing ``answer`` (``organic``: the chance of a
    purchase on the shop's other pages during this visit)."""
    events, request_id = [], answer.get("request_id")
    top = max(likes.values()) if likes else 1.0
    for slot, item in enumerate(answer.get("items", [])):
        like = likes.get(item.get("category_id") or "", 0.0) / top
        if like and rng.random() < CLICK * like / (1 + SLOT_DECAY * slot):
            events.append({"item_id": item["item_id"], "event": "view",
                           "request_id": request_id})
            if rng.random() < CART:
                events.append({"item_id": item["item_id"], "event": "addtocart",
                               "request_id": request_id})
                if rng.random() < BUY:
                    events.append({"item_id": item["item_id"], "event": "purchase",
                                   "request_id": request_id})
    if likes and rng.random() < organic:   # bought on the shop's other pages
        category = rng.choice(list(likes), p=np.array(list(likes.values())) /
                              sum(likes.values()))
        if catalog.get(category):
            events.append({"item_id": str(rng.choice(catalog[category])), "event": "purchase"})
    return events


def simulate(url: str, shoppers: list[str], tastes: dict, catalog: dict, organic: float,
             seed: int, visits: int = 1) -> int:
    rng = np.random.default_rng(seed)
    posted = 0
    with httpx.Client(base_url=url, timeout=60) as http:
        for user in [u for _ in range(visits) for u in shoppers]:
            answer = http.post("/recommend", json={"user_id": user, "k": 10, "explain": False})
            if answer.status_code != 200:
                raise TailorError(f"/recommend answered {answer.status_code}: {answer.text[:200]}")
            events = react(rng, answer.json(), tastes.get(user, {}), organic / visits, catalog)
            if events:
                body = {"events": [{"user_id": user, **e} for e in events]}
                done = http.post("/events", json=body)
                if done.status_code != 200:
                    raise TailorError(f"/events answered {done.status_code}: {done.text[:200]}")
                posted += len(events)
    return posted


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tailor-simulate",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", help="a model trained on the embedded shop (default: train "
                                        "a small one here)")
    parser.add_argument("--shoppers", type=int, default=2500,
                        help="simulated shoppers, at most the shop's returning shoppers "
                             "(default: %(default)s)")
    parser.add_argument("--visits", type=int, default=2,
                        help="visits (a /recommend each) per shopper (default: %(default)s)")
    parser.add_argument("--organic", type=float, default=0.06,
                        help="P(a shopper buys on the shop's other pages, over all visits) "
                             "(default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="seed (default: %(default)s)")
    parser.add_argument("--port", type=int, default=0, help="server port (default: a free one)")
    parser.add_argument("--no-mlflow", action="store_true", help="print the report only")
    parser.add_argument("--work", default=str(ROOT / ".cache" / "simulate"),
                        help="folder for the model, the store and the server log "
                             "(default: %(default)s)")
    add_traceback_arg(parser)
    args = parser.parse_args(argv)
    folder = Path(args.work)
    folder.mkdir(parents=True, exist_ok=True)
    model = args.model or train(folder / "bundle")
    store_path = folder / "events.db"
    for old in folder.glob("events.db*"):
        old.unlink()
    # The server inherits the simulation's store and experiment; this process's environment is
    # given back afterwards (the simulation also runs inside the tests).
    saved = {key: os.environ.get(key) for key in (URL_ENV, EXPERIMENTS_ENV)}
    os.environ[URL_ENV] = f"sqlite:///{store_path}"
    os.environ[EXPERIMENTS_ENV] = str(experiment_file(folder, str(model)))
    try:
        return run(args, folder, model)
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def run(args: argparse.Namespace, folder: Path, model: Path | str) -> int:
    experiment = load_experiment(os.environ[EXPERIMENTS_ENV])

    data, truth = generate_with_truth("small")
    tastes = shop_tastes(truth)
    items = data.items
    catalog = {str(c): list(g["item_id"].astype(str)) for c, g in
               items[items["available"]].groupby("category_id", observed=True)}
    rng = np.random.default_rng(args.seed)
    known = sorted(set(data.events["user_id"].astype(str)) & set(tastes))
    shoppers = list(rng.choice(known, size=min(args.shoppers, len(known)), replace=False))
    started = time.perf_counter()
    with served(model, args.port or free_port(), folder / "server.log") as server:
        posted = simulate(server.url, shoppers, tastes, catalog, args.organic, args.seed,
                          args.visits)
        time.sleep(FLUSH_SECONDS * 4)   # the impressions are written off the request path
    print(f"simulated {len(shoppers):,} shoppers, {posted:,} events posted in "
          f"{time.perf_counter() - started:.0f} s")
    store = EventStore(os.environ[URL_ENV], create=False)
    try:
        table, checks = build_report(experiment, store, model_prices(str(model)))
    finally:
        store.close()
    print(format_table(table))
    print(f"sample ratio check: p = {checks['srm_p']:.3g}")
    conversion = table["conversion"]
    ordered = conversion["model"] > conversion["popular"] > conversion["control"]
    apart = all(table.loc[v, "conversion_lift_low"] > 0 for v in ("model", "popular"))
    print(f"expected ordering model > popular > control: {'yes' if ordered else 'NO'}; "
          f"lifts' intervals exclude zero: {'yes' if apart else 'NO'}")
    if not args.no_mlflow:
        run_id = log_report(experiment, table, checks, folder)
        print(f"mlflow    run {run_id} in experiment tailor-experiments")
    return 0 if ordered and apart else 1


def train(out: Path) -> Path:
    if (out / "bundle.json").exists():
        return out
    print(f"$ python -m training.train {' '.join(TRAIN)} --out {out}", flush=True)
    done = subprocess.run([sys.executable, "-m", "training.train", *TRAIN, "--out", str(out)],
                          cwd=ROOT)
    if done.returncode != 0:
        raise TailorError(f"training the simulation's model failed (exit {done.returncode})")
    return out


cli = command(main)  # `tailor-simulate` (pyproject.toml [project.scripts])

if __name__ == "__main__":
    cli()
