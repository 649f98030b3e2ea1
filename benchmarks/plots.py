"""The benchmarks' pictures, drawn from their results (``benchmarks/results/<part>.json``):

- ``quality.png``: NDCG@10 and HR@10 of the model and every baseline, per data set, on the test
  fold and, when measured, for the served (refitted) model on what came after the data;
- ``index-recall-qps.png``: recall@10 against queries per second of each FAISS index;
- ``serve-latency.png``: latency against the offered load (``benchmarks/serve_plots.py``);
- ``merch-diversity.png``: NDCG@10 against diversity (``benchmarks/merchandising.py``).

``publish`` draws a part's pictures when it writes the part's results and shows them in the
part's section of BENCHMARKS.md. ``make bench-plots`` redraws them all from the results there
are (skipping, with a line, a part never measured) and adds a missing picture's link to its
section:

    python -m benchmarks.plots
"""

from __future__ import annotations

import argparse
import json
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks import common
from features.infra import add_traceback_arg, run_cli
from training.run_summary import MODEL  # the model's row in quality.json

METRICS = ("ndcg@10", "hr@10")
DPI = 110


@dataclass(frozen=True)
class Plot:
    part: str     # whose results it draws (benchmarks/results/<part>.json)
    name: str     # the PNG beside the results
    alt: str      # its text in BENCHMARKS.md
    draw: Callable[[dict[str, Any], Path], Any]   # (the part's JSON, the PNG) -> the figure


def _figure(width: float, height: float) -> Any:
    # A bare Figure renders with the Agg canvas: no pyplot, no display, no global state.
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), layout="constrained")


def _save(fig: Any, path: Path) -> Any:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI)
    return fig


# --- quality ------------------------------------------------------------------------------------

def _bars(ax: Any, methods: dict[str, dict[str, float]], title: str) -> None:
    """Horizontal bars, NDCG@10 and HR@10 per method, the best NDCG@10 on top; the model's
    label in bold, so where it ranks is the first thing the eye finds."""
    names = sorted(methods, key=lambda n: methods[n].get("ndcg@10") or 0.0)
    height = 0.8 / len(METRICS)
    for i, metric in enumerate(METRICS):
        values = [methods[n].get(metric) or 0.0 for n in names]
        ys = [y + (len(METRICS) - 1 - 2 * i) * height / 2 for y in range(len(names))]
        bars = ax.barh(ys, values, height, label=metric.upper(), color=f"C{i}")
        ax.bar_label(bars, fmt="%.3f", fontsize=7, padding=2)
    ax.set_yticks(range(len(names)), names)
    for label in ax.get_yticklabels():
        if label.get_text().startswith(MODEL):
            label.set_fontweight("bold")
    top = max((m.get(k) or 0.0 for m in methods.values() for k in METRICS), default=0.0)
    ax.set_xlim(0, top * 1.22 or 1.0)   # room for the values at the bars' ends
    ax.set_title(title, fontsize=9)
    ax.set_xlabel("score (higher is better)", fontsize=8)
    ax.tick_params(labelsize=8)
    ax.grid(axis="x", alpha=0.3)


def quality_plot(payload: dict[str, Any], path: Path) -> Any:
    """One row per data set: the test fold (every method, the model's towers alone included)
    and, when measured, the served model against the baselines on what came after the data."""
    runs = payload["results"]["runs"]
    served = any(run.get("served") for run in runs)
    fig = _figure(11 if served else 6, 0.4 + 2.3 * len(runs))
    axes = fig.subplots(len(runs), 2 if served else 1, squeeze=False)
    for row, run in zip(axes, runs, strict=True):
        _bars(row[0], run["methods"], f"{run['name']} ({run['protocol']}): test fold")
        if not served:
            continue
        if run.get("served"):
            _bars(row[1], run["served"]["methods"],
                  f"{run['name']}: served (refit), scored on what came after the data")
        else:
            row[1].set_axis_off()
            row[1].text(0.5, 0.5, f"{run['name']}: served model not measured",
                        ha="center", va="center", fontsize=8)
    axes[0][0].legend(fontsize=8, loc="lower right")
    fig.suptitle("Quality: the model (bold) against every baseline, per data set",
                 fontsize=11)
    return _save(fig, path)


# --- index --------------------------------------------------------------------------------------

