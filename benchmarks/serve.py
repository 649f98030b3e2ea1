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
   (asyncio + httpx, one keep-alive connection per client) in a process of its own: per
   endpoint, closed loop at each concurrency level, then open loop at ``rate`` requests/s (the
   direct check of the target); each run a warm-up, then at most ``seconds`` and at most
   ``max_requests``. Per run, the CPU time the server's processes and the load generator spent
   per request is measured too: on two shared cores that is what bounds requests/s. The server
   and its workers are stopped afterwards, also on errors, Ctrl-C and SIGTERM.
4. Where the target (>= 300 req/s with p99 < 25 ms) is missed and py-spy is installed, the
   server's workers are recorded under the load that missed it (the open-loop run) and the
   functions taking most samples are summarized (raw: ``benchmarks/results/serve-profile.txt``).

Results go through ``benchmarks.common.publish`` (JSON, the BENCHMARKS.md section, MLflow).
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from benchmarks import common
from benchmarks.common import command_line, say, table
from features.cli import run_cli
from features.config import add_config_args, config_from_args
from features.schema import DataError

TARGET_RPS = 300.0
TARGET_P99_MS = 25.0
SPORTS_SIZED = 15_000   # items; the Amazon Sports catalog has ~18k
READY_TIMEOUT_S = 240.0
STOP_TIMEOUT_S = 30.0
KINDS = ("returning", "session", "unknown")
SESSION_EVENTS = ("view", "addtocart")
ENDPOINTS = {"recommend": "/recommend", "also_bought": "/also_bought"}


@dataclass(frozen=True)
class ServeBenchConfig:
    concurrency: tuple[int, ...] = (1, 8, 32, 64)
    rate: float = TARGET_RPS       # open-loop run per endpoint at this rate (0: none)
    rate_clients: int = 64         # connections the open-loop run may use at once
    seconds: float = 10.0          # measured seconds per level (upper bound)
    max_requests: int = 20000      # requests per level (upper bound)
    warmup_s: float = 2.0          # un-recorded load before each level
    k: int = 10
    mix: tuple[float, ...] = (0.6, 0.3, 0.1)   # returning / session / unknown shoppers
    also_bought_paired: float = 0.8            # share of /also_bought items with pairs
    distinct: int = 2000           # distinct request bodies per endpoint (the load cycles)
    inprocess_requests: int = 2000
    seed: int = 0
    profile: bool = True           # py-spy the server when the target is missed
    profile_s: float = 5.0
    port: int = 0                  # 0: a free port

    def __post_init__(self) -> None:
        if not self.concurrency or min(self.concurrency) < 1:
            raise ValueError(f"concurrency levels must be >= 1, got {self.concurrency}")
        if self.rate < 0 or self.rate_clients < 1:
            raise ValueError("rate must be >= 0 and rate_clients >= 1")
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


HELP = {
    "concurrency": "concurrent clients per level, e.g. 1,8,32,64 (commas or spaces)",
    "rate": "requests/s of an open-loop run per endpoint: requests are due at this rate "
            "whatever the answers, latency counts from when each was due (0: no such run)",
    "rate_clients": "keep-alive connections the open-loop run spreads its requests over",
    "seconds": "measured seconds per level, at most",
    "max_requests": "requests per level, at most",
    "warmup_s": "seconds of un-recorded load before each level",
    "k": "items per request",
    "mix": "shares of returning, session and unknown shoppers in /recommend",
    "also_bought_paired": "share of /also_bought items that have bought-together rows",
    "distinct": "distinct request bodies per endpoint, built before timing (the load cycles "
                "through them)",
    "inprocess_requests": "requests per endpoint timed in-process, one by one",
    "seed": "seed of the request mix",
    "profile": "record the server worker with py-spy when the target is missed",
    "profile_s": "seconds of py-spy recording",
    "port": "server port (0: a free port)",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.serve",
        description="Serving benchmark: `bentoml serve serving.service:Tailor` under load from a "
                    "separate process (asyncio + httpx) at several concurrency levels, "
                    "/recommend (returning, session and unknown shoppers) and /also_bought; the "
                    "same calls in-process for the serving overhead; py-spy where the target "
                    f"({TARGET_RPS:.0f} req/s with p99 < {TARGET_P99_MS:.0f} ms) is missed.")
    add_config_args(parser, ServeBenchConfig, title="benchmark", help=HELP,
                    skip=("concurrency",))
    group = parser.add_argument_group("run")
    default = ServeBenchConfig().concurrency
    group.add_argument("--concurrency", nargs="+", default=[",".join(map(str, default))],
                       help=f"{HELP['concurrency']} (default: {','.join(map(str, default))})")
    group.add_argument("--model", metavar="BUNDLE",
                       help="bundle folder to serve (default: the benchmarks' bundle of the "
                            "default data set, Sports when ../shared/data has it, trained "
                            "once and reused)")
    group.add_argument("--mlflow", action=argparse.BooleanOptionalAction, default=True,
                       help="log the run to MLflow (default: %(default)s)")
    return parser


