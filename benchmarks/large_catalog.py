"""`make bench-large`: full scoring against two-stage ranking (models/retrieval.py), on quality and
on latency as the catalog grows to 1M items.

    python -m benchmarks.large_catalog [--sizes 100000,300000,1000000] [--requests 300]

1. **Quality.** The served bundles of ``benchmarks/served.py`` (trained on the past, scored on
   what came after; the embedded shop, and Sports when present) rank their hold-out shoppers
   through the batch twice: full scoring, and two-stage forced on. NDCG@10 / HR@10 of both.
2. **Latency.** The embedded shop's served bundle with its catalog grown to each size: items
   added with ``models.added_items.with_items`` (copies of real items' metadata under new ids,
   each vector then jittered so that items are distinct), an index built for that size
   (``models.index_build.build_index``: IVF above 50k items, recall gate included). One
   in-process ``/recommend`` at a time (the serving benchmark's mix of returning shoppers,
   session-only visitors and unknown ones, explanations on) under full scoring and two-stage:
   p50 / p99 milliseconds. Where two-stage becomes the cheaper is
   ``models.retrieval.TWO_STAGE_MIN_ITEMS``.
3. **Over HTTP.** The largest grown catalog saved as a bundle (its IVF index inside) and served
   by a real ``make serve`` process (``serving.process.served``); one client sends the same
   requests one after another: p50 / p99 milliseconds as the client sees them, the service's
   own default (two-stage at that size).
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import numpy as np
import torch

from benchmarks.common import (
    EMBEDDED,
    command_line,
    percentiles,
    publish,
    real_data_sets,
    say,
    table,
)
from benchmarks.http_client import Connection
from benchmarks.served import hold_out, score, train_and_recommend
from features.config import add_config_args, config_from_args, setting
from features.infra import TailorError, add_traceback_arg, cache_root, run_cli
from features.item_features import metadata_columns
from features.spec import parse_spec
from models.added_items import with_items
from models.bundle import Bundle
from models.index_build import build_index
from models.retrieval import TWO_STAGE_MIN_ITEMS
from serving.api import RecommendRequest
from serving.batch import BatchConfig, batch_recommend
from serving.engine import Engine
from serving.process import free_port, served, sigterm_unwinds
from serving.recommend import recommend

NEVER = 10**12   # a threshold no catalog reaches: full scoring


@dataclass(frozen=True)
class LargeBenchConfig:
    sizes: str = setting("100000,300000,1000000", "catalog sizes the latency part grows to")
    requests: int = setting(300, "requests per catalog size and method")
    seed: int = setting(0, "seed of the grown catalog and the requests")
    http_items: int = setting(1_000_000, "the catalog size whose /recommend is also timed "
                                         "over HTTP by a real server, one client; 0: none")


def served_bundle(name: str, spec: str) -> tuple[Path, Any]:
    """The served bundle of ``benchmarks/served.py``'s hold-out (trained when missing)."""
    folder = cache_root() / "bench-bundles" / f"{name}-served"
    held = hold_out(parse_spec(spec), folder)
    if not (folder / "bundle" / "bundle.json").is_file():
        train_and_recommend(held, folder)
    return folder / "bundle", held


def quality(name: str, spec: str) -> dict[str, Any]:
    path, held = served_bundle(name, spec)
    bundle = Bundle.load(path)
    index, _ = bundle.item_index()
    users = held.targets["user_id"].astype(object).unique()
    out: dict[str, Any] = {"data": name, "items": len(bundle.item_vocab), "shoppers": len(users)}
    for method, threshold in (("full_scoring", NEVER), ("two_stage", 0)):
        engine = Engine(bundle, index, two_stage_from=threshold)
        started = time.perf_counter()
        recs, _ = batch_recommend(engine, held.seen, users, BatchConfig(k=10))
        out[method] = score(recs, held.targets, ks=(10,)) | {
            "seconds": time.perf_counter() - started}
    out["ndcg_ratio"] = out["two_stage"]["ndcg@10"] / max(out["full_scoring"]["ndcg@10"], 1e-12)
    return out


