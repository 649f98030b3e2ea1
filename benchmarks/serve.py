"""`make bench-serve`: a real `make serve` process under load from a separate process.

    python -m benchmarks.serve [--model BUNDLE] [--concurrency 1,8,32,64] [--seconds 10] ...

Steps:

1. Requests are built from the bundle, seeded, before anything is timed: ``/recommend`` for a
   mix of returning shoppers (known ids from the bundle's histories), session shoppers (new ids
   with 1-5 view / add-to-cart events on known items) and unknown shoppers (new ids, no
   events); ``/also_bought`` for items with bought-together rows and some without.
2. In-process: the same requests through ``serving.recommend.recommend`` / ``also_bought`` on an
   engine loaded in this process (torch threads as in the service's workers), timed one by one,
   before the server starts.
3. HTTP: exactly what ``make serve`` starts (``bentoml serve serving.service:Tailor`` with
   ``TAILOR_MODEL`` set to the bundle folder) on a loopback port, loaded by ``benchmarks.load``
   (asyncio, one keep-alive connection per client, requests pre-built) in a process of its own:
   per endpoint, closed loop at each concurrency level, then open loop at ``rate`` requests/s
   (the direct check of the target); each run a warm-up, then at most ``seconds`` and at most
   ``max_requests``. Per run, the CPU time the server's processes and the load generator spent
   per request is measured too: on two shared cores that is what bounds requests/s. The server
   and its workers are stopped afterwards, also on errors, Ctrl-C and SIGTERM.
4. Where a target (/recommend 300 req/s, /also_bought 600 req/s, p99 < 25 ms) is missed and
   py-spy is installed, the server's workers are recorded under the load that missed it (the
   open-loop run) and the functions taking most samples are summarized (raw:
   ``benchmarks/results/serve-profile.txt``).

Results go through ``benchmarks.common.publish`` (JSON, the BENCHMARKS.md section, MLflow).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from benchmarks import common
from benchmarks.common import command_line, say
from benchmarks.profile import py_spy, summarize_profile
from benchmarks.serve_plots import plot_path, plot_serving
from benchmarks.serve_report import (
    TARGET_P99_MS,
    TARGET_RPS,
    cpu_budget,
    load_label,
    metrics_of,
    report,
    target_text,
    target_verdict,
)
from benchmarks.serve_requests import Requests, build_requests, in_process
from features.config import add_config_args, config_from_args, fields_help, setting
from features.infra import TailorError, add_traceback_arg, run_cli
from serving.process import Server, free_port, served, sigterm_unwinds, tail


@dataclass(frozen=True)
class ServeBenchConfig:
    concurrency: tuple[int, ...] = setting(
        (1, 8, 32, 64),
        "concurrent clients per level, e.g. 1,8,32,64 (commas or spaces)")
    rate: float = setting(
        TARGET_RPS["recommend"],
        "requests/s of /recommend's open-loop run: requests are due at this rate whatever the "
        "answers, latency counts from when each was due (0: no such run)")
    also_bought_rate: float = setting(
        TARGET_RPS["also_bought"],
        "requests/s of /also_bought's open-loop run (0: no such run)")
    rate_clients: int = setting(
        64,
        "keep-alive connections the open-loop run spreads its requests over")
    seconds: float = setting(10.0, "measured seconds per level, at most")
    max_requests: int = setting(20000, "requests per level, at most")
    warmup_s: float = setting(2.0, "seconds of un-recorded load before each level")
    k: int = setting(10, "items per request")
    mix: tuple[float, ...] = setting(
        (0.6, 0.3, 0.1),
        "shares of returning, session and unknown shoppers in /recommend")
    also_bought_paired: float = setting(
        0.8,
        "share of /also_bought items that have bought-together rows")
    distinct: int = setting(
        2000,
        "distinct request bodies per endpoint, built before timing (the load cycles through them)")
    inprocess_requests: int = setting(2000, "requests per endpoint timed in-process, one by one")
    seed: int = setting(0, "seed of the request mix")
    profile: bool = setting(True, "record the server worker with py-spy when the target is missed")
    profile_s: float = setting(5.0, "seconds of py-spy recording")
    port: int = setting(0, "server port (0: a free port)")

    def rates(self) -> dict[str, float]:
        """The open-loop rate of each endpoint (0: none)."""
        return {"recommend": self.rate, "also_bought": self.also_bought_rate}

    def __post_init__(self) -> None:
        if not self.concurrency or min(self.concurrency) < 1:
            raise ValueError(f"concurrency levels must be >= 1, got {self.concurrency}")
        if self.rate < 0 or self.also_bought_rate < 0 or self.rate_clients < 1:
            raise ValueError("rate and also_bought_rate must be >= 0, rate_clients >= 1")
        if self.seconds <= 0 or self.max_requests < 1 or self.warmup_s < 0:
            raise ValueError("seconds and max_requests must be positive, warmup_s >= 0")
        if len(self.mix) != 3 or min(self.mix) < 0 or sum(self.mix) <= 0:
            raise ValueError(f"mix takes 3 non-negative shares (returning session unknown) "
                             f"with a positive sum, got {self.mix}")
        if not 0 <= self.also_bought_paired <= 1:
            raise ValueError("also_bought_paired must be in [0, 1]")
        if not 1 <= self.k <= 1000 or self.distinct < 1 or self.inprocess_requests < 1:
            raise ValueError("k must be in 1..1000; distinct and inprocess_requests >= 1")
        if self.profile_s <= 0 or not 0 <= self.port < 65536:
            raise ValueError("profile_s must be positive and port in 0..65535")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.serve",
        description="Serving benchmark: `bentoml serve serving.service:Tailor` under load from a "
                    "separate process (asyncio, pre-built requests) at several concurrency levels, "
                    "/recommend (returning, session and unknown shoppers) and /also_bought; the "
                    "same calls in-process for the serving overhead; py-spy where the target "
                    f"({target_text()}) is missed.")
    add_config_args(parser, ServeBenchConfig, title="benchmark",
                    skip=("concurrency",))
    group = parser.add_argument_group("run")
    default = ServeBenchConfig().concurrency
    group.add_argument("--concurrency", nargs="+", default=[",".join(map(str, default))],
                       help=fields_help(ServeBenchConfig)["concurrency"]
                       + f" (default: {','.join(map(str, default))})")
    group.add_argument("--model", metavar="BUNDLE",
                       help="bundle folder to serve (default: the benchmarks' bundle of the "
                            "default data set, Sports when ../shared/data has it, trained "
                            "once and reused)")
    group.add_argument("--mlflow", action=argparse.BooleanOptionalAction, default=True,
                       help="log the run to MLflow (default: %(default)s)")
    add_traceback_arg(parser)
    return parser


def parse_levels(values: list[str]) -> tuple[int, ...]:
    try:
        levels = [int(v) for value in values for v in value.split(",") if v.strip()]
    except ValueError:
        raise ValueError(f"--concurrency takes integers, got {' '.join(values)}") from None
    return tuple(dict.fromkeys(levels))


# --- the load ---------------------------------------------------------------------------------


def run_load(url: str, runs: list[dict[str, Any]], cfg: ServeBenchConfig, work: Path, *,
             seconds: float | None = None, warmup_s: float | None = None,
             max_requests: int | None = None, verbose: bool = True,
             background: bool = False) -> list[dict[str, Any]] | subprocess.Popen:
    """``benchmarks.load`` in its own process over ``runs``; its results (or the process when
    ``background``: read them with ``load_results``)."""
    plan = {"url": url, "seconds": cfg.seconds if seconds is None else seconds,
            "max_requests": cfg.max_requests if max_requests is None else max_requests,
            "warmup_s": cfg.warmup_s if warmup_s is None else warmup_s,
            "runs": runs, "verbose": verbose}
    tag = f"{len(list(work.glob('plan-*.json')))}"
    plan_path, out = work / f"plan-{tag}.json", work / f"load-{tag}.json"
    plan_path.write_text(json.dumps(plan))
    cmd = [sys.executable, "-m", "benchmarks.load", "--plan", str(plan_path), "--out", str(out)]
    proc = subprocess.Popen(cmd, cwd=common.ROOT)
    proc.result_path = out   # type: ignore[attr-defined]
    if background:
        return proc
    return load_results(proc)


def load_level(server: Server, run: dict[str, Any], cfg: ServeBenchConfig,
               work: Path) -> dict[str, Any]:
    """One run in its own load process, with the server's CPU time per request and the cores
    the machine's other processes took meanwhile (the noise of a shared machine)."""
    import resource

    machine, children = machine_cpu_seconds(), resource.getrusage(resource.RUSAGE_CHILDREN)
    mine, before, started = time.process_time(), server.cpu_seconds(), time.perf_counter()
    result = run_load(server.url, [run], cfg, work)[0]
    spent = server.cpu_seconds() - before
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)   # the load process, imports included
    load = after.ru_utime + after.ru_stime - children.ru_utime - children.ru_stime
    ours = spent + load + time.process_time() - mine
    result["server_cpu_ms"] = 1000.0 * spent / max(1, result["warmup_requests"] +
                                                   result["requests"])
    result["other_cores"] = max(0.0, machine_cpu_seconds() - machine - ours) / wall \
        if wall > 0 else math.nan
    return result