def parse_levels(values: list[str]) -> tuple[int, ...]:
    try:
        levels = [int(v) for value in values for v in value.split(",") if v.strip()]
    except ValueError:
        raise ValueError(f"--concurrency takes integers, got {' '.join(values)}") from None
    return tuple(dict.fromkeys(levels))


# --- requests ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Requests:
    route: str
    bodies: list[bytes]     # JSON documents, one per request
    kinds: list[str]        # returning / session / unknown, or paired / unpaired


def build_requests(engine, cfg: ServeBenchConfig) -> dict[str, Requests]:
    """Seeded request bodies for both endpoints, from what the bundle knows."""
    rng = np.random.default_rng(cfg.seed)
    users = np.array(sorted(engine.known_users), dtype=object)
    if not len(users):
        raise DataError("the bundle knows no shopper with a known item")
    items = engine.ids
    share = np.asarray(cfg.mix, dtype=np.float64) / sum(cfg.mix)
    kinds = [KINDS[i] for i in rng.choice(3, size=cfg.distinct, p=share)]
    bodies = []
    for i, kind in enumerate(kinds):
        body: dict[str, Any] = {"user_id": f"bench-{kind}-{i}", "k": cfg.k}
        if kind == "returning":
            body["user_id"] = str(users[rng.integers(len(users))])
        elif kind == "session":
            n = int(rng.integers(1, 6))
            body["recent_events"] = [
                {"item_id": str(items[rng.integers(len(items))]),
                 "event": SESSION_EVENTS[rng.integers(len(SESSION_EVENTS))]} for _ in range(n)]
        bodies.append(json.dumps(body, separators=(",", ":")).encode())
    recommend = Requests(ENDPOINTS["recommend"], bodies, kinds)

    pairs = np.diff(engine.bt_offsets)
    paired, unpaired = np.flatnonzero(pairs > 0), np.flatnonzero(pairs == 0)
    kinds, bodies = [], []
    for _ in range(cfg.distinct):
        use_paired = len(paired) and (not len(unpaired) or rng.random() < cfg.also_bought_paired)
        pool = paired if use_paired else unpaired
        row = int(pool[rng.integers(len(pool))])
        kinds.append("paired" if use_paired else "unpaired")
        bodies.append(json.dumps({"item_id": str(items[row]), "k": cfg.k},
                                 separators=(",", ":")).encode())
    return {"recommend": recommend,
            "also_bought": Requests(ENDPOINTS["also_bought"], bodies, kinds)}


# --- in-process -------------------------------------------------------------------------------


def in_process(engine, requests: dict[str, Requests], n: int) -> dict[str, dict[str, Any]]:
    """The same calls without HTTP: parsed before timing, then timed one by one."""
    from serving.recommend import ItemRequest, RecommendRequest, also_bought, recommend

    handlers = {"recommend": (recommend, RecommendRequest),
                "also_bought": (also_bought, ItemRequest)}
    out = {}
    for name, reqs in requests.items():
        handler, model = handlers[name]
        parsed = [model.model_validate_json(b) for b in reqs.bodies]
        order = [i % len(parsed) for i in range(n)]
        for i in order[:min(50, n)]:   # warm-up: first-call costs (allocations, caches)
            handler(engine, parsed[i])
        times, kinds = [], []
        cpu = time.process_time()
        for i in order:
            started = time.perf_counter()
            handler(engine, parsed[i])
            times.append(time.perf_counter() - started)
            kinds.append(reqs.kinds[i])
        cpu = time.process_time() - cpu
        out[name] = _stats(times, kinds)
        out[name]["rps"] = len(times) / sum(times) if sum(times) > 0 else math.nan
        # CPU rather than wall time per call: what the HTTP rows' server CPU compares with
        # (wall time on shared cores also counts the time other processes had the core).
        out[name]["cpu_ms"] = 1000.0 * cpu / len(times)
    return out


