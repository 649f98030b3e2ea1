"""`make bench-soak`: a real `make serve` held at 70% of its measured capacity for 10 minutes.

    python -m benchmarks.soak [--minutes 10] [--share 0.7]

1. **Capacity**: /recommend (the serving benchmark's request mix) closed-loop at
   ``concurrency`` clients for 10 s: the answered requests/s.
2. **Soak**: an open-loop load at ``share`` of that rate (requests due on time, whatever the
   answers), measured minute by minute for ``minutes``: answered requests/s, p50 / p99, errors
   and shed requests (503) per minute, and the resident memory of every worker after each
   minute.

Passes when no request failed or was shed, the p99 of the last minute is within 1.5x of the
first's, and no worker's memory grew by 5% or more from the end of the first minute (warm) to
the end (a leak check). The model is the serving benchmark's bundle (Sports when present).
"""

from __future__ import annotations

import argparse
import contextlib
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

from benchmarks.common import (
    command_line,
    default_data_set,
    publish,
    say,
    table,
    trained_bundle,
)
from benchmarks.serve import ServeBenchConfig, run_load, write_requests
from benchmarks.serve_requests import build_requests
from features.config import add_config_args, config_from_args, setting
from features.infra import add_traceback_arg, run_cli
from serving.engine import load_engine
from serving.guard import DEFAULT_MAX_INFLIGHT, INFLIGHT_ENV, env_int
from serving.process import free_port, served, sigterm_unwinds

P99_DRIFT = 1.5
LEAK = 0.05


@dataclass(frozen=True)
class SoakConfig:
    minutes: int = setting(10, "minutes of load at the soak rate")
    share: float = setting(0.7, "the soak rate as a share of the measured capacity")
    concurrency: int = setting(8, "clients of the capacity run")
    clients: int = setting(64, "keep-alive connections of the soak load")


def rss_mb(pids: list[int]) -> dict[str, float]:
    out = {}
    for pid in pids:
        with contextlib.suppress(psutil.Error):
            out[str(pid)] = psutil.Process(pid).memory_info().rss / 2**20
    return out


def soak(cfg: SoakConfig) -> dict[str, Any]:
    ds = default_data_set()
    bundle, _ = trained_bundle(ds)
    serve_cfg = ServeBenchConfig()
    requests = {"recommend": build_requests(load_engine(str(bundle)), serve_cfg)["recommend"]}
    with sigterm_unwinds(), tempfile.TemporaryDirectory(prefix="tailor-soak-") as tmp:
        work = Path(tmp)
        run = write_requests(requests, work)["recommend"]
        with served(bundle, free_port(), work / "server.log") as server:
            workers = server.workers()
            capacity = run_load(server.url, [{**run, "concurrency": cfg.concurrency}],
                                serve_cfg, work, seconds=10, warmup_s=2)[0]
            rate = round(cfg.share * capacity["ok_rps"], 1)
            say(f"soak: capacity {capacity['ok_rps']:.0f} req/s; {cfg.minutes} min at "
                f"{rate:g} req/s")
            minutes = []
            for minute in range(cfg.minutes):
                started = time.perf_counter()
                got = run_load(server.url, [{**run, "rate": rate, "clients": cfg.clients}],
                               serve_cfg, work, seconds=60, warmup_s=0, max_requests=10**9,
                               verbose=False)[0]
                minutes.append({"minute": minute + 1, "rps": got["ok_rps"],
                                "p50_ms": got["p50_ms"], "p99_ms": got["p99_ms"],
                                "errors": got["errors"], "shed": got["shed"],
                                "rss_mb": rss_mb(workers),
                                "wall_s": time.perf_counter() - started})
                say(f"  minute {minute + 1}: {got['ok_rps']:.0f} req/s, p99 "
                    f"{got['p99_ms']:.1f} ms, errors {got['errors']}, shed {got['shed']}")
    first, last = minutes[0], minutes[-1]
    growth = {pid: last["rss_mb"].get(pid, float("nan")) / mb - 1
              for pid, mb in first["rss_mb"].items()}
    passed = (all(m["errors"] == 0 and m["shed"] == 0 for m in minutes)
              and last["p99_ms"] <= P99_DRIFT * first["p99_ms"]
              and all(g < LEAK for g in growth.values()))
    return {"data": ds.name, "bundle": str(bundle), "capacity_rps": capacity["ok_rps"],
            "max_inflight": env_int(INFLIGHT_ENV, DEFAULT_MAX_INFLIGHT),
            "rate": rate, "minutes": minutes, "rss_growth": growth, "passed": passed}


def markdown(result: dict[str, Any], cfg: SoakConfig) -> str:
    rows = [{"minute": m["minute"], "req/s": m["rps"], "p50 ms": m["p50_ms"],
             "p99 ms": m["p99_ms"], "errors": m["errors"], "shed": m["shed"],
             "worker RSS MB": " / ".join(f"{v:.0f}" for v in m["rss_mb"].values())}
            for m in result["minutes"]]
    growth = ", ".join(f"{100 * g:+.1f}%" for g in result["rss_growth"].values())
    return "\n".join([
        f"{result['data']} bundle; capacity (closed loop, {cfg.concurrency} clients): "
        f"{result['capacity_rps']:.0f} req/s; soak: {result['rate']:g} req/s "
        f"({cfg.share:g} of it) for {cfg.minutes} minutes, open loop over {cfg.clients} "
        f"connections; `{INFLIGHT_ENV}={result['max_inflight']}`.", "", table(rows), "",
        f"Worker memory from the end of minute 1 to the end: {growth}. Verdict: "
        f"**{'passed' if result['passed'] else 'failed'}** (no errors or shed requests, last "
        f"p99 within {P99_DRIFT:g}x of the first, every worker's memory growth under "
        f"{100 * LEAK:g}%)."])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.soak",
                                     description=__doc__.split("\n\n")[0])
    add_config_args(parser, SoakConfig, title="soak")
    add_traceback_arg(parser)
    cfg = config_from_args(SoakConfig, parser.parse_args(argv))
    result = soak(cfg)
    publish("soak", command=command_line("soak", argv), settings=cfg.__dict__,
            results=result, markdown=markdown(result, cfg),
            metrics={"capacity_rps": result["capacity_rps"],
                     "last_p99_ms": result["minutes"][-1]["p99_ms"],
                     "errors": sum(m["errors"] for m in result["minutes"])})
    return 0 if result["passed"] else 1


if __name__ == "__main__":
    run_cli(main)
