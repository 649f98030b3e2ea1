"""The serving benchmark's load generator: a bounded asyncio client, run as its own process.

    python -m benchmarks.load --plan plan.json --out result.json

The plan (written by ``benchmarks.serve``) holds the server URL and the runs: each an endpoint
(a route, a file of pre-built request bodies, one JSON document a line, and their ``kind``
tags in a file beside it) and either

* a ``concurrency`` (closed loop): that many workers, each with its own keep-alive connection
  (``benchmarks.http_client``: requests built once, answers read with little more than the
  framing, so the client takes as little of the shared cores as it can), each sending the
  next body as soon as its previous answer is in. Latency is send to answer; throughput is
  what the server sustains.
* a ``rate`` (open loop): requests are due at a fixed rate, whatever the answers, and go out on
  a pool of ``clients`` keep-alive connections. Latency counts from when a request was due, so
  time spent waiting for a free connection (the server falling behind) is latency too; requests
  still waiting for a connection at the deadline are counted as ``dropped``. This is the direct
  check of "N requests/s with p99 under X ms".

Bodies cycle through a shared cursor. A run first warms up for ``warmup_s`` (not recorded), then
is bounded both in time (``seconds``) and in requests (``max_requests``); requests in flight at
the deadline finish and count. A 503 with Retry-After is load shed by the server (counted as
``shed``, with ``ok_rps`` and ``ok`` percentiles over the answered requests only). Errors are the
other non-2xx answers and transport errors (time-outs
included).

The result is JSON: per run, the requests, the wall seconds, requests/s, p50/p95/p99 latency in
ms (overall and per kind), the errors (with a few examples) and this process's CPU time per
request (what the client costs the shared cores). Loopback only: the URL must point at
127.0.0.1 or localhost.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import time
from collections import Counter
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import numpy as np

from benchmarks.common import percentiles
from benchmarks.http_client import Connection, HTTPError
from features.infra import add_traceback_arg, run_cli

REQUEST_TIMEOUT_S = 30.0
LOOPBACK = ("127.0.0.1", "localhost", "::1")

Record = tuple[float, int, str, str | None]   # latency s, HTTP status (0: none), kind, error


def summary(latencies: list[float]) -> dict[str, float]:
    """p50/p95/p99 and mean in ms of latencies in seconds (NaN when empty)."""
    ms = [1000.0 * t for t in latencies]
    return {f"{name}_ms": value for name, value in percentiles(ms).items()} | \
        {"mean_ms": float(np.mean(ms)) if ms else math.nan}


class Endpoint:
    """One route's bodies, a shared cursor over them, and the POST that records an answer."""

    def __init__(self, route: str, requests: list[bytes], kinds: list[str], offset: int = 0):
        """``requests``: whole HTTP requests (``Connection.message``), one per body."""
        self.route, self.requests, self.kinds, self.cursor = route, requests, kinds, offset

    async def call(self, client: Connection, since: float | None = None) -> Record:
        """POST the next body; latency from ``since`` (default: now)."""
        i = self.cursor % len(self.requests)
        self.cursor += 1
        started = time.perf_counter() if since is None else since
        try:
            response = await client.request(self.requests[i])
            status, error = response.status, None
            # A 503 with Retry-After is the server shedding load as designed (serving/guard.py):
            # counted as shed, not as an error.
            if not 200 <= status < 300 and not (status == 503 and "retry-after" in
                                                 response.headers):
                error = f"HTTP {status}: {response.text[:200]}"
        except HTTPError as exc:
            status, error = 0, str(exc)[:200]
        return time.perf_counter() - started, status, self.kinds[i], error


async def closed_loop(endpoint: Endpoint, clients: list[Connection], duration: float,
                      budget: int | None, record: list[Record] | None) -> None:
    """Each client sends its next request as soon as its previous answer is in."""
    deadline = time.perf_counter() + duration
    issued = [0]

    async def worker(client: Connection) -> None:
        while time.perf_counter() < deadline and (budget is None or issued[0] < budget):
            issued[0] += 1
            result = await endpoint.call(client)
            if record is not None:
                record.append(result)

    await asyncio.gather(*(worker(c) for c in clients))


async def open_loop(endpoint: Endpoint, clients: list[Connection], rate: float,
                    duration: float, budget: int | None, record: list[Record] | None) -> int:
    """Requests due every 1/rate s on a pool of ``clients``; returns how many were dropped
    (still waiting for a connection at the deadline)."""
    idle: asyncio.Queue[Connection] = asyncio.Queue()
    for client in clients:
        idle.put_nowait(client)
    waiting: set[asyncio.Task] = set()
    sent: set[asyncio.Task] = set()

    async def one(due: float) -> None:
        client = await idle.get()
        me = asyncio.current_task()
        waiting.discard(me)
        sent.add(me)
        try:
            result = await endpoint.call(client, since=due)
        finally:
            idle.put_nowait(client)
        if record is not None:
            record.append(result)

    start = time.perf_counter()
    total = int(duration * rate)
    if budget is not None:
        total = min(total, budget)
    for n in range(total):
        due = start + n / rate
        await asyncio.sleep(max(0.0, due - time.perf_counter()))   # behind: still yield
        waiting.add(asyncio.create_task(one(due)))
    await asyncio.sleep(max(0.0, start + duration - time.perf_counter()))
    await asyncio.sleep(0)   # the last requests take a connection if one is free
    dropped = len(waiting)
    for task in list(waiting):
        task.cancel()
    await asyncio.gather(*waiting, *sent, return_exceptions=True)
    return dropped


