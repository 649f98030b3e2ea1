"""`make campaign`: top-k items for every shopper of one segment, ready for an email tool.

    tailor-campaign --model champion --segment "cart abandoner" --k 10 --out campaign

The segment is a rule of the segments file or a learned segment (``serving/segments.py``);
its shoppers are the model's stored shoppers who are in it. Each shopper's list comes from the
one ranking path (``models.ranking.rank``, as ``/recommend``: unavailable items never, purchased
items not again, the merchandising rules file's filters, boosts, pins and diversity), in chunks
that are written as they are ranked, so memory stays flat however many shoppers the segment
holds. Each item carries its explanation, as ``/recommend``'s ``because`` (for "because you
viewed ..." in the email). ``OUT`` is a folder: ``campaign.parquet`` and ``campaign.csv``
(``user_id, segment, rank, item_id, title, category_id, score, because, because_item_id,
because_title``), replaced once complete.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq
from tqdm import tqdm

from features.config import add_config_args, config_from_args, setting
from features.infra import DataError, add_traceback_arg, atomic_path, command
from features.segments import evaluate
from models.ranking import MAX_K, exclusions, rank
from serving.batch import CELLS_PER_CHUNK
from serving.engine import Engine, load_engine
from serving.merchandise import reasons, rules_path
from serving.segments import SegmentConfig, Segmenter, learned_name

SCHEMA = pa.schema([("user_id", pa.string()), ("segment", pa.string()), ("rank", pa.int32()),
                    ("item_id", pa.string()), ("title", pa.string()),
                    ("category_id", pa.string()), ("score", pa.float32()),
                    ("because", pa.string()), ("because_item_id", pa.string()),
                    ("because_title", pa.string())])


@dataclass(frozen=True)
class CampaignConfig:
    segment: str = setting("", "the segment: a name in the segments file, or learned-N")
    k: int = setting(10, "items per shopper")
    explain: bool = setting(True, "each item's reason, as /recommend's because (costs one "
                                  "scoring of up to 21 histories per shopper)")
    chunk_users: int = setting(
        0, "shoppers ranked and written at a time (0: as many as keep one chunk's scores near "
           f"{CELLS_PER_CHUNK // 1_000_000}M cells, as the batch does)")

    def __post_init__(self) -> None:
        if not 1 <= self.k <= MAX_K:
            raise ValueError(f"k must be in 1..{MAX_K}, got {self.k}")
        if self.chunk_users < 0:
            raise ValueError("chunk_users must be >= 0")


def members(segmenter: Segmenter, segment: str) -> np.ndarray:
    """Positions (in the stored histories) of the shoppers in ``segment``."""
    hist = segmenter.engine.bundle.histories
    names = [r.name for r in segmenter.rules]
    learned = [learned_name(s) for s in range(segmenter.cfg.learned)]
    if segment in names:
        j = names.index(segment)
        found = evaluate(segmenter.rules[j:j + 1], hist, segmenter.engine.categories,
                         segmenter.engine.parents)[:, 0]
    elif segment in learned:
        found = segmenter.assignment == learned.index(segment)
    else:
        raise DataError(f"unknown segment (segments: {', '.join(names + learned)})",
                        column="segment", value=segment)
    positions = np.flatnonzero(found)
    if not len(positions):
        raise DataError("no stored shopper is in this segment", column="segment", value=segment)
    return positions


def _text(values: np.ndarray | None, rows: np.ndarray) -> pa.Array:
    """``values`` of item ``rows`` as strings; null for an empty value or a row of -1."""
    if values is None:
        return pa.nulls(len(rows), pa.string())
    picked = values[np.maximum(rows, 0)]
    return pa.array(picked, pa.string(), mask=(picked == "") | (rows < 0))


def chunk_table(engine: Engine, segment: str, positions: np.ndarray, cfg: CampaignConfig
                ) -> pa.Table:
    """The ranked lists of the stored shoppers at ``positions``, one row per item."""
    hist = engine.bundle.histories.select(positions)
    rules, plan = engine.rules.current()
    ranked = rank(engine, hist, cfg.k, exclusions(hist, purchased=True), plan=plan)
    valid = ranked.rows >= 0   # pads (fewer than k allowed items) only ever trail a row
    rows = ranked.rows[valid]
    kinds = np.full(len(rows), None, dtype=object)
    because_rows = np.full(len(rows), -1, dtype=np.int64)
    if cfg.explain:
        at = 0
        for i in range(len(hist)):
            listed = valid[i]
            flags = None if ranked.flags is None else ranked.flags[i][listed]
            for because in reasons(engine, hist.select(np.array([i])), ranked.rows[i][listed],
                                   flags, rules, bool(ranked.personal[i]), None):
                kinds[at] = because.kind
                because_rows[at] = engine.item_rows.get(because.item_id, -1) \
                    if because.item_id else -1
                at += 1
    return pa.table({
        "user_id": pa.array(np.repeat(hist.user_ids, valid.sum(axis=1)), pa.string()),
        "segment": pa.array(np.full(len(rows), segment, dtype=object), pa.string()),
        "rank": pa.array(np.nonzero(valid)[1] + 1, pa.int32()),
        "item_id": pa.array(engine.ids[rows], pa.string()),
        "title": _text(engine.titles, rows),
        "category_id": _text(engine.categories, rows),
        "score": pa.array(ranked.scores[valid], pa.float32()),
        "because": pa.array(kinds, pa.string()),
        "because_item_id": _text(engine.ids, because_rows),
        "because_title": _text(engine.titles, because_rows),
    }, schema=SCHEMA)


def export(engine: Engine, segmenter: Segmenter, cfg: CampaignConfig, out: Path, *,
           progress: bool = True) -> dict:
    """Rank every shopper of the segment and stream the rows into ``out`` (a folder)."""
    positions = members(segmenter, cfg.segment)
    # Full scoring holds a (shoppers x items) score matrix per chunk: size chunks by cells.
    chunk = cfg.chunk_users or max(64, CELLS_PER_CHUNK // max(len(engine.ids), 1))
    rows = 0
    with atomic_path(out) as tmp:
        tmp.mkdir(parents=True)
        with pq.ParquetWriter(tmp / "campaign.parquet", SCHEMA) as parquet, \
                pa_csv.CSVWriter(tmp / "campaign.csv", SCHEMA) as csv:
            starts = range(0, len(positions), chunk)
            bar = tqdm(starts, desc="campaign", unit="chunk",
                       disable=None if progress else True)   # None: only on a terminal
            for start in bar:
                table = chunk_table(engine, cfg.segment, positions[start:start + chunk], cfg)
                parquet.write_table(table)
                csv.write_table(table)
                rows += table.num_rows
    return {"shoppers": int(len(positions)), "rows": rows}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tailor-campaign",
        description="Top-k items for every stored shopper of a segment, as Parquet and CSV "
                    "for an email tool.")
    parser.add_argument("--model", default="champion",
                        help="registry alias, version, run id or bundle folder (default: "
                             "champion)")
    parser.add_argument("--out", default="campaign", help="output folder (default: campaign)")
    parser.add_argument("--merch-rules", metavar="FILE",
                        help="merchandising rules (filters, boosts, pins, diversity) as the "
                             "service reads them (default: $TAILOR_RULES, else rules.toml when "
                             "it exists)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_config_args(parser, CampaignConfig, title="campaign")
    add_config_args(parser, SegmentConfig, title="segments")
    add_traceback_arg(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    cfg = config_from_args(CampaignConfig, args)
    if not cfg.segment:
        raise DataError("name a segment (--segment, SEGMENT=...)", column="segment")
    started = time.perf_counter()
    engine = load_engine(args.model, rules=Path(args.merch_rules) if args.merch_rules
                         else rules_path())
    segmenter = Segmenter(engine, config_from_args(SegmentConfig, args))
    summary = export(engine, segmenter, cfg, Path(args.out), progress=not args.no_progress)
    print(f"campaign  segment {cfg.segment!r}: {summary['shoppers']:,} shoppers x k {cfg.k} -> "
          f"{summary['rows']:,} rows in {args.out}/campaign.parquet and .csv "
          f"({time.perf_counter() - started:.1f} s)")
    return 0


cli = command(main)  # `tailor-campaign` (pyproject.toml [project.scripts])

if __name__ == "__main__":
    cli()
