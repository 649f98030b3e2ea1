"""`make recommend-batch`: top-k recommendations for every shopper of a data set, as CSV.

    tailor-recommend-batch --data SPEC --model champion --k 50 --out recs.csv \\
        [--users FILE] [--exclude-seen | --no-exclude-purchased]

Each shopper's input is their full history in DATA (the last L events, like training); ranking
is ``models.ranking.rank``, the code path of ``/recommend`` and the pyfunc: the bundle's
recommender for shoppers with a known item, the popular items of the model's recent window for
the others.
As ``/recommend`` does by default, items a shopper bought (anywhere in DATA) do not come back;
``--exclude-seen`` leaves out everything they interacted with. The merchandising rules file
(filters, boosts, pins, diversity: ``serving/merchandise.py``) applies as in the service.
Shoppers are scored in chunks (one user-tower forward and one scoring call per chunk). Output:
``user_id,item_id,rank,score``, rank from 1, best first; written to a temporary file and moved
into place, so a failed run leaves an existing OUT as it was.
"""

from __future__ import annotations

import argparse
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.csv as pa_csv
from tqdm import tqdm

from features.cli import add_data_args, spec_from_args
from features.config import add_config_args, config_from_args, setting
from features.history import build_histories
from features.infra import DataError, add_traceback_arg, atomic_path, command, phase
from features.readers import read_events
from features.rules import NO_RULES, Rules
from features.split import sort_events
from models.merchandising import Plan, make_plan, pool_size
from models.ranking import MAX_K, rank
from serving.engine import Engine, load_engine
from serving.merchandise import rules_path

CELLS_PER_CHUNK = 10_000_000   # users x items scored at once (~40 MB of float32 scores)
MAX_WORKERS = 4                # default bound on chunks in flight (each holds a few copies)
COLUMNS = ("user_id", "item_id", "rank", "score")


@dataclass(frozen=True)
class BatchConfig:
    k: int = setting(50, "recommendations per shopper")
    exclude_purchased: bool = setting(
        True,
        "leave out items the shopper bought in DATA, as /recommend does by default "
        "(--no-exclude-purchased keeps them)")
    exclude_seen: bool = setting(
        False,
        "leave out every item the shopper interacted with in DATA (views and carts too)")
    chunk_users: int = setting(0, "shoppers scored per chunk (0: chosen from the catalog size)")
    diversity: float | None = setting(
        None,
        "0..1: re-rank each list's top candidates by maximal marginal relevance, as "
        "/recommend's diversity (default: the rules file's, else the measured default)")
    max_per_category: int | None = setting(
        None, "at most this many items of one leaf category per list (0: no cap; default: the "
              "rules file's)")
    workers: int = setting(
        0,
        f"chunks ranked in parallel threads (0: one per CPU core, "
                   f"at most {MAX_WORKERS})")

    def __post_init__(self) -> None:
        if not 1 <= self.k <= MAX_K:
            raise ValueError(f"k must be in 1..{MAX_K}, got {self.k}")
        if self.chunk_users < 0 or self.workers < 0:
            raise ValueError("chunk_users and workers must be >= 0")
        if self.diversity is not None and not 0 <= self.diversity <= 1:
            raise ValueError(f"diversity must be in 0..1, got {self.diversity}")
        if self.max_per_category is not None and self.max_per_category < 0:
            raise ValueError(f"max_per_category must be >= 0, got {self.max_per_category}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tailor-recommend-batch",
        description="Top-k recommendations for every shopper in DATA (or the ids in --users), "
                    "from each shopper's history in DATA, ranked like the /recommend endpoint; "
                    "writes user_id,item_id,rank,score (rank from 1).")
    add_data_args(parser)
    add_config_args(parser, BatchConfig, title="batch")
    run = parser.add_argument_group("run")
    run.add_argument("--model", default="champion",
                     help="registered alias or version, MLflow run id, or bundle folder "
                          "(default: %(default)s)")
    run.add_argument("--out", default="recs.csv", help="CSV to write (default: %(default)s)")
    run.add_argument("--rules", metavar="FILE",
                     help="merchandising rules (filters, boosts, pins, diversity) as the service "
                          "reads them (default: $TAILOR_RULES, else rules.toml when it exists)")
    run.add_argument("--users", metavar="FILE",
                     help="only these shoppers, one id a line (ids without events in DATA get "
                          "the popular items)")
    add_traceback_arg(parser)
    return parser


def read_users(path: str | Path) -> np.ndarray:
    """Distinct ids of a one-id-a-line file, in file order (blank lines skipped)."""
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    ids = list(dict.fromkeys(line.strip() for line in lines if line.strip()))
    if not ids:
        raise DataError("no user ids (expected one id a line)", path=str(path))
    return np.asarray(ids, dtype=object)