def machine_cpu_seconds() -> float:
    """Busy CPU seconds of the whole machine since boot, all cores (/proc/stat; NaN
    elsewhere)."""
    try:
        fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    except (OSError, ValueError):
        return math.nan
    idle = fields[3] + fields[4]   # idle, iowait
    return (sum(fields) - idle) / os.sysconf("SC_CLK_TCK")


def load_results(proc: subprocess.Popen) -> list[dict[str, Any]]:
    try:
        code = proc.wait()
    finally:
        if proc.poll() is None:   # interrupted: the load stops with us
            proc.kill()
            proc.wait()
    if code != 0:
        raise RuntimeError(f"the load generator failed (exit {code})")
    return json.loads(proc.result_path.read_text())["runs"]


def write_requests(requests: dict[str, Requests], work: Path) -> dict[str, dict[str, str]]:
    files = {}
    for name, reqs in requests.items():
        bodies, kinds = work / f"{name}.jsonl", work / f"{name}.kinds.json"
        bodies.write_bytes(b"\n".join(reqs.bodies) + b"\n")
        kinds.write_text(json.dumps(reqs.kinds))
        files[name] = {"name": name, "route": reqs.route, "bodies": str(bodies),
                       "kinds": str(kinds)}
    return files


# --- profiling --------------------------------------------------------------------------------