async def run_one(endpoint: Endpoint, clients: list[Connection], run: dict[str, Any],
                  seconds: float, max_requests: int, warmup_s: float) -> dict[str, Any]:
    """Warm-up, then the bounded measured phase; the figures."""
    rate = run.get("rate")

    async def phase(duration: float, budget: int | None, record: list[Record] | None) -> int:
        if rate:
            return await open_loop(endpoint, clients, float(rate), duration, budget, record)
        await closed_loop(endpoint, clients, duration, budget, record)
        return 0

    cpu = time.process_time()
    warm: list[Record] = []
    if warmup_s > 0:
        await phase(warmup_s, None, warm)
    record: list[Record] = []
    started = time.perf_counter()
    dropped = await phase(seconds, max_requests, record)
    wall = time.perf_counter() - started
    cpu = time.process_time() - cpu
    errors = [r for r in record if r[3] is not None]
    by_kind: dict[str, Any] = {}
    for kind in sorted({r[2] for r in record}):
        mine = [r[0] for r in record if r[2] == kind]
        by_kind[kind] = {"requests": len(mine), **summary(mine)}
    return {"route": endpoint.route, "concurrency": run.get("concurrency"), "rate": rate,
            "clients": len(clients), "requests": len(record), "dropped": dropped,
            "wall_s": wall, "rps": len(record) / wall if wall > 0 else math.nan,
            **summary([r[0] for r in record]), "errors": len(errors),
            "shed": sum(1 for r in record if r[1] == 503 and r[3] is None),
            "ok_rps": sum(1 for r in record if 200 <= r[1] < 300) / wall if wall > 0 else
            math.nan,
            "ok": summary([r[0] for r in record if 200 <= r[1] < 300]),
            "error_statuses": dict(Counter(str(r[1]) for r in errors)),
            "error_examples": sorted({r[3] for r in errors})[:3], "by_kind": by_kind,
            # This process's CPU over warm-up and measured requests: the client's cost.
            "warmup_requests": len(warm),
            "client_cpu_ms": 1000.0 * cpu / max(1, len(warm) + len(record))}


async def run_plan(plan: dict[str, Any]) -> list[dict[str, Any]]:
    url = urlsplit(plan["url"].rstrip("/"))
    host, port = url.hostname, url.port or 80
    if host not in LOOPBACK:
        raise ValueError(f"the load generator only calls loopback addresses, not {host!r}")
    results = []
    for run in plan["runs"]:
        bodies = Path(run["bodies"]).read_bytes().splitlines()
        kinds = json.loads(Path(run["kinds"]).read_text())
        if len(bodies) != len(kinds) or not bodies:
            raise ValueError(f"{run['bodies']}: {len(bodies)} bodies, {len(kinds)} kinds")
        n = int(run.get("clients") or run["concurrency"])
        clients = [Connection(host, port, REQUEST_TIMEOUT_S) for _ in range(n)]
        route = url.path + run["route"]
        endpoint = Endpoint(route, [clients[0].message("POST", route, b) for b in bodies],
                            kinds, int(run.get("offset", 0)))
        try:
            result = await run_one(endpoint, clients, run, float(plan["seconds"]),
                                   int(plan["max_requests"]), float(plan["warmup_s"]))
        finally:
            await asyncio.gather(*(c.close() for c in clients))
        result["name"] = run["name"]
        results.append(result)
        if plan.get("verbose"):
            load = f"{run['rate']:g}/s" if run.get("rate") else f"c={n}"
            print(f"  {run['name']:<12} {load:<7} {result['requests']:>6} requests "
                  f"{result['rps']:8.1f}/s  p50 {result['p50_ms']:7.2f} ms  p99 "
                  f"{result['p99_ms']:7.2f} ms  errors {result['errors']}"
                  + (f"  dropped {result['dropped']}" if result["dropped"] else ""), flush=True)
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.load",
        description="Bounded asyncio load against a loopback HTTP server: runs the plan "
                    "written by benchmarks.serve (closed loop at a concurrency, or open loop at "
                    "a rate) and writes per-run requests/s, latency percentiles and errors as "
                    "JSON.")
    parser.add_argument("--plan", required=True, help="plan JSON (url, seconds, max_requests, "
                                                      "warmup_s, runs)")
    parser.add_argument("--out", required=True, help="result JSON to write")
    add_traceback_arg(parser)
    args = parser.parse_args(argv)
    plan = json.loads(Path(args.plan).read_text())
    results = asyncio.run(run_plan(plan))
    Path(args.out).write_text(json.dumps({"runs": results}, indent=1))
    return 0


if __name__ == "__main__":
    run_cli(main)
