"""The serving benchmark's requests: seeded bodies for both endpoints from what the bundle knows
(returning / session / unknown shoppers; items with and without bought-together rows), and the
same calls timed in-process, without HTTP."""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from benchmarks.serve_report import ENDPOINTS
from features.infra import TailorError

if TYPE_CHECKING:
    from benchmarks.serve import ServeBenchConfig

KINDS = ("returning", "session", "unknown")
SESSION_EVENTS = ("view", "addtocart")


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
        raise TailorError("the bundle knows no shopper with a known item")
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
    from serving.api import ItemRequest, RecommendRequest
    from serving.recommend import also_bought, recommend

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
