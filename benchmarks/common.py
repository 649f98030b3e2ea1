"""What every benchmark shares: the machine, the data sets, medians, and where results go.

A benchmark part (quality, train, index, serve) measures, then calls ``publish``, which

* writes ``benchmarks/results/<part>.json`` (replaced atomically): the command, the machine, the
  date, the settings and every figure;
* rewrites that part's section of ``BENCHMARKS.md`` (between ``<!-- bench:<part> -->`` markers),
  leaving the other parts' sections as they were, so one part can be re-run on its own, with
  the part's pictures (``benchmarks/plots.py``) drawn from the JSON;
* logs a run to the MLflow experiment ``tailor-benchmarks`` (params: the settings; metrics: the
  figures; artifacts: the JSON and the markdown section).

Machines here are small, shared and noisy: figures are medians over repeats, and what matters
is the ratios measured side by side in one run.
"""

from __future__ import annotations

import json
import math
import os
import platform
import re
import shlex
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from features.infra import ROOT, atomic_path, cache_root

RESULTS_DIR = ROOT / "benchmarks" / "results"
BENCH_MD = ROOT / "BENCHMARKS.md"
SHARED_DATA = ROOT.parent / "shared" / "data"
EXPERIMENT = "benchmarks"   # MLflow experiment tailor-benchmarks
PARTS = ("quality", "cold", "merch", "train", "train-step", "index", "serve", "large", "soak",
         "events", "campaign")
PACKAGES = ("torch", "torchrec", "faiss-cpu", "bentoml", "mlflow", "implicit")


@dataclass(frozen=True)
class DataSet:
    name: str       # short label in tables
    spec: str       # Tailor data spec
    protocol: str   # the evaluation protocol it gets (for the published-numbers lookup)


# The real files beside the project, each with the protocol it is evaluated under.
REAL_DATA = (
    DataSet("Sports", "seq:{root}/amazon2014-5core-s3rec/Sports_and_Outdoors.txt.gz",
            "leave-one-out"),
    DataSet("Toys", "seq:{root}/amazon2014-5core-s3rec/Toys_and_Games.txt.gz", "leave-one-out"),
    DataSet("Taobao", "events:{root}/taobao-ecomm-cikm2019-dyhatr/events.csv.gz", "temporal"),
    DataSet("Tmall", "events:{root}/tmall-mbcgcn/interactions.csv.gz", "predefined"),
)
EMBEDDED = DataSet("synthetic", "synthetic", "temporal")


def real_data_sets(root: Path = SHARED_DATA) -> list[DataSet]:
    """The real data sets whose files are present (none in a checkout without ``../shared``)."""
    found = []
    for ds in REAL_DATA:
        spec = ds.spec.format(root=root.resolve())
        path = Path(spec.split(":", 1)[1])
        if path.is_file():
            found.append(DataSet(ds.name, spec, ds.protocol))
    return found


def select(data_sets: Sequence[DataSet], names: str | None) -> list[DataSet]:
    """``names``: comma-separated labels (case-insensitive); None keeps all."""
    if not names:
        return list(data_sets)
    wanted = [n.strip().lower() for n in names.split(",") if n.strip()]
    by_name = {ds.name.lower(): ds for ds in data_sets}
    unknown = [n for n in wanted if n not in by_name]
    if unknown:
        raise ValueError(f"unknown data set(s) {', '.join(unknown)}; "
                         f"available: {', '.join(by_name)}")
    return [by_name[n] for n in wanted]


def default_data_set() -> DataSet:
    """The catalog the index and serving parts measure: Sports when present (the issue's
    "Sports-sized catalog"), else the embedded shop."""
    real = {ds.name: ds for ds in real_data_sets()}
    return real.get("Sports", EMBEDDED)


# --- trained bundles ----------------------------------------------------------------------------

def bundle_dir(ds: DataSet) -> Path:
    """Where the benchmarks keep the bundle trained on ``ds`` (under the data cache)."""
    return cache_root() / "bench-bundles" / re.sub(r"[^\w.-]", "_", ds.name)


