"""Merchandising, measured on the served model (``benchmarks/served.py``'s hold-out: the model
sees the past, is scored on what came after):

- **Diversity.** The batch (``serving.batch``, the service's ranking path) at several
  ``diversity`` values and category caps: NDCG@10 / HR@10 next to intra-list diversity (mean
  pairwise cosine distance of the item vectors in a list), distinct leaf categories in a top 10
  and catalog coverage (distinct items listed / available items). The defaults in
  ``models/merchandising.py`` are read off this table.
- **Cart completion.** Shoppers with a cart after the cut (Tmall: the test split's cart; data
  with time: the first cart after the cut, with what else they carted within the hour), scored
  on the items they bought after it that are not in the cart: ``/complete_cart`` against
  ``/also_bought`` of the last carted item, ``/recommend`` with the cart as the session and the
  popular items. On the embedded shop also: how often a planted complement comes first.
- **Cost.** In-process milliseconds per ``/recommend`` with and without explanations and
  diversity.

Bundles: the served bundle the quality part leaves (``bench-bundles/<data>-served``), trained
here when missing.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from benchmarks.common import (
    BENCH_MD,
    EMBEDDED,
    RESULTS_DIR,
    DataSet,
    bundle_dir,
    command_line,
    median,
    publish,
    real_data_sets,
    say,
    select,
    table,
)
from benchmarks.served import HoldOut, hold_out, score, train_and_recommend
from features.config import add_config_args, config_from_args, setting
from features.infra import add_traceback_arg, run_cli
from features.readers import read_events
from features.spec import parse_spec
from features.split import sort_events
from serving.api import CartRequest, ItemRequest, RecommendRequest
from serving.batch import BatchConfig, batch_recommend
from serving.cart import bought_together_scores, complete_cart
from serving.engine import Engine, load_engine
from serving.recommend import also_bought, recommend

HOUR = pd.Timedelta(hours=1)


@dataclass(frozen=True)
class MerchBenchConfig:
    data: str = setting("Toys,Tmall,synthetic", "data sets (names, comma-separated)")
    diversity: tuple[float, ...] = setting((0.0, 0.1, 0.2, 0.3, 0.5, 0.7),
                                           "diversity values tried (no category cap)")
    caps: tuple[int, ...] = setting((3, 2), "max_per_category values tried (diversity 0)")
    k: int = setting(10, "list length scored")
    max_users: int = setting(5000, "target shoppers per data set (seeded sample)")
    max_carts: int = setting(3000, "cart shoppers per data set (seeded sample)")
    latency_requests: int = setting(300, "requests timed per setting")
    seed: int = setting(0, "sampling seed")


def served_bundle(ds: DataSet) -> tuple[HoldOut, Path]:
    """The hold-out of ``ds`` and the served bundle trained on it (reused when present)."""
    folder = bundle_dir(ds).with_name(bundle_dir(ds).name + "-served")
    held = hold_out(parse_spec(ds.spec), folder)
    bundle = folder / "bundle"
    if not (bundle / "bundle.json").is_file():
        say(f"  training the served bundle of {ds.name} ...")
        train_and_recommend(held, folder)
    return held, bundle


# --- diversity ------------------------------------------------------------------------------

def diversity_sweep(engine: Engine, held: HoldOut, cfg: MerchBenchConfig) -> list[dict]:
    rng = np.random.default_rng(cfg.seed)
    users = held.targets["user_id"].astype(object).unique()
    if len(users) > cfg.max_users:
        users = rng.choice(users, cfg.max_users, replace=False)
    targets = held.targets[held.targets["user_id"].isin(users)]
    settings = [(d, 0) for d in cfg.diversity] + [(0.0, c) for c in cfg.caps]
    rows = []
    for diversity, cap in settings:
        started = time.perf_counter()
        frame, _ = batch_recommend(engine, held.seen, users, BatchConfig(
            k=cfg.k, diversity=diversity, max_per_category=cap))
        seconds = time.perf_counter() - started
        quality = score(frame, targets, ks=(cfg.k,))
        rows.append({"diversity": f"{diversity:g}", "max_per_category": cap,
                     f"ndcg@{cfg.k}": quality[f"ndcg@{cfg.k}"],
                     f"hr@{cfg.k}": quality[f"hr@{cfg.k}"], **list_spread(engine, frame),
                     "seconds": f"{seconds:.1f}"})
        say(f"    diversity {diversity:g}, cap {cap}: {rows[-1]}")
    return rows


def list_spread(engine: Engine, frame: pd.DataFrame) -> dict[str, float]:
    """Intra-list diversity, distinct leaf categories per list and catalog coverage."""
    frame = frame.sort_values(["user_id", "rank"])
    rows = engine.rows_of(list(frame["item_id"]))
    owners = pd.factorize(frame["user_id"])[0]
    bounds = np.searchsorted(owners, np.arange(owners.max() + 2))
    distances, categories = [], []
    has_categories = engine.categories is not None and bool((engine.categories != "").any())
    for start, end in zip(bounds[:-1], bounds[1:], strict=True):
        mine = rows[start:end]
        if len(mine) > 1:
            v = engine.catalog.unit[mine]
            sims = v @ v.T
            distances.append(float(1 - sims[np.triu_indices(len(mine), 1)].mean()))
        if has_categories:
            leaves = engine.categories[mine]
            categories.append(len(set(leaves[leaves != ""])))
    return {"ild": float(np.mean(distances)) if distances else float("nan"),
            "categories": float(np.mean(categories)) if categories else float("nan"),
            "coverage": frame["item_id"].nunique() / max(int(engine.available.sum()), 1)}


# --- cart completion ------------------------------------------------------------------------

def cart_cases(ds: DataSet, held: HoldOut, engine: Engine, cfg: MerchBenchConfig
               ) -> list[tuple[str, list[str], set[str]]]:
    """(shopper, cart, items bought after it and not in it) for shoppers with a cart after the
    cut, carts and targets among the items the model knows."""
    events = sort_events(read_events(parse_spec(ds.spec)).events)
    known_users = set(held.seen["user_id"].astype(str))
    cases = []
    if held.protocol == "predefined":
        test = events[(events["split"].astype(str) == "test").to_numpy()]
        for user, mine in test.groupby("user_id", sort=False, observed=True):
            cart = list(dict.fromkeys(mine.loc[mine["event"] == "addtocart", "item_id"]))
            bought = set(mine.loc[mine["event"] == "purchase", "item_id"]) - set(cart)
            cases.append((str(user), cart, bought))
    elif held.protocol == "temporal":
        after = events[events["timestamp"] >= pd.Timestamp(held.cut)]
        for user, mine in after.groupby("user_id", sort=False, observed=True):
            carts = mine[mine["event"] == "addtocart"]
            if carts.empty:
                continue
            t0 = carts["timestamp"].iloc[0]
            cart = list(dict.fromkeys(carts.loc[carts["timestamp"] <= t0 + HOUR, "item_id"]))
            later = mine[(mine["event"] == "purchase") & (mine["timestamp"] >= t0)]
            cases.append((str(user), cart, set(later["item_id"]) - set(cart)))
    cases = [(u, [i for i in c if i in engine.item_rows],
              {i for i in b if i in engine.item_rows}) for u, c, b in cases if u in known_users]
    cases = [(u, c, b) for u, c, b in cases if c and b]
    rng = np.random.default_rng(cfg.seed)
    if len(cases) > cfg.max_carts:
        cases = [cases[i] for i in sorted(rng.choice(len(cases), cfg.max_carts, replace=False))]
    return cases


def cart_hit_rates(engine: Engine, cases: list, k: int) -> dict[str, float]:
    hits = {"complete_cart": 0, "also_bought (last cart item)": 0,
            "recommend (cart as session)": 0, "popular": 0}
    popular = [str(engine.ids[r]) for r in engine.popular_rows[:k + 100]]
    for user, cart, bought in cases:
        lists = {
            "complete_cart": complete_cart(engine, CartRequest(user_id=user, cart=cart, k=k,
                                                               explain=False)).items,
            "also_bought (last cart item)": also_bought(engine, ItemRequest(item_id=cart[-1],
                                                                            k=k)).items,
            "recommend (cart as session)": recommend(engine, RecommendRequest(
                user_id=user, k=k, explain=False,
                recent_events=[{"item_id": i, "event": "addtocart"} for i in cart])).items,
        }
        for name, items in lists.items():
            hits[name] += bool({i.item_id for i in items} & bought)
        hits["popular"] += bool(set([i for i in popular if i not in cart][:k]) & bought)
    return {name: n / max(len(cases), 1) for name, n in hits.items()}


def planted_complements(engine: Engine) -> dict[str, float]:
    """The embedded shop: for each planted anchor, is its complement first in a cart of it?"""
    from features.synthetic import generate_with_truth

    _, truth = generate_with_truth("small")
    first = with_stats = first_with_stats = total = 0
    for anchor, complement in truth.complements.items():
        if anchor not in engine.item_rows or complement not in engine.item_rows or \
                not engine.available[engine.item_rows[complement]]:
            continue
        total += 1
        got = complete_cart(engine, CartRequest(cart=[anchor], k=1, explain=False)).items
        hit = bool(got) and got[0].item_id == complement
        stats = bool(together_with(engine, anchor, complement))
        first += hit
        with_stats += stats
        first_with_stats += hit and stats
    return {"anchors": total, "complement_first": first / max(total, 1),
            "anchors_with_pair_statistics": with_stats,
            "complement_first_with_statistics": first_with_stats / max(with_stats, 1)}


def together_with(engine: Engine, anchor: str, other: str) -> float:
    """The bought-together score of the pair in the bundle (0: the statistics lack it)."""
    together, _ = bought_together_scores(engine, np.array([engine.item_rows[anchor]]))
    return float(together[engine.item_rows[other]])


# --- cost -----------------------------------------------------------------------------------

def request_costs(engine: Engine, held: HoldOut, cfg: MerchBenchConfig) -> dict[str, float]:
    users = list(held.targets["user_id"].astype(str).unique()[:cfg.latency_requests])
    out = {}
    for name, extra in (("plain", {"explain": False}), ("explain", {}),
                        ("diversity 0.3", {"explain": False, "diversity": 0.3}),
                        ("diversity 0.3 + explain", {"diversity": 0.3})):
        times = []
        for user in users:
            started = time.perf_counter()
            recommend(engine, RecommendRequest(user_id=user, k=cfg.k, **extra))
            times.append((time.perf_counter() - started) * 1000)
        out[name] = round(median(times), 2)
    return out


# --- the part -------------------------------------------------------------------------------

def measure(ds: DataSet, cfg: MerchBenchConfig) -> dict[str, Any]:
    say(f"{ds.name}:")
    held, bundle = served_bundle(ds)
    engine = load_engine(str(bundle))
    out: dict[str, Any] = {"name": ds.name, "protocol": held.protocol, "bundle": str(bundle),
                           "method": engine.method}
    out["diversity"] = diversity_sweep(engine, held, cfg)
    cases = cart_cases(ds, held, engine, cfg)
    if cases:
        out["cart"] = {"shoppers": len(cases), **cart_hit_rates(engine, cases, cfg.k)}
        say(f"  carts: {out['cart']}")
    if ds.name == "synthetic":
        out["planted"] = planted_complements(engine)
        say(f"  planted complements: {out['planted']}")
    out["ms_per_request"] = request_costs(engine, held, cfg)
    say(f"  ms per /recommend: {out['ms_per_request']}")
    return out


def markdown(runs: list[dict], k: int, plot: str | None) -> str:
    text = ("Served model (the hold-out of `benchmarks/served.py`), the batch ranking path at each "
            f"setting. ild: mean pairwise cosine distance in a top {k}; categories: distinct leaf "
            "categories in a top 10; coverage: distinct items listed / available items.\n\n")
    for run in runs:
        text += f"**{run['name']}** ({run['protocol']}, {run['method']}):\n\n"
        text += table(run["diversity"], digits=4) + "\n"
    if plot:
        text += f"![NDCG@{k} against intra-list diversity]({plot})\n\n"
    carts = [{"data": r["name"], **r["cart"]} for r in runs if "cart" in r]
    if carts:
        text += (f"Cart completion, HR@{k} of the items bought after the cart (not in it):\n\n"
                 + table(carts, digits=4) + "\n")
    for run in runs:
        if "planted" in run:
            p = run["planted"]
            text += (f"Embedded shop: a cart of one planted anchor gets its complement first for "
                     f"{p['complement_first']:.1%} of {p['anchors']} anchors, and for "
                     f"{p['complement_first_with_statistics']:.1%} of the "
                     f"{p['anchors_with_pair_statistics']} whose pair is in the bought-together "
                     "statistics of the training window (the others' complements come from the "
                     "model, if at all).\n\n")
    costs = [{"data": r["name"], **r["ms_per_request"]} for r in runs]
    text += ("In-process milliseconds per `/recommend` (median; explanations score the history "
             "once per history item):\n\n" + table(costs, digits=2) + "\n")
    return text


def plot_tradeoff(runs: list[dict], k: int, path: Path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(runs), figsize=(4.2 * len(runs), 3.4), squeeze=False)
    for ax, run in zip(axes[0], runs, strict=True):
        sweep = [r for r in run["diversity"] if r["max_per_category"] == 0]  # diversity: text
        caps = [r for r in run["diversity"] if r["max_per_category"] > 0]
        ax.plot([r["ild"] for r in sweep], [r[f"ndcg@{k}"] for r in sweep], "o-",
                label="diversity")
        for r in sweep:
            ax.annotate(r["diversity"], (r["ild"], r[f"ndcg@{k}"]), fontsize=7,
                        textcoords="offset points", xytext=(3, 3))
        if caps:
            ax.plot([r["ild"] for r in caps], [r[f"ndcg@{k}"] for r in caps], "s",
                    label="max per category")
            for r in caps:
                ax.annotate(f"cap {r['max_per_category']}", (r["ild"], r[f"ndcg@{k}"]),
                            fontsize=7, textcoords="offset points", xytext=(3, -9))
        ax.set_title(run["name"])
        ax.set_xlabel("intra-list diversity")
        ax.set_ylabel(f"NDCG@{k}")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return fig


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.merchandising",
                                     description=__doc__.split("\n\n")[0])
    add_config_args(parser, MerchBenchConfig, title="merchandising benchmark")
    add_traceback_arg(parser)
    args = parser.parse_args(argv)
    cfg = config_from_args(MerchBenchConfig, args)
    data_sets = select([*real_data_sets(), EMBEDDED], cfg.data)
    runs = [measure(ds, cfg) for ds in data_sets]
    plot_path = RESULTS_DIR / "merch-diversity.png"
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    fig = plot_tradeoff(runs, cfg.k, plot_path)
    plot = str(plot_path.relative_to(BENCH_MD.parent))
    metrics = {f"{r['name']}/div{row['diversity']}_cap{row['max_per_category']}/{m}": row[m]
               for r in runs for row in r["diversity"] for m in (f"ndcg@{cfg.k}", "ild")}
    publish("merch", command=command_line("merchandising", argv),
            settings=cfg.__dict__ | {"data_sets": [d.spec for d in data_sets]},
            results={"runs": runs}, markdown=markdown(runs, cfg.k, plot), metrics=metrics,
            figures={"diversity_tradeoff": fig})
    return 0


if __name__ == "__main__":
    run_cli(main)
