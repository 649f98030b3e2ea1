"""`make bench-events`: live events, measured on a real server (what `make serve` starts).

    python -m benchmarks.ingest [--batches 1,10,100] [--concurrency 8] [--seconds 8]

For each back-end of the event store, SQLite (a file) and PostgreSQL (a server started from the
system's binaries, as the tests do):

1. **In-process**, ``EventStore.add`` of batches of 1, 10 and 100 events, one after another:
   events/s of the store alone (each batch one durable commit).
2. **Over HTTP**, ``POST /events`` with batches of 1, 10 and 100 events from ``concurrency``
   keep-alive clients (``benchmarks.load``, closed loop, its own process): posts/s, events/s and
   p50/p99 per post. Each answer comes after its batch is committed.
3. ``/recommend`` (the serving benchmark's request mix) with the store on the request path
   (every request reads the shopper's privacy row and stored events), against the same server
   with the store off (``TAILOR_EVENTS_URL=none``): what the store costs a request.

The model is the serving benchmark's bundle (Sports when present). Results go through
``benchmarks.common.publish`` (JSON, the BENCHMARKS.md section, MLflow).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import (
    command_line,
    default_data_set,
    publish,
    say,
    table,
    trained_bundle,
)
from benchmarks.postgres import binaries, postgres_server
from benchmarks.serve import ServeBenchConfig, run_load, write_requests
from benchmarks.serve_requests import build_requests
from features.config import add_config_args, config_from_args, setting
from features.event_store import URL_ENV, EventStore
from features.infra import add_traceback_arg, run_cli
from serving.engine import load_engine
from serving.process import free_port, served


@dataclass(frozen=True)
class IngestBenchConfig:
    batches: tuple[int, ...] = setting((1, 10, 100), "events per POST /events")
    concurrency: int = setting(8, "keep-alive clients posting at once")
    seconds: float = setting(8.0, "timed seconds per run (after a 1 s warm-up)")
    backends: str = setting("sqlite,postgresql", "event store back-ends (comma-separated)")
    in_process_batches: int = setting(300, "batches added in-process per batch size")
    seed: int = setting(0, "seed of the posted events")


def event_bodies(item_ids: np.ndarray, batch: int, count: int, seed: int) -> list[bytes]:
    """``count`` POST /events bodies of ``batch`` view/cart events on known items (no event_id:
    the server gives each a new one, so nothing is a duplicate)."""
    rng = np.random.default_rng(seed)
    kinds = np.array(["view", "view", "view", "addtocart"])
    bodies = []
    for n in range(count):
        items = rng.choice(item_ids, size=batch)
        users = rng.integers(0, 5000, size=batch)
        bodies.append(json.dumps({"events": [
            {"user_id": f"ingest-{u}", "item_id": str(i), "event": str(kinds[(n + j) % 4])}
            for j, (u, i) in enumerate(zip(users, items, strict=True))]}).encode())
    return bodies


def in_process(url: str, item_ids: np.ndarray, cfg: IngestBenchConfig) -> list[dict]:
    store = EventStore(url)
    rows = []
    try:
        for batch in cfg.batches:
            bodies = [json.loads(b)["events"] for b in
                      event_bodies(item_ids, batch, cfg.in_process_batches, cfg.seed + batch)]
            started = time.perf_counter()
            for events in bodies:
                store.add(events)
            seconds = time.perf_counter() - started
            rows.append({"batch": batch, "commits/s": len(bodies) / seconds,
                         "events/s": len(bodies) * batch / seconds})
    finally:
        store.close()
    return rows


def over_http(url: str, bundle: Path, item_ids: np.ndarray, cfg: IngestBenchConfig,
              work: Path, recommend_file: dict) -> tuple[list[dict], dict]:
    os.environ[URL_ENV] = url
    serve_cfg = ServeBenchConfig()
    rows = []
    with served(bundle, free_port(), work / f"serve-{len(list(work.glob('serve-*')))}.log") \
            as server:
        for batch in cfg.batches:
            bodies = work / f"events-{batch}.jsonl"
            bodies.write_bytes(b"\n".join(event_bodies(item_ids, batch, 4000, cfg.seed)) + b"\n")
            kinds = work / f"events-{batch}.kinds.json"
            kinds.write_text(json.dumps(["events"] * 4000))
            (result,) = run_load(server.url, [{
                "name": f"events x{batch}", "route": "/events", "bodies": str(bodies),
                "kinds": str(kinds), "concurrency": cfg.concurrency}], serve_cfg, work,
                seconds=cfg.seconds, warmup_s=1.0, max_requests=10**7, verbose=False)
            rows.append({"batch": batch, "posts/s": result["rps"],
                         "events/s": result["rps"] * batch, "p50 ms": result["p50_ms"],
                         "p99 ms": result["p99_ms"], "errors": result["errors"]})
            say(f"    POST /events x{batch}: {rows[-1]}")
        (rec,) = run_load(server.url, [{**recommend_file, "concurrency": cfg.concurrency}],
                          serve_cfg, work, seconds=cfg.seconds, warmup_s=1.0,
                          max_requests=10**7, verbose=False)
    return rows, {"req/s": rec["rps"], "p50 ms": rec["p50_ms"], "p99 ms": rec["p99_ms"],
                  "errors": rec["errors"]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.ingest",
                                     description=__doc__.split("\n\n")[0])
    add_config_args(parser, IngestBenchConfig, title="ingestion benchmark")
    add_traceback_arg(parser)
    cfg = config_from_args(IngestBenchConfig, parser.parse_args(argv))
    bundle, _ = trained_bundle(default_data_set())
    engine = load_engine(str(bundle))
    item_ids = np.asarray(engine.ids)
    saved_url = os.environ.get(URL_ENV)
    work = Path(tempfile.mkdtemp(prefix="tailor-ingest-"))
    results: dict[str, Any] = {"bundle": str(bundle), "backends": {}}
    try:
        files = write_requests(build_requests(engine, ServeBenchConfig()), work)
        recommend_file = files["recommend"]
        for backend in [b.strip() for b in cfg.backends.split(",") if b.strip()]:
            if backend == "postgresql" and binaries() is None:
                say("  PostgreSQL binaries not found: skipping that back-end")
                continue
            say(f"  {backend}:")
            with ExitStack() as stack:
                url = f"sqlite:///{work / 'events.db'}" if backend == "sqlite" else \
                    stack.enter_context(postgres_server(work / "pg"))
                local = in_process(url, item_ids, cfg)
                say(f"    in-process: {local}")
                http, recommend = over_http(url, bundle, item_ids, cfg, work, recommend_file)
            results["backends"][backend] = {"in_process": local, "http": http,
                                            "recommend": recommend}
        say("  no store:")
        _, results["recommend_without_store"] = over_http(
            "none", bundle, item_ids, IngestBenchConfig(batches=(), concurrency=cfg.concurrency,
                                                        seconds=cfg.seconds), work,
            recommend_file)
    finally:
        if saved_url is None:
            os.environ.pop(URL_ENV, None)
        else:
            os.environ[URL_ENV] = saved_url
        shutil.rmtree(work, ignore_errors=True)
    publish("events", command=command_line("ingest", argv), settings=cfg.__dict__,
            results=results, markdown=markdown(results, cfg),
            metrics={f"{b}/http_x{r['batch']}/events_per_s": r["events/s"]
                     for b, v in results["backends"].items() for r in v["http"]})
    return 0


def markdown(results: dict[str, Any], cfg: IngestBenchConfig) -> str:
    text = (f"A real server on the serving benchmark's bundle (`{Path(results['bundle']).name}`),"
            f" {cfg.concurrency} keep-alive clients, {cfg.seconds:g} s per run. An answer to "
            "`POST /events` comes after its batch is committed durably (SQLite: WAL, "
            "`synchronous=FULL`; PostgreSQL: `fsync=on`).\n\n")
    for backend, v in results["backends"].items():
        text += f"**{backend}**, `POST /events` over HTTP:\n\n" + table(v["http"], digits=1)
        text += "\n`EventStore.add` in-process, one batch after another:\n\n"
        text += table(v["in_process"], digits=1) + "\n"
    rows = [{"store": backend, **v["recommend"]} for backend, v in results["backends"].items()]
    rows.append({"store": "none (TAILOR_EVENTS_URL=none)", **results["recommend_without_store"]})
    text += ("`/recommend` (the serving benchmark's mix) with the store on the request path, "
             "against none:\n\n" + table(rows, digits=2) + "\n")
    return text


if __name__ == "__main__":
    run_cli(main)