def trained_bundle(ds: DataSet, *, refresh: bool = False, extra_args: Sequence[str] = ()
                   ) -> tuple[Path, float]:
    """A bundle trained on ``ds`` with the default settings (``make train`` minus MLflow, so a
    benchmark never moves the registry's champion) and the wall seconds it took (0 if reused).

    The quality part trains afresh (``refresh``) and leaves the bundle for the index and serving
    parts, which reuse it when present.
    """
    import subprocess

    folder = bundle_dir(ds)
    if not refresh and (folder / "bundle.json").is_file():
        return folder, 0.0
    cmd = [sys.executable, "-m", "training.train", "--data", ds.spec, "--no-mlflow",
           "--no-progress", "--out", str(folder), *extra_args]
    say(f"  $ {shlex.join(cmd[1:])}")
    started = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True)
    seconds = time.perf_counter() - started
    if proc.returncode != 0:
        tail = "\n".join(proc.stdout.strip().splitlines()[-5:])
        raise RuntimeError(f"training on {ds.name} failed (exit {proc.returncode}):\n{tail}")
    return folder, seconds


# --- statistics ---------------------------------------------------------------------------------

def median(values: Iterable[float]) -> float:
    values = [float(v) for v in values]
    return float(np.median(values)) if values else math.nan


def percentiles(values: Sequence[float], qs: Sequence[float] = (50, 95, 99)) -> dict[str, float]:
    """``{"p50": ..., "p95": ..., "p99": ...}`` (NaN when there are no values)."""
    arr = np.asarray(values, dtype=np.float64)
    return {f"p{q:g}": float(np.percentile(arr, q)) if arr.size else math.nan for q in qs}


# --- machine ------------------------------------------------------------------------------------

def machine() -> dict[str, Any]:
    """What the figures were measured on."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_gb = math.nan
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                mem_gb = round(int(line.split()[1]) / 1024 ** 2, 1)
                break
    except OSError:
        pass
    versions = {}
    for package in PACKAGES:
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    return {"cpu": cpu, "cores": os.cpu_count(), "memory_gb": mem_gb,
            "python": platform.python_version(), "os": platform.platform(terse=True),
            "packages": versions}


def command_line(part: str, argv: Sequence[str] | None) -> str:
    args = list(sys.argv[1:] if argv is None else argv)
    return f"python -m benchmarks.{part}" + (" " + shlex.join(args) if args else "")


# --- publishing ---------------------------------------------------------------------------------

def publish(part: str, *, command: str, settings: dict[str, Any], results: dict[str, Any],
            markdown: str, metrics: dict[str, float] | None = None,
            figures: dict[str, Any] | None = None, mlflow_log: bool = True) -> Path:
    """Write the JSON, update BENCHMARKS.md, log to MLflow; returns the JSON path.

    ``markdown``: the part's section body (tables and notes); the header with the command, the
    machine and the date is added here. ``metrics``: flat name -> number for MLflow.
    ``figures``: artifact name -> matplotlib figure, logged to MLflow (with the part's pictures
    from ``benchmarks/plots.py``, which the section shows).
    """
    from benchmarks import plots  # here, not at the top: plots imports this module
    if part not in PARTS:
        raise ValueError(f"unknown benchmark part {part!r}")
    info = machine()
    date = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    payload = {"part": part, "command": command, "date": date, "machine": info,
               "settings": settings, "results": results}
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    out = RESULTS_DIR / f"{part}.json"
    payload = _jsonable(payload)
    with atomic_path(out) as tmp:
        tmp.write_text(json.dumps(payload, indent=2) + "\n")
    markdown, pictures = plots.illustrate(part, payload, markdown)
    section = (f"Command: `{command}` · measured {date} on {info['cores']} cores "
               f"({info['cpu']}), {info['memory_gb']} GiB, Python {info['python']}, "
               f"torch {info['packages']['torch']}, faiss {info['packages']['faiss-cpu']}, "
               f"bentoml {info['packages']['bentoml']} · raw figures: "
               f"`benchmarks/results/{part}.json`\n\n{markdown.strip()}\n")
    update_markdown(part, section)
    if mlflow_log:
        log_to_mlflow(part, command, settings, metrics or {}, out, section,
                      {**pictures, **(figures or {})})
    return out


TITLES = {"quality": "Quality", "cold": "New items", "merch": "Merchandising",
          "train": "Training", "train-step": "Training step", "index": "Index",
          "serve": "Serving", "events": "Live events",
          "campaign": "Campaigns", "large": "Large catalogs", "soak": "Soak"}
PREAMBLE = """# Benchmarks