def grown(bundle: Bundle, size: int, seed: int) -> tuple[Bundle, Any]:
    """``bundle`` with ``size`` items in all: real items' metadata under new ids, vectors
    jittered (item and index alike) so that no two items are the same point."""
    rng = np.random.default_rng(seed)
    extra = size - len(bundle.item_vocab)
    meta = bundle.items[["item_id", *metadata_columns(bundle.items)]]
    new = meta.iloc[rng.integers(len(meta), size=extra)].reset_index(drop=True)
    new["item_id"] = [f"g{i:07d}" for i in range(extra)]
    index, _ = bundle.item_index()
    big, _, _ = with_items(bundle, index, new)
    vectors = big.item_vectors.copy()
    noise = rng.normal(scale=0.15, size=(extra, vectors.shape[1])).astype(np.float32)
    moved = vectors[-extra:] + noise
    vectors[-extra:] = moved / np.linalg.norm(moved, axis=1, keepdims=True)
    big.item_vectors = vectors
    towers = getattr(big.recommender, "towers", big.recommender)
    towers.item_vectors = vectors   # the scores read the same jittered vectors as the index
    towers._items_t = torch.from_numpy(vectors)
    return big, build_index(vectors)


def requests(bundle: Bundle, n: int, seed: int) -> list[RecommendRequest]:
    """The serving benchmark's mix: returning shoppers, session-only visitors, unknown ones."""
    rng = np.random.default_rng(seed)
    users = bundle.histories.user_ids
    known = bundle.item_vocab.ids
    out = []
    for i in range(n):
        if i % 3 == 0:
            out.append(RecommendRequest(user_id=str(users[rng.integers(len(users))]), k=10))
        elif i % 3 == 1:
            items = known[rng.integers(len(known), size=3)]
            out.append(RecommendRequest(user_id=f"visitor-{i}", k=10, recent_events=[
                {"item_id": str(item), "event": "view"} for item in items]))
        else:
            out.append(RecommendRequest(user_id=f"unknown-{i}", k=10))
    return out


def latency(engine: Engine, asks: list[RecommendRequest]) -> dict[str, float]:
    for ask in asks[:10]:   # warm-up
        recommend(engine, ask)
    times = []
    for ask in asks:
        started = time.perf_counter()
        recommend(engine, ask)
        times.append(1000 * (time.perf_counter() - started))
    return {f"{name}_ms": value for name, value in percentiles(times, (50, 99)).items()}


def http_latency(big: Bundle, asks: list[RecommendRequest], work: Path) -> dict[str, Any]:
    """``asks`` one at a time against a real server of ``big`` (saved under ``work``), sent by
    the load generator's client (``benchmarks.http_client``: requests built before timing, about
    0.1 ms of client time each; httpx took about 1 ms, which the figures then included)."""
    started = time.perf_counter()
    folder = big.save(work / "bundle")
    say(f"  saved the {len(big.item_vocab):,}-item bundle in {time.perf_counter() - started:.0f} s")
    bodies = [ask.model_dump_json(exclude_defaults=True).encode() for ask in asks]
    with served(folder, free_port(), work / "server.log") as server:
        times = asyncio.run(_one_at_a_time(server.url, bodies))
        workers = len(server.workers())
    return {"workers": workers, "requests": len(times),
            **{f"{name}_ms": value for name, value in percentiles(times, (50, 99)).items()}}


async def _one_at_a_time(url: str, bodies: list[bytes]) -> list[float]:
    """Milliseconds of each ``/recommend`` of ``bodies``, one after another on one keep-alive
    connection, after 10 of them as warm-up."""
    address = urlsplit(url)
    client = Connection(address.hostname or "127.0.0.1", address.port or 80, timeout=60)
    messages = [client.message("POST", "/recommend", body) for body in bodies]
    times = []
    try:
        for i, message in enumerate(messages[:10] + messages):
            begun = time.perf_counter()
            answer = await client.request(message)
            if answer.status != 200:
                raise TailorError(f"/recommend answered {answer.status}: {answer.text[:300]}")
            if i >= 10:
                times.append(1000 * (time.perf_counter() - begun))
    finally:
        await client.close()
    return times


