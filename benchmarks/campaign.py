"""`make bench-campaign`: what `make campaign` costs, in time and memory, as a marketer runs it.

    python -m benchmarks.campaign [--shoppers 1000000] [--k 10]

Each run is `python -m serving.campaign` in its own process (load the bundle, evaluate the
segment, rank in chunks, write Parquet and CSV), timed whole, its resident memory sampled every
0.1 s:

1. **Sports** (when ``../shared`` has it): every stored shopper (segment ``returning``), with
   and without explanations (each item's ``because``).
2. **Many shoppers**: the embedded shop's bundle with its stored histories resampled to
   ``shoppers`` shoppers (each a copy of a real stored history under a new id: the same model
   and catalog, only more shoppers), and to a tenth of that: if the export streams, peak memory
   grows with the bundle's histories only, not with the rows written. Explanations off at this
   size (their cost per shopper is the Sports figure).
"""

from __future__ import annotations

import argparse
import contextlib
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import pyarrow.parquet as pq

from benchmarks.common import (
    EMBEDDED,
    command_line,
    publish,
    real_data_sets,
    say,
    table,
    trained_bundle,
)
from features.config import add_config_args, config_from_args, setting
from features.history import Histories
from features.infra import ROOT, add_traceback_arg, cache_root, run_cli
from models.bundle import Bundle

SEGMENT = "returning"


@dataclass(frozen=True)
class CampaignBenchConfig:
    shoppers: int = setting(1_000_000, "shoppers of the resampled embedded-shop bundle")
    k: int = setting(10, "items per shopper")
    seed: int = setting(0, "seed of the resampling")


def resampled(source: Path, shoppers: int, seed: int) -> Path:
    """A copy of the bundle at ``source`` whose stored histories are ``shoppers`` copies of its
    own, drawn with replacement, under new ids (cached)."""
    out = cache_root() / "bench-bundles" / f"campaign-{shoppers}-{seed}"
    if (out / "bundle.json").is_file():
        return out
    bundle = Bundle.load(source)
    rng = np.random.default_rng(seed)
    drawn = bundle.histories.select(rng.integers(len(bundle.histories), size=shoppers))
    ids = np.array([f"s{i:08d}" for i in range(shoppers)], dtype=object)
    bundle.histories = Histories(ids, drawn.offsets, drawn.item_idx, drawn.event_code,
                                 drawn.age_days, drawn.steps_back, drawn.ts_ms)
    bundle.save(out)
    return out


def run_campaign(model: Path, k: int, explain: bool) -> dict[str, Any]:
    """One `make campaign` of every shopper, in its own process: seconds, peak RSS, output."""
    out = Path(tempfile.mkdtemp(prefix="campaign-bench-"))
    cmd = [sys.executable, "-m", "serving.campaign", "--model", str(model), "--segment",
           SEGMENT, "--k", str(k), "--out", str(out / "campaign"), "--no-progress",
           "--explain" if explain else "--no-explain"]
    say(f"  $ {' '.join(cmd[1:])}")
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    peak = 0
    watched = psutil.Process(proc.pid)
    while proc.poll() is None:
        with contextlib.suppress(psutil.Error):   # it may have just ended
            peak = max(peak, watched.memory_info().rss)
        time.sleep(0.1)
    seconds = time.perf_counter() - started
    output = proc.stdout.read() if proc.stdout else ""
    if proc.returncode != 0:
        raise RuntimeError(f"campaign failed (exit {proc.returncode}):\n{output[-2000:]}")
    files = {p.name: p.stat().st_size for p in (out / "campaign").iterdir()}
    meta = pq.ParquetFile(out / "campaign" / "campaign.parquet").metadata
    shoppers = len(pq.read_table(out / "campaign" / "campaign.parquet",
                                 columns=["user_id"]).column(0).unique())
    shutil.rmtree(out)
    return {"explain": explain, "seconds": seconds, "peak_rss_mb": peak / 2**20,
            "rows": int(meta.num_rows), "shoppers": shoppers,
            "shoppers_per_s": shoppers / seconds,
            "parquet_mb": files["campaign.parquet"] / 2**20,
            "csv_mb": files["campaign.csv"] / 2**20}


def markdown(runs: list[dict[str, Any]], cfg: CampaignBenchConfig) -> str:
    rows = [{"bundle": r["bundle"], "shoppers": f"{r['shoppers']:,}", "rows": f"{r['rows']:,}",
             "explanations": "yes" if r["explain"] else "no", "wall s": r["seconds"],
             "shoppers/s": r["shoppers_per_s"], "peak RSS MB": r["peak_rss_mb"],
             "Parquet MB": r["parquet_mb"], "CSV MB": r["csv_mb"]} for r in runs]
    lines = [f"`make campaign SEGMENT={SEGMENT} K={cfg.k}` in its own process per row (load, "
             "segment, rank in chunks, write Parquet + CSV), timed whole; peak resident memory "
             "sampled every 0.1 s.", "", table(rows), ""]
    big = [r for r in runs if r["bundle"].startswith("embedded")]
    if len(big) == 2:
        small, large = sorted(big, key=lambda r: r["shoppers"])
        lines.append(f"- {large['shoppers'] // small['shoppers']}x the shoppers: "
                     f"{large['seconds'] / small['seconds']:.1f}x the time, "
                     f"{large['peak_rss_mb'] / small['peak_rss_mb']:.2f}x the peak memory "
                     f"({large['rows'] / small['rows']:.0f}x the rows written).")
    sports = {r["explain"]: r for r in runs if r["bundle"] == "Sports"}
    if len(sports) == 2:
        per = (sports[True]["seconds"] - sports[False]["seconds"]) / sports[True]["shoppers"]
        lines.append(f"- Explanations on Sports: {1000 * per:.2f} ms more per shopper "
                     f"({sports[True]['seconds']:.0f} s against {sports[False]['seconds']:.0f}"
                     " s for every shopper).")
    lines.append("- The many-shopper bundle is the embedded shop's with its stored histories "
                 "resampled (copies of real histories under new ids): the model and catalog are "
                 "the embedded shop's; only the number of shoppers grows.")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.campaign",
                                     description=__doc__.split("\n\n")[0])
    add_config_args(parser, CampaignBenchConfig, title="campaign benchmark")
    add_traceback_arg(parser)
    cfg = config_from_args(CampaignBenchConfig, parser.parse_args(argv))
    runs = []
    sports = {ds.name: ds for ds in real_data_sets()}.get("Sports")
    if sports is not None:
        model, _ = trained_bundle(sports)
        for explain in (False, True):
            runs.append({"bundle": "Sports", **run_campaign(model, cfg.k, explain)})
    embedded, _ = trained_bundle(EMBEDDED)
    for shoppers in (cfg.shoppers // 10, cfg.shoppers):
        model = resampled(embedded, shoppers, cfg.seed)
        runs.append({"bundle": f"embedded shop x {shoppers:,} shoppers",
                     **run_campaign(model, cfg.k, explain=False)})
    for run in runs:
        say(f"  {run['bundle']}: {run['shoppers']:,} shoppers, {run['seconds']:.1f} s, "
            f"peak {run['peak_rss_mb']:.0f} MB")
    publish("campaign", command=command_line("campaign", argv), settings=cfg.__dict__,
            results={"runs": runs}, markdown=markdown(runs, cfg),
            metrics={f"{r['bundle']}/{'explain' if r['explain'] else 'plain'}/{m}": r[m]
                     for r in runs for m in ("seconds", "peak_rss_mb")})
    return 0


if __name__ == "__main__":
    run_cli(main)
