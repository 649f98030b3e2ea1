"""`make experiment-report EXPERIMENT=name`: does personalization pay? Per variant, from the
event store, with 95% confidence intervals and the lift against control.

    tailor-experiment-report --experiment NAME [--model champion] [--no-mlflow]

Per variant:
- shoppers assigned, impressions (answers served);
- CTR: impressions with a view of a shown item posted with the answer's ``request_id``;
- add-to-cart rate: impressions with an add-to-cart of a shown item attributed the same way;
- conversion: assigned shoppers who bought anything after their assignment, from a
  recommendation or not (the shop's real question);
- revenue per shopper, when the model's items have prices.
Proportions get Wilson intervals; lifts against the control variant (or the first variant) get
Newcombe intervals for the difference and a two-sided test (statsmodels); revenue a Welch
interval and test. A sample-ratio-mismatch check (chi-square of shoppers per variant against the
shares, scipy) warns when p < 0.001: then the assignment, not the variants, may explain the
differences. The report is printed and logged to MLflow (experiment ``tailor-experiments``:
metrics, the table, a lift-with-intervals plot).
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy.stats import chisquare
from statsmodels.stats.proportion import (
    confint_proportions_2indep,
    proportion_confint,
    test_proportions_2indep,
)
from statsmodels.stats.weightstats import CompareMeans, DescrStatsW

from features.event_store import EventStore
from features.experiments import Experiment
from features.infra import DataError, add_traceback_arg, command
from serving.experiments import experiment_files, load_experiment

SRM_P = 0.001
RATES = ("ctr", "cart_rate", "conversion")


def outcomes(assigned: pd.DataFrame, shown: pd.DataFrame, events: pd.DataFrame,
             prices: dict[str, float] | None = None) -> pd.DataFrame:
    """One row per assigned shopper: variant, impressions, clicked / carted impressions, bought
    (after assignment), revenue."""
    events = events.copy()
    shown = shown.copy()
    shown["shown"] = shown["items"].map(set)
    attributed = events.merge(shown[["request_id", "shown"]], on="request_id", how="inner")
    attributed = attributed[[item in seen for item, seen in
                             zip(attributed["item_id"], attributed["shown"], strict=True)]]
    per_impression = shown[["request_id", "user_id"]].assign(
        clicked=shown["request_id"].isin(
            attributed.loc[attributed["event"] == "view", "request_id"]),
        carted=shown["request_id"].isin(
            attributed.loc[attributed["event"] == "addtocart", "request_id"]),
        with_items=shown["items"].map(len) > 0)
    per_user = per_impression.groupby("user_id").agg(
        impressions=("request_id", "size"), with_items=("with_items", "sum"),
        clicked=("clicked", "sum"), carted=("carted", "sum"))
    buys = events[events["event"] == "purchase"].merge(
        assigned[["user_id", "assigned_ms"]], on="user_id")
    buys = buys[buys["ts_ms"] >= buys["assigned_ms"]]
    bought = buys.groupby("user_id").size().rename("purchases")
    revenue = None
    if prices:
        revenue = buys.assign(price=buys["item_id"].map(prices).fillna(0.0)).groupby(
            "user_id")["price"].sum().rename("revenue")
    out = assigned[["user_id", "variant"]].set_index("user_id").join(per_user).join(bought)
    if revenue is not None:
        out = out.join(revenue)
    return out.fillna(0).reset_index()


def report(experiment: Experiment, per_user: pd.DataFrame) -> tuple[pd.DataFrame, dict]:
    """The table (one row per variant) and the sample-ratio check."""
    names = [v.name for v in experiment.variants]
    base = next((v.name for v in experiment.variants if v.kind == "control"), names[0])
    rows = []
    for name in names:
        mine = per_user[per_user["variant"] == name]
        row: dict[str, Any] = {"variant": name, "shoppers": len(mine),
                               "impressions": int(mine["impressions"].sum())}
        counts = {"ctr": (int(mine["clicked"].sum()), int(mine["with_items"].sum())),
                  "cart_rate": (int(mine["carted"].sum()), int(mine["with_items"].sum())),
                  "conversion": (int((mine["purchases"] > 0).sum()), len(mine))}
        for rate, (hits, n) in counts.items():
            row[rate], row[f"{rate}_low"], row[f"{rate}_high"] = _proportion(hits, n)
            row[f"_{rate}_counts"] = (hits, n)
        if "revenue" in mine:
            stats = DescrStatsW(mine["revenue"].to_numpy(dtype=float))
            low, high = stats.tconfint_mean() if len(mine) > 1 else (math.nan, math.nan)
            row |= {"revenue_per_shopper": stats.mean if len(mine) else math.nan,
                    "revenue_low": low, "revenue_high": high}
        rows.append(row)
    table = pd.DataFrame(rows).set_index("variant")
    for name in names:
        if name == base:
            continue
        for rate in RATES:
            (h1, n1), (h0, n0) = table.loc[name, f"_{rate}_counts"], table.loc[base,
                                                                                f"_{rate}_counts"]
            diff, low, high, p = _lift(h1, n1, h0, n0)
            table.loc[name, [f"{rate}_lift", f"{rate}_lift_low", f"{rate}_lift_high",
                             f"{rate}_p"]] = [diff, low, high, p]
        if "revenue_per_shopper" in table:
            a = per_user.loc[per_user["variant"] == name, "revenue"].to_numpy(dtype=float)
            b = per_user.loc[per_user["variant"] == base, "revenue"].to_numpy(dtype=float)
            if len(a) > 1 and len(b) > 1:
                compare = CompareMeans(DescrStatsW(a), DescrStatsW(b))
                low, high = compare.tconfint_diff(usevar="unequal")
                p = compare.ttest_ind(usevar="unequal")[1]
                table.loc[name, ["revenue_lift", "revenue_lift_low", "revenue_lift_high",
                                 "revenue_p"]] = [a.mean() - b.mean(), low, high, p]
    table = table.drop(columns=[c for c in table if c.startswith("_")])
    observed = table["shoppers"].to_numpy(dtype=float)
    expected = np.array([v.share for v in experiment.variants]) * observed.sum()
    srm_p = float(chisquare(observed, expected).pvalue) if observed.sum() else math.nan
    return table, {"baseline": base, "srm_p": srm_p, "srm_warning": bool(srm_p < SRM_P)}


def _proportion(hits: int, n: int) -> tuple[float, float, float]:
    if n == 0:
        return math.nan, math.nan, math.nan
    low, high = proportion_confint(hits, n, alpha=0.05, method="wilson")
    return hits / n, float(low), float(high)


def _lift(h1: int, n1: int, h0: int, n0: int) -> tuple[float, float, float, float]:
    """Difference of two proportions, its 95% interval (Newcombe) and two-sided p-value."""
    if min(n1, n0) == 0:
        return (math.nan,) * 4
    low, high = confint_proportions_2indep(h1, n1, h0, n0, method="newcomb", compare="diff")
    p = test_proportions_2indep(h1, n1, h0, n0, compare="diff").pvalue if h1 + h0 else 1.0
    return h1 / n1 - h0 / n0, float(low), float(high), float(p)


def lift_plot(table: pd.DataFrame, name: str):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rates = [r for r in ("conversion", "ctr", "cart_rate") if f"{r}_lift" in table]
    fig, axes = plt.subplots(1, len(rates), figsize=(4.2 * len(rates), 3.2), squeeze=False)
    for ax, rate in zip(axes[0], rates, strict=True):
        rows = table[table[f"{rate}_lift"].notna()]
        y = np.arange(len(rows))
        lift = rows[f"{rate}_lift"].to_numpy(dtype=float)
        err = np.vstack([lift - rows[f"{rate}_lift_low"], rows[f"{rate}_lift_high"] - lift])
        ax.errorbar(lift, y, xerr=err, fmt="o", capsize=4)
        ax.axvline(0, color="grey", lw=1)
        ax.set_yticks(y, rows.index)
        ax.set_title(f"{rate} lift vs control (95% CI)", fontsize=9)
    fig.suptitle(name, fontsize=10)
    fig.tight_layout()
    return fig


def format_table(table: pd.DataFrame) -> str:
    lines = []
    for name, row in table.iterrows():
        parts = [f"{name:<22} shoppers {int(row['shoppers']):>6}  impressions "
                 f"{int(row['impressions']):>6}"]
        for rate in RATES:
            value = row[rate]
            text = "   n/a" if math.isnan(value) else \
                f"{value:6.3f} [{row[f'{rate}_low']:.3f}, {row[f'{rate}_high']:.3f}]"
            lift = row.get(f"{rate}_lift", math.nan)
            if isinstance(lift, float) and not math.isnan(lift):
                text += (f" lift {lift:+.3f} [{row[f'{rate}_lift_low']:+.3f}, "
                         f"{row[f'{rate}_lift_high']:+.3f}] p={row[f'{rate}_p']:.2g}")
            parts.append(f"  {rate:<10} {text}")
        if "revenue_per_shopper" in row and not math.isnan(row["revenue_per_shopper"]):
            parts.append(f"  revenue/shopper {row['revenue_per_shopper']:.2f} "
                         f"[{row['revenue_low']:.2f}, {row['revenue_high']:.2f}]")
        lines.append("\n".join(parts))
    return "\n".join(lines)


def find_experiment(name: str) -> Experiment:
    for path in experiment_files():
        experiment = load_experiment(path)
        if experiment.name == name:
            return experiment
    raise DataError(f"no experiment named {name!r} in the experiment files (experiments/*.toml "
                    "or $TAILOR_EXPERIMENTS)")


def build_report(experiment: Experiment, store: EventStore,
                 prices: dict[str, float] | None = None) -> tuple[pd.DataFrame, dict]:
    assigned, shown, events = store.experiment_tables(experiment.name)
    if assigned.empty:
        raise DataError(f"experiment {experiment.name!r} has no assigned shoppers yet")
    return report(experiment, outcomes(assigned, shown, events, prices))


def log_report(experiment: Experiment, table: pd.DataFrame, checks: dict,
               folder: Path) -> str:
    from mlflow.tracking import MlflowClient

    from models.registry import configure, ensure_experiment

    client = MlflowClient(configure())
    run = client.create_run(ensure_experiment("experiments", client),
                            run_name=f"report-{experiment.name}",
                            tags={"experiment.name": experiment.name,
                                  "experiment.baseline": checks["baseline"],
                                  "experiment.srm_warning": str(checks["srm_warning"])})
    run_id = run.info.run_id
    for name, row in table.iterrows():
        for column, value in row.items():
            if isinstance(value, int | float) and math.isfinite(float(value)):
                client.log_metric(run_id, f"{name}/{column}", float(value))
    client.log_metric(run_id, "srm_p", checks["srm_p"])
    folder.mkdir(parents=True, exist_ok=True)
    table.to_csv(folder / "report.csv")
    client.log_artifact(run_id, str(folder / "report.csv"))
    client.log_text(run_id, format_table(table), "report.txt")
    client.log_figure(run_id, lift_plot(table, experiment.name), "lift.png")
    client.set_terminated(run_id)
    return run_id


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tailor-experiment-report",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--experiment", required=True, help="the experiment's name")
    parser.add_argument("--model", default="champion",
                        help="model whose item prices give revenue (default: %(default)s; "
                             "'none' skips revenue)")
    parser.add_argument("--out", default=".cache/experiment-report",
                        help="folder for the report's CSV (default: %(default)s)")
    parser.add_argument("--no-mlflow", action="store_true", help="print only")
    add_traceback_arg(parser)
    args = parser.parse_args(argv)
    experiment = find_experiment(args.experiment)
    prices = None if args.model == "none" else model_prices(args.model)
    store = EventStore(create=False)
    try:
        table, checks = build_report(experiment, store, prices)
    finally:
        store.close()
    print(f"experiment {experiment.name} (/{experiment.endpoint}, {experiment.start:%Y-%m-%d} .. "
          f"{experiment.end:%Y-%m-%d}); lifts against {checks['baseline']}")
    print(format_table(table))
    print(f"sample ratio check: p = {checks['srm_p']:.3g}"
          + ("  WARNING: the variants' sizes do not match their shares" if
             checks["srm_warning"] else " (sizes match the shares)"))
    if not args.no_mlflow:
        run_id = log_report(experiment, table, checks, Path(args.out))
        print(f"mlflow    run {run_id} in experiment tailor-experiments")
    return 0


def model_prices(ref: str) -> dict[str, float] | None:
    from models.bundle import Bundle
    from models.registry import resolve_model

    items = Bundle.load(resolve_model(ref)).items
    if "price" not in items:
        return None
    return dict(zip(items["item_id"].astype(str), items["price"].astype(float), strict=True))


cli = command(main)  # `tailor-experiment-report` (pyproject.toml [project.scripts])

if __name__ == "__main__":
    cli()