def markdown(runs: dict[str, Any]) -> str:
    q = [{"data": r["data"], "items": f"{r['items']:,}", "shoppers": f"{r['shoppers']:,}",
          "full NDCG@10": r["full_scoring"]["ndcg@10"], "two-stage NDCG@10":
          r["two_stage"]["ndcg@10"], "ratio": r["ndcg_ratio"],
          "full HR@10": r["full_scoring"]["hr@10"], "two-stage HR@10": r["two_stage"]["hr@10"]}
         for r in runs["quality"]]
    lat = [{"items": f"{r['items']:,}", "index": r["index"],
            "full p50 ms": r["full_scoring"]["p50_ms"], "full p99 ms": r["full_scoring"]["p99_ms"],
            "two-stage p50 ms": r["two_stage"]["p50_ms"],
            "two-stage p99 ms": r["two_stage"]["p99_ms"]} for r in runs["latency"]]
    return "\n".join([
        "**Quality**: the served bundle (trained on the past) ranks its hold-out shoppers "
        "through the batch, full scoring against two-stage (`models/retrieval.py`):", "",
        table(q), "",
        "**Latency**: one in-process `/recommend` at a time (explanations on), the embedded "
        "shop's model over a catalog grown to each size:", "", table(lat), "",
        f"Two-stage is chosen from `TWO_STAGE_MIN_ITEMS` = {TWO_STAGE_MIN_ITEMS:,} items.",
        *([] if not runs.get("http") else [
            "", f"**Over HTTP**: the {runs['http']['items']:,}-item bundle served by a real "
            f"`make serve` process ({runs['http']['workers']} workers, two-stage as the service "
            f"chooses it at that size), one client, {runs['http']['requests']} requests one "
            f"after another: **p50 {runs['http']['p50_ms']:.1f} ms, p99 "
            f"{runs['http']['p99_ms']:.1f} ms**."])])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.large_catalog",
                                     description=__doc__.split("\n\n")[0])
    add_config_args(parser, LargeBenchConfig, title="large catalog benchmark")
    add_traceback_arg(parser)
    cfg = config_from_args(LargeBenchConfig, parser.parse_args(argv))
    torch.set_num_threads(1)   # as a serving worker
    data = [(EMBEDDED.name, EMBEDDED.spec)] + [(d.name, d.spec) for d in real_data_sets()
                                               if d.name == "Sports"]
    runs: dict[str, Any] = {"quality": [quality(name, spec) for name, spec in data]}
    for r in runs["quality"]:
        say(f"  {r['data']}: NDCG@10 full {r['full_scoring']['ndcg@10']:.4f}, two-stage "
            f"{r['two_stage']['ndcg@10']:.4f} ({r['ndcg_ratio']:.3f}x)")
    base_path, _ = served_bundle(EMBEDDED.name, EMBEDDED.spec)
    base = Bundle.load(base_path)
    runs["latency"] = []
    for size in [int(s) for s in cfg.sizes.split(",") if s.strip()]:
        big, index = grown(base, size, cfg.seed)
        asks = requests(big, cfg.requests, cfg.seed)
        row = {"items": size, "index": index.info.get("factory")}
        for method, threshold in (("full_scoring", NEVER), ("two_stage", 0)):
            row[method] = latency(Engine(big, index, two_stage_from=threshold), asks)
        say(f"  {size:,} items: full p99 {row['full_scoring']['p99_ms']:.1f} ms, two-stage "
            f"p99 {row['two_stage']['p99_ms']:.1f} ms")
        runs["latency"].append(row)
        if size == cfg.http_items:
            with sigterm_unwinds(), tempfile.TemporaryDirectory(prefix="tailor-large-") as tmp:
                runs["http"] = {"items": size, **http_latency(big, asks, Path(tmp))}
            say(f"  {size:,} items over HTTP: p50 {runs['http']['p50_ms']:.1f} ms, p99 "
                f"{runs['http']['p99_ms']:.1f} ms")
    publish("large", command=command_line("large_catalog", argv), settings=cfg.__dict__,
            results=runs, markdown=markdown(runs),
            metrics={**{f"{r['items']}/{m}/p99_ms": r[m]["p99_ms"] for r in runs["latency"]
                        for m in ("full_scoring", "two_stage")},
                     **({f"{runs['http']['items']}/http/p99_ms": runs["http"]["p99_ms"]}
                        if runs.get("http") else {})})
    return 0


if __name__ == "__main__":
    run_cli(main)