def _stats(seconds: list[float], kinds: list[str]) -> dict[str, Any]:
    from benchmarks.load import summary

    by_kind = {}
    for kind in dict.fromkeys(sorted(kinds)):
        mine = [t for t, k in zip(seconds, kinds, strict=True) if k == kind]
        by_kind[kind] = {"requests": len(mine), **summary(mine)}
    return {"requests": len(seconds), **summary(seconds), "by_kind": by_kind}


# --- the server -------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def port_is_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


@dataclass
class Server:
    proc: subprocess.Popen
    url: str
    log: Path

    def processes(self) -> list[int]:
        """Pids of every process the server started (circus puts each worker in a session of
        its own, so the server's process group does not hold them)."""
        import psutil

        with contextlib.suppress(psutil.Error):
            return [c.pid for c in psutil.Process(self.proc.pid).children(recursive=True)]
        return []

    def workers(self) -> list[int]:
        """Pids of BentoML's API workers (``_bentoml_impl.worker``); the server itself when it
        runs the API in-process."""
        import psutil

        found = []
        for pid in self.processes():
            with contextlib.suppress(psutil.Error):
                if "_bentoml_impl.worker" in " ".join(psutil.Process(pid).cmdline()):
                    found.append(pid)
        return found or [self.proc.pid]

    def cpu_seconds(self) -> float:
        """User + system CPU seconds of the server and every process it started, so far."""
        import psutil

        total = 0.0
        for pid in [self.proc.pid, *self.processes()]:
            with contextlib.suppress(psutil.Error):
                times = psutil.Process(pid).cpu_times()
                total += times.user + times.system
        return total


@contextlib.contextmanager
def served(bundle: Path, port: int, log: Path, service: str = "serving.service:Tailor"
           ) -> Iterator[Server]:
    """``make serve``'s command on ``port``, ready; stopped afterwards with all its workers."""
    if not port_is_free(port):
        raise DataError(f"port {port} is in use; choose another with --port (0: a free one)")
    bentoml = Path(sys.executable).parent / "bentoml"
    env = {**os.environ, "TAILOR_MODEL": str(bundle)}
    cmd = [str(bentoml), "serve", service, "--host", "127.0.0.1", "--port", str(port)]
    with log.open("w") as out:
        proc = subprocess.Popen(cmd, cwd=common.ROOT, env=env, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
    server = Server(proc, f"http://127.0.0.1:{port}", log)
    try:
        deadline = time.monotonic() + READY_TIMEOUT_S
        with httpx.Client(base_url=server.url, timeout=10, trust_env=False) as client:
            while True:
                if proc.poll() is not None:
                    raise DataError(f"the server exited while starting (exit {proc.returncode})"
                                    f":\n{_tail(log)}")
                with contextlib.suppress(httpx.TransportError):
                    if client.get("/readyz").status_code == 200:
                        break
                if time.monotonic() > deadline:
                    raise DataError(f"the server was not ready after {READY_TIMEOUT_S:.0f} s:"
                                    f"\n{_tail(log)}")
                time.sleep(0.5)
        yield server
    finally:
        stop(server)


def stop(server: Server) -> None:
    """SIGTERM the server (BentoML's arbiter stops its workers and exits); whatever is still
    running after that (the arbiter, a worker, their process groups) is SIGKILLed."""
    import psutil

    proc = server.proc
    started = []   # taken before the arbiter goes: afterwards its workers are orphans
    for pid in server.processes():
        with contextlib.suppress(psutil.Error):
            started.append(psutil.Process(pid))
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)   # start_new_session: the server leads its group
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=STOP_TIMEOUT_S)
    _, alive = psutil.wait_procs(started, timeout=5)
    for p in alive:
        with contextlib.suppress(psutil.Error):
            p.kill()
    psutil.wait_procs(alive, timeout=5)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    if proc.poll() is None:
        proc.kill()
        proc.wait()