Measured by `make bench` (or one part: `make bench-quality`, `make bench-cold`,
`make bench-merch`, `make bench-train`, `make bench-index`, `make bench-serve`,
`make bench-large`, `make bench-soak`, `make bench-events`, `make bench-campaign`) on this
project's machines: 2 shared, noisy cores.
Figures are medians over repeats; compare ratios measured side by side in one run rather than
absolute times across runs. Each section is rewritten by its own part; the raw figures are in
`benchmarks/results/<part>.json`, the pictures are drawn from them (`make bench-plots` redraws
them all) and every benchmark run is logged to the MLflow experiment `tailor-benchmarks`
(`make mlflow-ui`).
"""


def _markers(part: str) -> tuple[str, str, re.Pattern[str]]:
    """``part``'s begin and end markers in BENCHMARKS.md and the section between them."""
    begin, end = f"<!-- bench:{part} -->", f"<!-- /bench:{part} -->"
    return begin, end, re.compile(re.escape(begin) + r"\n?(.*?)\n?" + re.escape(end), re.S)


def current_section(part: str, path: Path | None = None) -> str | None:
    """``part``'s section of BENCHMARKS.md as written (None when it has no slot yet)."""
    path = path or BENCH_MD
    found = _markers(part)[2].search(path.read_text()) if path.exists() else None
    return found.group(1) if found else None


def update_markdown(part: str, section: str, path: Path | None = None) -> None:
    """Replace ``part``'s section of BENCHMARKS.md (created with every part's slot)."""
    path = path or BENCH_MD
    text = path.read_text() if path.exists() else PREAMBLE
    begin, end, pattern = _markers(part)
    for name in PARTS:  # every part keeps its slot, in a fixed order
        if f"<!-- bench:{name} -->" not in text:
            text = (text.rstrip("\n") + f"\n\n## {TITLES[name]}\n\n<!-- bench:{name} -->\n"
                    f"_Not measured yet: `make bench-{name}`._\n<!-- /bench:{name} -->\n")
    text = pattern.sub(lambda _: f"{begin}\n{section.strip()}\n{end}", text, count=1)
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def log_to_mlflow(part: str, command: str, settings: dict[str, Any], metrics: dict[str, float],
                  json_path: Path, section: str, figures: dict[str, Any]) -> str:
    """One run in ``tailor-benchmarks`` named after the part; returns the run id."""
    from mlflow.entities import Metric, Param
    from mlflow.tracking import MlflowClient

    from features.infra import git_state
    from models.registry import configure, ensure_experiment
    from training.tracking import flatten, metric_key

    client = MlflowClient(configure())
    experiment_id = ensure_experiment(EXPERIMENT, client)
    run = client.create_run(experiment_id, run_name=f"bench-{part}",
                            tags={"bench.part": part, "bench.command": command, **git_state()})
    run_id = run.info.run_id
    params = [Param(k, v[:6000]) for k, v in flatten(_jsonable(settings), "bench").items()]
    now = int(time.time() * 1000)
    values = [Metric(metric_key(name), float(v), now, 0) for name, v in metrics.items()
              if isinstance(v, int | float) and math.isfinite(float(v))]
    for start in range(0, len(params), 100):
        client.log_batch(run_id, params=params[start:start + 100])
    for start in range(0, len(values), 1000):
        client.log_batch(run_id, metrics=values[start:start + 1000])
    client.log_artifact(run_id, str(json_path))
    client.log_text(run_id, section, f"{part}.md")
    for name, fig in figures.items():
        client.log_figure(run_id, fig, f"figures/{name}.png")
    client.set_terminated(run_id)
    return run_id


def _jsonable(value: Any) -> Any:
    """Numpy scalars / arrays, tuples and NaN -> plain JSON (NaN becomes null)."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return _jsonable(value.tolist())
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


# --- tables -------------------------------------------------------------------------------------

def fmt(value: Any, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int | np.integer):
        return f"{int(value):,}"
    if isinstance(value, float | np.floating):
        v = float(value)
        if v != 0 and abs(v) >= 1000:
            return f"{v:,.0f}"
        if v != 0 and abs(v) >= 100:
            return f"{v:.1f}"
        return f"{v:.{digits}f}"
    return str(value)


def table(rows: Sequence[dict[str, Any]], columns: Sequence[str] | None = None,
          headers: dict[str, str] | None = None, digits: int = 3) -> str:
    """A GitHub markdown table of ``rows`` (dicts), ``columns`` in order."""
    if not rows:
        return "_no rows_\n"
    columns = list(columns or rows[0].keys())
    headers = headers or {}
    lines = ["| " + " | ".join(headers.get(c, c) for c in columns) + " |",
             "|" + "|".join("---" if i == 0 else "---:" for i in range(len(columns))) + "|"]
    for row in rows:
        lines.append("| " + " | ".join(fmt(row.get(c), digits) for c in columns) + " |")
    return "\n".join(lines) + "\n"


def say(*parts: Any) -> None:
    print(*parts, flush=True)
