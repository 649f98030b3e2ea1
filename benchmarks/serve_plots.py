"""The serving benchmark's picture: latency percentiles against the load, and what one request
costs the cores, by component (``benchmarks/serve.py`` draws it; BENCHMARKS.md shows it;
``python -m benchmarks.plots`` redraws it from benchmarks/results/serve.json).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from benchmarks import common
from benchmarks.serve_report import TARGET_P99_MS, load_label

PLOT_NAME = "serve-latency.png"


def plot_path() -> Path:
    return common.RESULTS_DIR / PLOT_NAME   # read at call time: tests point it elsewhere


def plot_serving(http: list[dict[str, Any]], local: dict[str, dict[str, Any]],
                 path: Path | None = None):
    """Left: p50 / p99 per load level and endpoint (log scale, the target's bound drawn).
    Right: CPU ms per request by component: the ranking in-process, the HTTP stack (the
    server's CPU beyond it), the load generator."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (lat, cpu) = plt.subplots(1, 2, figsize=(11, 3.8))
    routes = list(dict.fromkeys(r["route"] for r in http))
    for route in routes:
        rows = [r for r in http if r["route"] == route]
        labels = [load_label(r).replace(" open loop", "\nopen") for r in rows]
        for key, style in (("p50_ms", "o--"), ("p99_ms", "s-")):
            lat.plot(labels, [r[key] for r in rows], style, label=f"{route} {key[:3]}")
    lat.axhline(TARGET_P99_MS, color="grey", lw=0.8, ls=":")
    lat.text(0, TARGET_P99_MS * 1.08, f"p99 target {TARGET_P99_MS:g} ms", fontsize=7)
    lat.set_yscale("log")
    lat.set_title("Latency against offered load", fontsize=10)
    lat.set_ylabel("latency ms (log scale)")
    lat.set_xlabel("offered load: concurrent clients (closed loop) or a request rate (open loop)",
                   fontsize=8)
    lat.grid(alpha=0.3)
    lat.legend(fontsize=7)
    names = [n for n in local if any(r["name"] == n for r in http)]
    compute, stack, client = [], [], []
    for name in names:
        busiest = max((r for r in http if r["name"] == name),
                      key=lambda r: (bool(r.get("rate")), r["rps"]))
        compute.append(local[name]["cpu_ms"])
        stack.append(max(0.0, busiest["server_cpu_ms"] - local[name]["cpu_ms"]))
        client.append(busiest["client_cpu_ms"])
    xs = range(len(names))
    cpu.bar(xs, compute, label="ranking (in-process)")
    cpu.bar(xs, stack, bottom=compute, label="HTTP stack (server)")
    cpu.bar(xs, client, bottom=[a + b for a, b in zip(compute, stack, strict=True)],
            label="load generator")
    cpu.set_xticks(list(xs), [next(r["route"] for r in http if r["name"] == n) for n in names])
    cpu.set_title("CPU per request by component, at each route's busiest load", fontsize=10)
    cpu.set_ylabel("CPU ms per request")
    cpu.legend(fontsize=7)
    cpu.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    path = path or plot_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    return fig