def _tail(log: Path, lines: int = 15) -> str:
    with contextlib.suppress(OSError):
        return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])
    return ""


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


def py_spy() -> str | None:
    found = Path(sys.executable).parent / "py-spy"
    return str(found) if found.is_file() else shutil.which("py-spy")


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


IDLE = ("select", "poll", "wait", "sleep", "acquire", "_wait_for_tstate_lock", "accept")
PROJECT = ("serving/", "models/", "features/", "training/")


def summarize_profile(text: str, top: int = 12) -> dict[str, Any]:
    """Where the worker's busy samples go.

    ``text``: py-spy's raw (collapsed) format, ``frame;frame;...;leaf count`` per line, frames
    as ``function (file:line)``. Samples whose leaf is a wait (select, Condition.wait, ...) are
    idle threads and left out of the shares. ``self``: the function running; ``project``:
    Tailor's own functions (serving/, models/, features/) anywhere on the stack."""
    self_counts: Counter[str] = Counter()
    project_counts: Counter[str] = Counter()
    samples = idle = in_project = 0
    for line in text.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        frames = [f for f in (_frame(f) for f in stack.split(";")) if f]
        if not frames:
            continue
        samples += n
        if frames[-1].split(" (")[0].rsplit(".", 1)[-1] in IDLE:
            idle += n
            continue
        self_counts[frames[-1]] += n
        mine = {f for f in frames if f.partition(" (")[2].startswith(PROJECT)}
        in_project += n if mine else 0
        for frame in mine:
            project_counts[frame] += n
    busy = samples - idle

    def rows(counts: Counter[str]) -> list[dict[str, Any]]:
        return [{"function": name, "share": n / busy, "samples": n}
                for name, n in counts.most_common(top)] if busy else []

    return {"samples": samples, "busy": busy,
            "project_share": in_project / busy if busy else math.nan,
            "self": rows(self_counts), "project": rows(project_counts)}


def _frame(frame: str) -> str:
    """``fn (path/to/module.py:12)`` -> ``fn (path/to/module.py)``; process / thread frames
    dropped."""
    frame = frame.strip()
    if not frame or frame.startswith(("process ", "thread ")):
        return ""
    name, _, where = frame.partition(" (")
    if not where:
        return name
    path = where.rstrip(")").rsplit(":", 1)[0]
    if "site-packages/" in path:
        path = path.split("site-packages/", 1)[1]
    return f"{name} ({path})"


# --- report -----------------------------------------------------------------------------------


def load_label(r: dict[str, Any]) -> str:
    if r.get("rate"):
        return f"{r['rate']:g}/s open loop"
    return f"{r['concurrency']} client" + ("s" if r["concurrency"] != 1 else "")


def load_key(r: dict[str, Any]) -> str:
    """``c8`` or ``rate300``: the metric-name part of a run."""
    return f"rate{r['rate']:g}".replace(".", "_") if r.get("rate") else f"c{r['concurrency']}"


def meets_target(r: dict[str, Any]) -> bool:
    """No errors, nothing dropped, p99 under the bound, at the target rate: offered (open
    loop; its answered rate trails the offered one by the last requests' latency) or
    sustained (closed loop)."""
    rate = r["rate"] if r.get("rate") else r["rps"]
    return (r["errors"] == 0 and not r.get("dropped") and r["p99_ms"] < TARGET_P99_MS
            and rate >= TARGET_RPS)