def profile(server: Server, run: dict[str, Any], cfg: ServeBenchConfig, work: Path,
            out: Path) -> dict[str, Any]:
    """py-spy record of the server's workers while ``run`` loads them; a summary."""
    binary = py_spy()
    if binary is None:
        return {"status": "py-spy not installed, no profile"}
    pids = server.workers()
    warm = 1.0
    load = run_load(server.url, [run], cfg, work, seconds=cfg.profile_s + 2 * warm,
                    warmup_s=warm, max_requests=10 ** 9, verbose=False, background=True)
    raw = work / "profile.txt"
    try:
        time.sleep(warm)
        # One worker: record it; several: the arbiter and its subprocesses.
        target = ["--pid", str(pids[0])] if len(pids) == 1 else \
            ["--pid", str(server.proc.pid), "--subprocesses"]
        cmd = [binary, "record", "--format", "raw", "--function", "--nonblocking", "--rate",
               "200", "--duration", f"{max(1, round(cfg.profile_s))}", "--output", str(raw),
               *target]
        try:
            proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                  text=True, timeout=cfg.profile_s + 60)
            code, said = proc.returncode, proc.stdout.strip().splitlines()
        except subprocess.TimeoutExpired:
            code, said = "timeout", []
    finally:
        results = load_results(load)
    if code != 0 or not raw.is_file():
        return {"status": f"py-spy failed (exit {code}): {said[-1] if said else ''}".strip()}
    out.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(raw, out)
    summary = summarize_profile(raw.read_text())
    return {"status": "ok", "pids": pids, "load": results[0], "raw": str(out), **summary}


def prepare(bundle: Path, data: str, cfg: ServeBenchConfig
            ) -> tuple[dict[str, Any], dict[str, Requests], dict[str, dict[str, Any]]]:
    """Load the bundle here, build the requests and time them in-process: (bundle info,
    requests, in-process figures). Torch runs with the service worker's thread count."""
    import faiss
    import torch

    from serving.engine import load_engine
    from serving.service import THREADS

    threads = torch.get_num_threads()
    torch.set_num_threads(THREADS)
    faiss.omp_set_num_threads(THREADS)
    try:
        engine = load_engine(str(bundle))
        info = {"bundle": str(bundle), "data": data, "items": len(engine.ids),
                "shoppers": engine.shoppers,
                "ranking": f"{type(engine.recommender).__name__} ({engine.method})"}
        say(f"serve: {info['items']:,} items, {info['shoppers']:,} shoppers, {info['ranking']}")
        requests = build_requests(engine, cfg)
        say(f"serve: in-process, {cfg.inprocess_requests} requests per endpoint")
        local = in_process(engine, requests, cfg.inprocess_requests)
    finally:
        torch.set_num_threads(threads)
        faiss.omp_set_num_threads(threads)
    for name, s in local.items():
        say(f"  {name:<12} in-process {s['rps']:8.1f}/s  p50 {s['p50_ms']:7.2f} ms  "
            f"p99 {s['p99_ms']:7.2f} ms")
    return info, requests, local