def batch_recommend(engine: Engine, events: pd.DataFrame, users: np.ndarray | None,
                    cfg: BatchConfig) -> tuple[pd.DataFrame, dict]:
    """Recommendations for ``users`` (default: every shopper in ``events``) and a summary."""
    events = sort_events(events)
    if users is None:
        users = pd.unique(events["user_id"].to_numpy(dtype=object))
    users = np.asarray(users, dtype=object)
    vocab = engine.bundle.item_vocab
    histories = build_histories(events, vocab, max_len=engine.bundle.model.cfg.history_len,
                                users=users)
    seen = None
    if cfg.exclude_seen or cfg.exclude_purchased:
        mine = events if cfg.exclude_seen else events[events["event"] == "purchase"]
        seen = seen_items(mine, users, vocab.lookup(mine["item_id"]))
    chunk = cfg.chunk_users or max(64, CELLS_PER_CHUNK // max(len(vocab), 1))
    plan = batch_plan(engine, cfg)
    if not plan.plain:   # each list's candidates are scored: pool_size(k) of them, not k
        chunk = max(16, chunk * cfg.k // pool_size(cfg.k))

    def ranked(start: int):
        positions = np.arange(start, min(start + chunk, len(users)))
        return rank(engine, histories.select(positions), cfg.k,
                    exclude=None if seen is None else seen[start:start + chunk], plan=plan)

    # Threads: torch, scipy and numpy release the GIL in the heavy parts, and a single chunk
    # leaves cores idle in its single-threaded numpy passes.
    workers = cfg.workers or min(os.cpu_count() or 1, MAX_WORKERS)
    starts = range(0, len(users), chunk)
    with phase("recs", f"ranking {len(users):,} shoppers, top {cfg.k}, {workers} threads"), \
            ThreadPoolExecutor(max_workers=workers) as pool:
        # disable=None: a bar on a terminal only; a log gets the phase's two lines
        done = list(tqdm(pool.map(ranked, starts), total=len(starts), desc="ranking",
                         unit="chunk", leave=False, disable=None))
    rows = [r.rows for r in done]
    scores = [r.scores for r in done]
    personal = sum(int(r.personal.sum()) for r in done)
    rows = np.concatenate(rows) if rows else np.empty((0, cfg.k), dtype=np.int64)
    scores = np.concatenate(scores) if scores else np.empty((0, cfg.k), dtype=np.float32)
    valid = rows >= 0    # pads (fewer than k allowed items) only ever trail a row
    frame = pd.DataFrame({
        "user_id": np.repeat(users, valid.sum(axis=1)),
        "item_id": vocab.ids[rows[valid]],
        "rank": np.nonzero(valid)[1] + 1,
        "score": scores[valid].astype(np.float64),
    })
    return frame, {"users": len(users), "personal": personal, "rows": len(frame)}


def batch_plan(engine: Engine, cfg: BatchConfig) -> Plan:
    """The engine's rules file with the batch's diversity and category cap on top."""
    rules, plan = engine.rules.current()
    extra = Rules(diversity=cfg.diversity, max_per_category=cfg.max_per_category)
    return plan if extra == NO_RULES else make_plan(rules.merged(extra), engine.catalog)


def seen_items(events: pd.DataFrame, users: np.ndarray, item_rows: np.ndarray
               ) -> list[np.ndarray]:
    """Per user (in ``users`` order) the distinct known item rows of all their events."""
    owner = pd.Index(users).get_indexer(events["user_id"].to_numpy(dtype=object))
    keep = (owner >= 0) & (item_rows >= 0)
    pairs = np.unique(np.stack([owner[keep], item_rows[keep]]), axis=1)  # sorted by owner
    bounds = np.searchsorted(pairs[0], np.arange(len(users) + 1))
    return np.split(pairs[1], bounds[1:-1])


def write_csv(frame: pd.DataFrame, out: str | Path) -> Path:
    """``frame`` as CSV at ``out``, replaced only once complete. Arrow writes it (pandas takes
    seconds per million rows); ids are quoted only when one holds a comma, quote or newline."""
    out = Path(out)
    table = pa.Table.from_pandas(frame[list(COLUMNS)].astype({"score": np.float32}),
                                 preserve_index=False)
    with atomic_path(out) as tmp:
        try:
            pa_csv.write_csv(table, tmp, pa_csv.WriteOptions(quoting_style="none",
                                                             quoting_header="none"))
        except pa.ArrowInvalid:   # an id needs quoting
            pa_csv.write_csv(table, tmp, pa_csv.WriteOptions(quoting_header="none"))
    return out


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    cfg = config_from_args(BatchConfig, args)
    started = time.perf_counter()
    users = read_users(args.users) if args.users else None
    spec = spec_from_args(args)
    engine = load_engine(args.model, rules=Path(args.rules) if args.rules else rules_path())
    data = read_events(spec)
    loaded = time.perf_counter()
    frame, summary = batch_recommend(engine, data.events, users, cfg)
    scored = time.perf_counter()
    out = write_csv(frame, args.out)
    print(f"model     {engine.version} ({engine.method}); data {spec.text}: "
          f"{len(data.events):,} events")
    print(f"recs      {summary['users']:,} shoppers x k {cfg.k} -> {summary['rows']:,} rows in "
          f"{out} ({summary['personal']:,} from their history, "
          f"{summary['users'] - summary['personal']:,} popular)")
    print(f"time      {time.perf_counter() - started:.1f} s in all: load {loaded - started:.1f} s, "
          f"ranking {scored - loaded:.1f} s, writing {time.perf_counter() - scored:.1f} s")
    return 0


cli = command(main)  # `tailor-recommend-batch` (pyproject.toml [project.scripts])

if __name__ == "__main__":
    cli()