def target_verdict(http: list[dict[str, Any]]) -> tuple[bool, str, dict[str, Any]]:
    """Met when every endpoint has a run that ``meets_target``. Also returns, per endpoint, the
    load to profile where it is missed (the open-loop run, else the peak level)."""
    parts, met_all, best = [], True, {}
    bound = f"p99 < {TARGET_P99_MS:g} ms"
    for name in dict.fromkeys(r["name"] for r in http):
        rows = [r for r in http if r["name"] == name]
        route = rows[0]["route"]
        good = [r for r in rows if meets_target(r)]
        if good:
            r = max(good, key=lambda r: (bool(r.get("rate")), r["rps"]))
            parts.append(f"{route} met at {load_label(r)} ({r['rps']:.0f} req/s answered, "
                         f"p99 {r['p99_ms']:.1f} ms)")
            best[name] = {"met": True, "load": {k: r.get(k) for k in ("concurrency", "rate")}}
            continue
        met_all = False
        text = [f"{route} missed"]
        rated = [r for r in rows if r.get("rate")]
        for r in rated:
            text.append(f"at {load_label(r)}: {r['rps']:.0f} req/s answered, p99 "
                        f"{r['p99_ms']:.1f} ms" + (f", {r['dropped']:,} dropped"
                                                   if r.get("dropped") else "")
                        + (f", {r['errors']:,} errors" if r["errors"] else ""))
        closed = [r for r in rows if not r.get("rate")]
        if closed:
            peak = max(closed, key=lambda r: r["rps"])
            text.append(f"closed-loop peak {peak['rps']:.0f} req/s ({load_label(peak)}, p99 "
                        f"{peak['p99_ms']:.1f} ms)")
            under = [r for r in closed if r["errors"] == 0 and r["p99_ms"] < TARGET_P99_MS]
            if under:
                r = max(under, key=lambda r: r["rps"])
                text.append(f"at most {r['rps']:.0f} req/s with {bound} ({load_label(r)})")
        parts.append(": ".join([text[0], "; ".join(text[1:])]) if len(text) > 1 else text[0])
        pick = rated[0] if rated else max(closed, key=lambda r: r["rps"])
        best[name] = {"met": False, "load": {k: pick.get(k) for k in ("concurrency", "rate")}}
    word = "met" if met_all else "missed"
    line = (f"Target (>= {TARGET_RPS:.0f} req/s with {bound} on a Sports-sized catalog): "
            f"**{word}** — " + "; ".join(parts) + ".")
    return met_all, line, best


