"""`make bench-index`: the FAISS indexes Tailor can serve from, measured side by side.

    python -m benchmarks.index [--model BUNDLE] [--synthetic-items 1000000] [--no-mlflow]

Two catalogs: the trained item embeddings of a bundle, and a seeded synthetic catalog of a
million clustered, L2-normalized vectors. For each index type (exact ``Flat``, ``HNSW32,Flat``,
and ``auto-ivf``: the IVF Tailor ships for large catalogs) the index is built through
``models.index_build.build_index``, so the figures include Tailor's own nprobe / efSearch tuning
up to its recall gate, and searched through ``ItemIndex.search``, the call serving makes. Reported:
build seconds (train + add, and the recall tuning on top), memory (serialized index, and the
growth of this process's resident memory), recall@k against exact search on the benchmark's own
queries (seeded apart from the gate's), single-query QPS with p50/p99 latency (with every
FAISS thread, as serving runs now, and with one), and batch QPS. Timings are medians over
``repeats``; the machines are small and noisy.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import os
import re
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import faiss
import numpy as np

from benchmarks.common import (
    command_line,
    default_data_set,
    median,
    percentiles,
    publish,
    say,
    table,
    trained_bundle,
)
from features.config import add_config_args, config_from_args, setting
from features.infra import add_traceback_arg, run_cli
from models.index import IndexBuildError, IndexConfig, ItemIndex
from models.index_build import auto_factory, build_index, recall_at_k, stand_in_queries

AUTO_IVF = "auto-ivf"   # auto_factory(n, exact_max_items=0): the IVF large catalogs get
# Synthetic catalog, shaped like trained two-tower embeddings rather than uniform noise (which
# has no neighbourhoods and fails every approximate index): items around random centres (4,000
# for a million items), a shared direction, and variance falling off over the dimensions. The
# constants reproduce the Sports bundle's item vectors: median cosine of two random items ~0.5,
# of an item's nearest neighbour ~0.89, ~14 effective dimensions (covariance participation ratio).
ITEMS_PER_CENTRE = 250
SPREAD = 1.0            # item noise relative to the spread of the centres
SHARED = 1.4            # weight of the direction every item shares
DECAY = 0.5             # standard deviation of (rotated) dimension i ~ i^-DECAY
CHUNK = 100_000         # rows generated at a time, bounding the temporaries


@dataclass(frozen=True)
class IndexBenchConfig:
    synthetic_items: int = setting(1_000_000, "items in the synthetic catalog (0: skip it)")
    dim: int = setting(
        64,
        "vector dimension of the synthetic catalog (the trained one keeps the bundle's)")
    queries: int = setting(1000, "queries for recall@k and batch QPS")
    single_queries: int = setting(
        200,
        "queries searched one at a time for single-query QPS and latency")
    batch_size: int = setting(256, "queries per search call for batch QPS")
    repeats: int = setting(3, "timed repeats; figures are medians")
    k: int = setting(10, "neighbours per query (recall@k)")
    factories: tuple[str, ...] = setting(
        ("Flat", "HNSW32,Flat", AUTO_IVF),
        f"FAISS index_factory strings, or {AUTO_IVF} for the IVF Tailor picks for "
                 f"large catalogs")
    min_recall: float = setting(
        0.95,
        "recall gate of approximate indexes (models.index.IndexConfig.min_recall)")
    seed: int = setting(0, "seed of the synthetic catalog, the queries and the index training")
    threads: int = setting(0, "FAISS threads (0: every core)")

    def __post_init__(self) -> None:
        for name in ("dim", "queries", "single_queries", "batch_size", "repeats", "k"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.synthetic_items < 0 or self.threads < 0:
            raise ValueError("synthetic_items and threads must be >= 0")
        if not self.factories:
            raise ValueError("factories must name at least one index type")
        if not 0.0 <= self.min_recall <= 1.0:
            raise ValueError(f"min_recall must be in [0, 1], got {self.min_recall}")


HEADERS = {"index": "index", "items": "items", "build_s": "build s", "tuning_s": "tuning s",
           "memory_mb": "memory MB", "rss_mb": "RSS + MB", "params": "search params",
           "recall": "recall@{k}", "single_qps": "single-query QPS",
           "single_p50_ms": "single p50 ms", "single_p99_ms": "single p99 ms",
           "single_1t_qps": "1-thread single QPS", "single_1t_p50_ms": "1-thread p50 ms",
           "batch_qps": "batch QPS"}   # table columns, in order


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.index",
        description="Build time, memory, recall@k and QPS of Flat, HNSW and IVF indexes over "
                    "trained item embeddings and a synthetic catalog; writes "
                    "benchmarks/results/index.json and the Index section of BENCHMARKS.md.")
    add_config_args(parser, IndexBenchConfig, title="benchmark")
    run = parser.add_argument_group("run")
    run.add_argument("--model", metavar="BUNDLE",
                     help="bundle folder whose item vectors are the trained catalog (default: "
                          "the benchmarks' bundle of Sports, or of the embedded shop without "
                          "../shared/data; trained first when missing)")
    run.add_argument("--no-mlflow", dest="mlflow", action="store_false",
                     help="do not log the run to MLflow")
    add_traceback_arg(parser)
    return parser


def synthetic_catalog(n: int, dim: int, seed: int) -> np.ndarray:
    """``n`` seeded, clustered, L2-normalized float32 vectors, made ``CHUNK`` rows at a time."""
    rng = np.random.default_rng(seed)
    scale = np.arange(1, dim + 1, dtype=np.float32) ** -DECAY
    scale /= np.linalg.norm(scale)
    rotation = np.linalg.qr(rng.standard_normal((dim, dim)))[0].astype(np.float32)
    shared = rng.standard_normal(dim).astype(np.float32)
    shared *= SHARED / np.linalg.norm(shared)
    n_centres = max(1, n // ITEMS_PER_CENTRE)
    centres = rng.standard_normal((n_centres, dim), dtype=np.float32) * scale
    x = np.empty((n, dim), dtype=np.float32)
    for start in range(0, n, CHUNK):
        rows = min(CHUNK, n - start)
        noise = rng.standard_normal((rows, dim), dtype=np.float32) * (scale * SPREAD)
        block = (centres[rng.integers(0, n_centres, rows)] + noise) @ rotation + shared
        block /= np.linalg.norm(block, axis=1, keepdims=True)
        x[start:start + rows] = block
    return x


def factory_for(name: str, n_items: int) -> str:
    return auto_factory(n_items, exact_max_items=0) if name == AUTO_IVF else name


def rss_mb() -> float:
    """Resident memory of this process now (MB); 0 where /proc is missing.

    Memory freed by the previous index is handed back to the system first (glibc keeps it
    otherwise, and the next index would reuse it unseen).
    """
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
    except (OSError, IndexError, ValueError):
        return 0.0
    return pages * os.sysconf("SC_PAGE_SIZE") / 2 ** 20


def measure(name: str, x: np.ndarray, queries: np.ndarray, exact: np.ndarray,
            cfg: IndexBenchConfig, threads: int) -> dict:
    """One row: build ``name`` over ``x`` the way Tailor does, then time its searches."""
    factory = factory_for(name, len(x))
    row: dict = {"factory": name, "index": factory, "items": len(x)}
    say(f"  building {factory} over {len(x):,} x {x.shape[1]} ...")
    before, started = rss_mb(), time.perf_counter()
    try:
        index = build_index(x, IndexConfig(factory=factory, min_recall=cfg.min_recall,
                                           recall_k=cfg.k, seed=cfg.seed, threads=threads))
    except IndexBuildError as err:   # a failed recall gate is a result, not a crash
        say(f"    failed: {err}")
        return {**row, "error": str(err), "seconds": round(time.perf_counter() - started, 3),
                "params": "failed (see below)"}
    info = index.info
    row.update(build_s=info["index_seconds"], seconds=info["build_seconds"],
               tuning_s=round(info["build_seconds"] - info["index_seconds"], 3),
               memory_mb=faiss.serialize_index(index.index).nbytes / 2 ** 20,
               rss_mb=max(0.0, rss_mb() - before), search_params=info["search_params"],
               gate_recall=info["recall"], tuning=info["tuning"])
    row["params"] = ", ".join(f"{k}={v}" for k, v in info["search_params"].items()) or "exact"
    if not info["exact"]:
        row["params"] += f" (gate {info['recall']:.3f})"
    say(f"    built in {info['build_seconds']:.1f} s ({row['params']}); timing searches ...")
    row.update(time_searches(index, queries, exact, x, cfg, threads))
    say(f"    recall@{cfg.k} {row['recall']:.3f}, {row['single_qps']:,.0f} single / "
        f"{row['batch_qps']:,.0f} batch QPS")
    return row


def time_searches(index: ItemIndex, queries: np.ndarray, exact: np.ndarray, x: np.ndarray,
                  cfg: IndexBenchConfig, threads: int) -> dict:
    """Recall of a batch search; batch QPS and single-query QPS / latency, medians of repeats.

    ``queries``: the first ``cfg.queries`` are searched in batches, the first
    ``cfg.single_queries`` one at a time; ``exact``: their exact top-k scores. Single queries
    are timed with ``threads`` FAISS threads and again with one: some index types (Flat) open a
    parallel region even for one query, which waits for a busy core on a shared machine, and a
    serving worker may well run single-threaded.
    """
    k, bs = cfg.k, cfg.batch_size
    singles, queries, exact = queries[:cfg.single_queries], queries[:cfg.queries], \
        exact[:cfg.queries]
    index.search(queries[:bs], k)   # warm-up: first-touch page faults, thread pool start

    def batched() -> np.ndarray:
        return np.vstack([index.search(queries[i:i + bs], k)[0]
                          for i in range(0, len(queries), bs)])

    def one_at_a_time(n_threads: int) -> list[float]:
        faiss.omp_set_num_threads(n_threads)
        times = []
        for i in range(len(singles)):
            started = time.perf_counter()
            index.search(singles[i:i + 1], k)
            times.append(time.perf_counter() - started)
        faiss.omp_set_num_threads(threads)
        return times

    batch_qps, found = [], None
    single: dict[str, list[list[float]]] = {"single": [], "single_1t": []}
    for _ in range(cfg.repeats):
        started = time.perf_counter()
        found = batched()
        batch_qps.append(len(queries) / (time.perf_counter() - started))
        single["single"].append(one_at_a_time(threads))
        single["single_1t"].append(one_at_a_time(1))
    out = {"recall": recall_at_k(found, queries, x, exact), "batch_qps": median(batch_qps),
           "batch_qps_runs": batch_qps}
    for name, runs in single.items():
        lat = percentiles([1000 * t for run in runs for t in run], (50, 99))
        qps = [len(run) / sum(run) for run in runs]
        out.update({f"{name}_qps": median(qps), f"{name}_p50_ms": lat["p50"],
                    f"{name}_p99_ms": lat["p99"], f"{name}_qps_runs": qps})
    return out


def bench_catalog(x: np.ndarray, cfg: IndexBenchConfig, threads: int) -> list[dict]:
    """Every factory over one catalog, against exact neighbours of the benchmark's own queries."""
    # Seeded apart from the recall gate's stand-ins (seed), so recall is measured on queries the
    # tuning never saw.
    queries = stand_in_queries(x, max(cfg.queries, cfg.single_queries), cfg.seed + 1)
    say(f"  exact top-{cfg.k} of {len(queries):,} queries ...")
    exact, _ = faiss.knn(queries, x, min(cfg.k, len(x)), metric=faiss.METRIC_INNER_PRODUCT)
    return [measure(name, x, queries, exact, cfg, threads) for name in cfg.factories]