def index_plot(payload: dict[str, Any], path: Path) -> Any:
    """Per catalog, recall@k against queries per second (log): each index's tuning sweep
    (nprobe / efSearch, batched) and the setting Tailor keeps, measured in batches and one
    query at a time; the recall gate as a dotted line."""
    settings, results = payload["settings"], payload["results"]
    k, gate = settings.get("k", 10), settings.get("min_recall")
    fig = _figure(5.5 * len(results), 4.4)
    axes = fig.subplots(1, len(results), squeeze=False)[0]
    for ax, catalog in zip(axes, results.values(), strict=True):
        for i, row in enumerate(r for r in catalog["rows"] if "error" not in r):
            color, label = f"C{i}", row["index"]
            sweep = [t for t in row.get("tuning", []) if t.get("ms_per_query")]
            if sweep:
                ax.plot([1000 / t["ms_per_query"] for t in sweep], [t["recall"] for t in sweep],
                        "o-", color=color, ms=4, lw=1, alpha=0.6)
                for t in sweep[:-1]:   # the last is the setting kept: the legend names it
                    param = next((f"{p}={t[p]}" for p in ("nprobe", "efSearch") if p in t), "")
                    ax.annotate(param, (1000 / t["ms_per_query"], t["recall"]), fontsize=6,
                                color=color, textcoords="offset points", xytext=(3, -8))
            recall = row.get(f"recall_at_{k}", row.get("recall"))
            ax.plot(row["batch_qps"], recall, "*", color=color, ms=13,
                    label=f"{label}, {row.get('params', '')}: batches of "
                          f"{settings.get('batch_size', '?')}")
            if row.get("single_qps"):
                ax.plot(row["single_qps"], recall, "D", color=color, ms=6, mfc="none",
                        label=f"{label}: one query at a time")
        if gate:
            ax.axhline(gate, color="grey", lw=0.8, ls=":")
            ax.text(0.01, gate, f"recall gate {gate:g}", fontsize=7, va="bottom",
                    color="grey", transform=ax.get_yaxis_transform())
        ax.set_xscale("log")
        ax.set_xlabel("queries per second (log scale)")
        ax.set_ylabel(f"recall@{k} against exact search")
        ax.set_title(f"{catalog['title']}:\n{catalog['items']:,} items × {catalog['dim']}",
                     fontsize=9)
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=6.5, loc="lower left")
    fig.suptitle("FAISS index: recall against queries per second (lines: the recall gate's "
                 "tuning sweep, batched; markers: the setting kept)", fontsize=10)
    return _save(fig, path)


# --- parts that draw their own ------------------------------------------------------------------

def serve_plot(payload: dict[str, Any], path: Path) -> Any:
    from benchmarks.serve_plots import plot_serving

    return plot_serving(payload["results"]["http"], payload["results"]["in_process"], path)


def merch_plot(payload: dict[str, Any], path: Path) -> Any:
    from benchmarks.merchandising import plot_tradeoff

    return plot_tradeoff(payload["results"]["runs"], payload["settings"]["k"], path)


PLOTS = (
    Plot("quality", "quality.png", "NDCG@10 and HR@10 of the model and every baseline, per data "
         "set, on the test fold and served", quality_plot),
    Plot("index", "index-recall-qps.png", "recall@10 against queries per second, per FAISS index",
         index_plot),
    Plot("serve", "serve-latency.png", "latency against load, and CPU per request by component",
         serve_plot),
    Plot("merch", "merch-diversity.png", "NDCG@10 against intra-list diversity", merch_plot),
)


# --- drawing and linking ------------------------------------------------------------------------

def png_path(plot: Plot) -> Path:
    return common.RESULTS_DIR / plot.name   # read at call time: tests point it elsewhere


def link(plot: Plot) -> str:
    """The picture's markdown, its path relative to BENCHMARKS.md."""
    return f"![{plot.alt}]({Path(os.path.relpath(png_path(plot), common.BENCH_MD.parent))})"


def draw(plot: Plot, payload: dict[str, Any]) -> Any:
    """Draw ``plot`` from its part's JSON into ``png_path(plot)``; the figure."""
    return plot.draw(payload, png_path(plot))


def unlinked(part: str, markdown: str) -> list[Plot]:
    """``part``'s pictures that ``markdown`` (its section) does not show (a part that draws and
    links its own, serving, merchandising, shows it where it chose)."""
    return [p for p in PLOTS if p.part == part and p.name not in markdown]


def with_links(part: str, markdown: str) -> str:
    """``markdown`` with the links of ``part``'s pictures it lacks, before its first subsection
    (the pictures sum the part up) or at its end."""
    images = "".join(f"{link(p)}\n\n" for p in unlinked(part, markdown))
    if not images:
        return markdown
    sub = re.search(r"^### ", markdown, re.M)
    at = sub.start() if sub else len(markdown)
    return (f"{markdown[:at].rstrip()}\n\n{images}{markdown[at:]}").rstrip("\n") + "\n"


def illustrate(part: str, payload: dict[str, Any], markdown: str) -> tuple[str, dict[str, Any]]:
    """What ``publish`` adds to a part's section: its pictures not shown yet, drawn from
    ``payload`` (the part's JSON) and linked; also their figures by name, for MLflow."""
    figures = {Path(p.name).stem.replace("-", "_"): draw(p, payload)
               for p in unlinked(part, markdown)}
    return with_links(part, markdown), figures


def redraw_all() -> list[Path]:
    """Every picture whose part has results, and its link in the part's section (added when
    missing); a line for each part skipped."""
    written = []
    for part in dict.fromkeys(p.part for p in PLOTS):
        source = common.RESULTS_DIR / f"{part}.json"
        plots = [p for p in PLOTS if p.part == part]
        if not source.is_file():
            for plot in plots:
                common.say(f"skip {plot.name}: no {_shown(source)} (make bench-{part})")
            continue
        payload = json.loads(source.read_text())
        for plot in plots:
            draw(plot, payload)
            written.append(png_path(plot))
            common.say(f"wrote {_shown(png_path(plot))}")
        section = common.current_section(part)
        if section is not None:
            linked = with_links(part, section)
            if linked != section:
                common.update_markdown(part, linked)
                common.say(f"linked {part}'s picture in {_shown(common.BENCH_MD)}")
    return written


def _shown(path: Path) -> str:
    try:
        return str(path.relative_to(common.BENCH_MD.parent))
    except ValueError:
        return str(path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.plots",
        description="Redraw every benchmark picture from benchmarks/results/*.json (parts not "
                    "measured yet are skipped) and link any missing one in BENCHMARKS.md.")
    add_traceback_arg(parser)
    parser.parse_args(argv)
    redraw_all()
    return 0


if __name__ == "__main__":
    run_cli(main)