def report(info: dict[str, Any], cfg: ServeBenchConfig, http: list[dict[str, Any]],
           local: dict[str, dict[str, Any]], verdict: str, prof: dict[str, Any] | None
           ) -> str:
    rows = []
    for r in http:
        rows.append({"endpoint": r["route"], "load": load_label(r), "requests": r["requests"],
                     "rps": r["rps"], "p50": r["p50_ms"], "p95": r["p95_ms"],
                     "p99": r["p99_ms"], "errors": r["errors"],
                     "server_cpu": r.get("server_cpu_ms"), "client_cpu": r.get("client_cpu_ms"),
                     "other": r.get("other_cores")})
    for name, s in local.items():
        rows.append({"endpoint": f"{ENDPOINTS[name]} in-process", "load": "1 caller",
                     "requests": s["requests"], "rps": s["rps"], "p50": s["p50_ms"],
                     "p95": s["p95_ms"], "p99": s["p99_ms"], "errors": None,
                     "server_cpu": s["cpu_ms"]})
    headers = {"rps": "req/s", "p50": "p50 ms", "p95": "p95 ms", "p99": "p99 ms",
               "server_cpu": "server CPU ms/req", "client_cpu": "client CPU ms/req",
               "other": "others' cores"}
    cols = ["endpoint", "load", "requests", "rps", "p50", "p95", "p99", "errors", "server_cpu",
            "client_cpu", "other"]
    rate = (f" Open loop: requests due at {cfg.rate:g}/s whatever the answers, over "
            f"{cfg.rate_clients} connections; latency counts from when each was due."
            if cfg.rate else "")
    lines = [
        f"Bundle `{info['bundle']}` ({info['data']}): {info['items']:,} items, "
        f"{info['shoppers']:,} known shoppers, ranking {info['ranking']}. Server: "
        f"`bentoml serve serving.service:Tailor` (`make serve`: {info['workers']} worker "
        f"process(es)) on 127.0.0.1; load: `benchmarks.load` (asyncio + httpx, one keep-alive "
        f"connection per client) in a separate process on the same cores. Per run: "
        f"{cfg.warmup_s:g} s warm-up, then at most {cfg.seconds:g} s or {cfg.max_requests:,} "
        f"requests.{rate} /recommend mixes returning / session / unknown shoppers "
        f"{'/'.join(f'{s:g}' for s in cfg.mix)}; /also_bought items with / without "
        f"bought-together rows {cfg.also_bought_paired:g}/{1 - cfg.also_bought_paired:g}; "
        f"k={cfg.k}. In-process: the same requests through `serving.recommend`, one by one "
        f"(its CPU column: this process's CPU time per call). CPU ms/req: the server's "
        f"processes and the load generator, per request (warm-up included): what one request "
        f"costs the shared cores. Others' cores: CPU the machine's other processes used "
        f"meanwhile, on average (the noise: the cores are shared).",
        "", table(rows, cols, headers, digits=2)]
    overhead = []
    for name, s in local.items():
        closed = [r for r in http if r["name"] == name and not r.get("rate")]
        if not closed:
            continue
        one = min(closed, key=lambda r: r["concurrency"])
        kinds = ", ".join(
            f"{kind} {one['by_kind'][kind]['p50_ms']:.2f}/{v['p50_ms']:.2f} ms"
            for kind, v in s["by_kind"].items() if kind in one["by_kind"])
        cpu = one.get("server_cpu_ms", math.nan)
        overhead.append(f"- {ENDPOINTS[name]}: {one['p50_ms'] / s['p50_ms']:.1f}x "
                        f"(HTTP {one['p50_ms']:.2f} ms with {load_label(one)} vs in-process "
                        f"{s['p50_ms']:.2f} ms; per kind, HTTP/in-process p50: {kinds}). Server "
                        f"CPU {cpu:.2f} ms/request against {s['cpu_ms']:.2f} ms in-process: "
                        f"{max(cpu - s['cpu_ms'], 0):.2f} ms/request of HTTP stack.")
    if overhead:
        lines += ["Serving overhead (HTTP p50 with the fewest clients / in-process p50):", "",
                  *overhead, ""]
    budget = cpu_budget(http)
    if budget:
        cores = os.cpu_count() or 1
        lines += [f"CPU per request, server + load generator, which bounds requests/s on these "
                  f"{cores} shared cores (from the open-loop run, else the busiest level):", ""]
        for name, b in budget.items():
            lines.append(f"- {ENDPOINTS[name]}: {b['server_ms']:.2f} + {b['client_ms']:.2f} = "
                         f"{b['ms']:.2f} ms ({b['load']}): at most {b['ceiling_rps']:.0f} req/s "
                         f"with the cores to ourselves; {TARGET_RPS:.0f} req/s keeps them "
                         f"{b['busy_at_target']:.0%} busy.")
        lines.append("")
    note = "" if info["items"] >= SPORTS_SIZED else (
        f" This run's catalog holds {info['items']:,} items, not Sports' ~18k: the line above is "
        f"about this run only.")
    lines += [verdict + note, ""]
    if prof is not None:
        if prof.get("status") != "ok":
            lines += [f"Profile: {prof.get('status')}.", ""]
        else:
            load = prof["load"]
            lines += [f"Profile (py-spy, {prof['samples']:,} samples of the server workers' "
                      f"threads while {load['route']} ran at {load_label(load)}, "
                      f"{load['rps']:.0f} req/s; raw: `benchmarks/results/serve-profile.txt`): "
                      f"{prof['busy'] / max(prof['samples'], 1):.0%} of the samples busy; "
                      f"Tailor's own code (serving/, models/, features/) is on the stack in "
                      f"{prof['project_share']:.0%} of the busy ones, the rest is the HTTP stack "
                      f"(BentoML, uvicorn, starlette, asyncio, pydantic, OpenTelemetry, "
                      f"Prometheus, access log). Shares of busy samples: the function running "
                      f"(self), and Tailor's functions anywhere on the stack.", "",
                      "| running | self | Tailor function on the stack | share |",
                      "|---|---:|---|---:|"]
            for a, b in itertools.zip_longest(prof["self"], prof["project"]):
                lines.append(f"| {_cell(a)} | {_share(a)} | {_cell(b)} | {_share(b)} |")
            lines.append("")
    return "\n".join(lines)