def tailor_pick(n_items: int, rows: list[dict]) -> str:
    """One sentence: the index Tailor ships for this catalog size (default settings) and why."""
    default = IndexConfig()
    pick = auto_factory(n_items, default.exact_max_items)
    ok = {r["index"]: r for r in rows if "error" not in r}
    if pick == "Flat":
        cost = f" (here {ok['Flat']['single_1t_p50_ms']:.2f} ms a query on one thread)" \
            if "Flat" in ok else ""
        return (f"Tailor ships exact `Flat` for {n_items:,} items: up to "
                f"{default.exact_max_items:,} items exact search is cheap enough{cost} that an "
                f"approximate index would only cost recall.")
    why = (f"above {default.exact_max_items:,} items it picks IVF with ~4·√n lists, searched "
           f"with the cheapest nprobe reaching recall@{default.recall_k} ≥ "
           f"{default.min_recall}, because IVF builds fast on few cores and filters cheaply")
    if pick not in ok:
        return f"Tailor picks `{pick}` for {n_items:,} items ({why}), but here it failed."
    hnsw = [f"{r['seconds']:.0f} s for `{r['index']}`" for r in rows if "HNSW" in r["index"]]
    built = f"{ok[pick]['seconds']:.0f} s to build and tune" + \
        (f" against {', '.join(hnsw)}" if hnsw else "")
    return f"Tailor ships `{pick}` for {n_items:,} items ({why}; here {built})."