def measure_http(bundle: Path, requests: dict[str, Requests], cfg: ServeBenchConfig
                 ) -> dict[str, Any]:
    """Serve the bundle, load it level by level, profile it when the target is missed."""
    # SIGTERM unwinds like Ctrl-C, so the server is stopped
    with sigterm_unwinds(), tempfile.TemporaryDirectory(prefix="tailor-bench-serve-") as tmp:
        work = Path(tmp)
        files = write_requests(requests, work)
        port = cfg.port or free_port()
        say(f"serve: bentoml serve serving.service:Tailor on 127.0.0.1:{port}")
        with served(bundle, port, work / "server.log",
                    port_hint="--port (0: a free one)") as server:
            pids = {"server": server.proc.pid, "workers": server.workers()}
            runs = [{**files[name], "concurrency": c} for name in files
                    for c in cfg.concurrency]
            runs += [{**files[name], "rate": rate, "clients": cfg.rate_clients}
                     for name, rate in cfg.rates().items() if rate]
            http = [load_level(server, run, cfg, work) for run in runs]
            met, verdict, best = target_verdict(http)
            prof = None
            if not met and cfg.profile:
                missed = [n for n, b in best.items() if not b["met"]]
                name = "recommend" if "recommend" in missed else missed[0]
                run = {**files[name], **best[name]["load"]}
                if run.get("rate"):
                    run["clients"] = cfg.rate_clients
                say(f"serve: target missed; py-spy on the server under "
                    f"{files[name]['route']} at {load_label(run)}")
                prof = profile(server, run, cfg, work,
                               common.RESULTS_DIR / "serve-profile.txt")
                say(f"  profile: {prof['status']}")
            log = tail(server.log, 5)
    return {"http": http, "target_met": met, "verdict": verdict, "best": best,
            "profile": prof, "server": pids, "server_log_tail": log}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    cfg = config_from_args(ServeBenchConfig, args, concurrency=parse_levels(args.concurrency))
    started = time.perf_counter()
    train_s = 0.0
    if args.model:
        bundle = Path(args.model).expanduser().resolve()
        if not (bundle / "bundle.json").is_file():
            raise TailorError(f"not a Tailor bundle folder: {bundle}")
        data = bundle.name
    else:
        ds = common.default_data_set()
        say(f"serve: the bundle of {ds.name}")
        bundle, train_s = common.trained_bundle(ds)
        data = ds.name
    info, requests, local = prepare(bundle, data, cfg)
    info["train_s"] = train_s
    served_ = measure_http(bundle, requests, cfg)
    info["workers"] = len(served_["server"]["workers"])
    http, met, verdict = served_["http"], served_["target_met"], served_["verdict"]
    say(verdict)
    wall = time.perf_counter() - started
    results = {"bundle": info, "http": http, "in_process": local, "cpu": cpu_budget(http),
               "target_met": met,
               "target": {"rps": TARGET_RPS, "p99_ms": TARGET_P99_MS, "verdict": verdict,
                          "best": served_["best"]},
               "profile": served_["profile"], "wall_s": wall, "server": served_["server"],
               "server_log_tail": served_["server_log_tail"]}
    markdown = report(info, cfg, http, local, verdict, served_["profile"])
    figure = plot_serving(http, local)
    markdown += (f"\n\n![latency against load, and CPU per request by component]"
                 f"({plot_path().relative_to(common.BENCH_MD.parent)})\n")
    out = common.publish("serve", command=command_line("serve", argv),
                         settings={**asdict(cfg), "model": str(bundle)}, results=results,
                         markdown=markdown, metrics=metrics_of(http, local, met),
                         figures={"serve_latency": figure}, mlflow_log=args.mlflow)
    say(f"serve: {wall:.0f} s; results in {out}")
    return 0


if __name__ == "__main__":
    run_cli(main)