def cpu_budget(http: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per endpoint: server + client CPU ms per request, the requests/s the machine's cores
    could carry at that cost, and how busy the target rate keeps them."""
    cores = os.cpu_count() or 1
    out = {}
    for name in dict.fromkeys(r["name"] for r in http):
        rows = [r for r in http if r["name"] == name and r.get("server_cpu_ms") is not None]
        if not rows:
            continue
        r = next((r for r in rows if r.get("rate")), None) or max(rows, key=lambda r: r["rps"])
        ms = r["server_cpu_ms"] + r["client_cpu_ms"]
        out[name] = {"server_ms": r["server_cpu_ms"], "client_ms": r["client_cpu_ms"], "ms": ms,
                     "load": load_label(r), "ceiling_rps": 1000.0 * cores / ms,
                     "busy_at_target": TARGET_RPS * ms / (1000.0 * cores)}
    return out


def _cell(row: dict[str, Any] | None) -> str:
    return f"`{row['function']}`" if row else ""


def _share(row: dict[str, Any] | None) -> str:
    return f"{row['share']:.0%}" if row else ""


def metrics_of(http: list[dict[str, Any]], local: dict[str, dict[str, Any]],
               met: bool) -> dict[str, float]:
    out: dict[str, float] = {"serve.target_met": float(met)}
    for r in http:
        key = f"serve.{r['name']}.{load_key(r)}"
        for field in ("rps", "p50_ms", "p95_ms", "p99_ms", "errors", "requests", "dropped",
                      "server_cpu_ms", "client_cpu_ms", "other_cores"):
            if r.get(field) is not None:
                out[f"{key}.{field}"] = float(r[field])
    for name, b in cpu_budget(http).items():
        out[f"serve.{name}.cpu_ms_per_request"] = b["ms"]
        out[f"serve.{name}.cpu_ceiling_rps"] = b["ceiling_rps"]
    for name, s in local.items():
        for field in ("rps", "p50_ms", "p95_ms", "p99_ms"):
            out[f"serve.inprocess.{name}.{field}"] = float(s[field])
        closed = [r for r in http if r["name"] == name and not r.get("rate")]
        if closed:
            one = min(closed, key=lambda r: r["concurrency"])
            out[f"serve.{name}.overhead_p50"] = one["p50_ms"] / s["p50_ms"]
    return out


# --- main -------------------------------------------------------------------------------------


def _terminate(signum, frame):
    raise KeyboardInterrupt


def prepare(bundle: Path, data: str, cfg: ServeBenchConfig
            ) -> tuple[dict[str, Any], dict[str, Requests], dict[str, dict[str, Any]]]:
    """Load the bundle here, build the requests and time them in-process: (bundle info,
    requests, in-process figures). Torch runs with the service worker's thread count."""
    import faiss
    import torch

    from serving.recommend import load_engine
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
    try:   # SIGTERM unwinds like Ctrl-C, so the server is stopped (main thread only)
        previous = signal.signal(signal.SIGTERM, _terminate)
    except ValueError:
        previous = None
    try:
        with tempfile.TemporaryDirectory(prefix="tailor-bench-serve-") as tmp:
            work = Path(tmp)
            files = write_requests(requests, work)
            port = cfg.port or free_port()
            say(f"serve: bentoml serve serving.service:Tailor on 127.0.0.1:{port}")
            with served(bundle, port, work / "server.log") as server:
                pids = {"server": server.proc.pid, "workers": server.workers()}
                runs = [{**files[name], "concurrency": c} for name in files
                        for c in cfg.concurrency]
                if cfg.rate:
                    runs += [{**files[name], "rate": cfg.rate, "clients": cfg.rate_clients}
                             for name in files]
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
                log = _tail(server.log, 5)
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
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
            raise DataError(f"not a Tailor bundle folder: {bundle}")
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
    out = common.publish("serve", command=command_line("serve", argv),
                         settings={**asdict(cfg), "model": str(bundle)}, results=results,
                         markdown=markdown, metrics=metrics_of(http, local, met),
                         mlflow_log=args.mlflow)
    say(f"serve: {wall:.0f} s; results in {out}")
    return 0


if __name__ == "__main__":
    run_cli(main)