def slug(text: str) -> str:
    """A metric-name part: no '@', ',' or '.' (``HNSW32,Flat`` -> ``HNSW32_Flat``)."""
    return re.sub(r"[^\w-]", "_", text)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    cfg = config_from_args(IndexBenchConfig, args)
    threads = cfg.threads or len(os.sched_getaffinity(0))
    faiss.omp_set_num_threads(threads)   # the exact ground truth too, not only the builds
    if args.model:
        model, source = Path(args.model), args.model
    else:
        ds = default_data_set()
        say(f"trained catalog: the bundle trained on {ds.name}")
        model, _ = trained_bundle(ds)
        source = f"bundle trained on {ds.name}"
    from models.bundle import Bundle  # torch: imported only once the arguments are fine

    trained = np.ascontiguousarray(Bundle.load(model).item_vectors, dtype=np.float32)
    catalogs = {"trained": (f"Trained item embeddings ({source})", trained)}
    if cfg.synthetic_items:
        say(f"generating {cfg.synthetic_items:,} synthetic items x {cfg.dim} ...")
        catalogs["synthetic"] = ("Synthetic catalog (clustered like trained embeddings)",
                                 synthetic_catalog(cfg.synthetic_items, cfg.dim, cfg.seed))

    results: dict = {}
    sections, metrics = [], {}
    columns = {name.replace("recall", f"recall_at_{cfg.k}"): head.format(k=cfg.k)
               for name, head in HEADERS.items()}
    for key, (title, x) in catalogs.items():
        say(f"{title}: {len(x):,} x {x.shape[1]}")
        rows = bench_catalog(x, cfg, threads)
        for r in rows:   # the recall column and metric say which k
            if "recall" in r:
                r[f"recall_at_{cfg.k}"] = r.pop("recall")
        pick = tailor_pick(len(x), rows)
        results[key] = {"title": title, "items": len(x), "dim": x.shape[1],
                        "tailor_pick": auto_factory(len(x), IndexConfig().exact_max_items),
                        "rows": rows}
        failed = [f"`{r['index']}` after {r['seconds']:.0f} s: {r['error']}"
                  for r in rows if "error" in r]
        body = (f"### {title}: {len(x):,} items × {x.shape[1]}\n\n"
                f"{table(rows, list(columns), columns)}\n{pick}\n"
                + "".join(f"\n- failed {line}" for line in failed))
        sections.append(body)
        say("\n" + body)
        for r in rows:
            for name in columns:
                if isinstance(r.get(name), int | float) and name != "items":
                    metrics[f"index.{key}.{slug(r['factory'])}.{name}"] = r[name]
    notes = (f"recall@{cfg.k} against exact search on {cfg.queries:,} seeded stand-in queries "
             f"(apart from the recall gate's); batch QPS: those queries in batches of "
             f"{cfg.batch_size}; single-query: {cfg.single_queries} queries one at a time, with "
             f"{threads} FAISS threads and with 1; all through `ItemIndex.search`, the call "
             f"serving makes; medians of {cfg.repeats} repeats. Build s: train + add; "
             f"tuning s: Tailor's recall gate (nprobe / efSearch raised until recall@"
             f"{cfg.k} ≥ {cfg.min_recall}). Memory: the serialized index; RSS +: growth of the "
             f"process while building. The synthetic catalog: seeded clusters around a shared "
             f"direction, variance falling off over the dimensions, like the trained vectors "
             f"(cosine of random items ~0.5, of nearest neighbours ~0.89, ~14 effective "
             f"dimensions).")
    markdown = notes + "\n\n" + "\n\n".join(sections)
    settings = {**asdict(cfg), "threads_used": threads, "model": str(model),
                "synthetic": {"items_per_centre": ITEMS_PER_CENTRE, "spread": SPREAD,
                              "shared": SHARED, "decay": DECAY}}
    out = publish("index", command=command_line("index", argv), settings=settings,
                  results=results, markdown=markdown, metrics=metrics, mlflow_log=args.mlflow)
    say(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    run_cli(main)
