"""`make prepare DATA=...`: read, validate, split and featurize a data set; print a summary."""

from __future__ import annotations

import argparse
import json

from features.cli import add_data_args, spec_from_args
from features.config import add_feature_args, feature_config_from_args
from features.infra import add_traceback_arg, command
from features.pipeline import Prepared, prepare


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tailor-prepare",
        description="Read a shop's events, validate them, split them for evaluation, build the "
                    "vocabulary, item features and bought-together table, cache the result as "
                    "Parquet and print a summary.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_data_args(parser)
    add_feature_args(parser)
    parser.add_argument("--no-cache", action="store_true",
                        help="recompute even if the cache holds this exact input, write nothing")
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")
    add_traceback_arg(parser)
    return parser


def format_summary(p: Prepared) -> str:
    m = p.meta
    by_type = ", ".join(f"{k} {v:,}" for k, v in m["events_by_type"].items())
    lines = [
        f"data        {m['spec']}  (sha256 {m['data_hash'][:12]})",
        f"shoppers    {m['users']:,}",
        f"items       {m['items']:,} ({m['train_items']:,} in the training vocabulary)",
        f"events      {m['events']:,}: {by_type}",
        f"time        {m['first_event']} .. {m['last_event']}" if m["has_time"]
        else "time        none (order only)",
        f"protocol    {m['protocol']}"
        + (f": valid from {m['valid_start']}, test from {m['test_start']} "
           f"({m['test_days']:g} days)" if m["protocol"] == "temporal" else ""),
        f"split       train {m['train_events']:,} / valid {m['valid_events']:,} / "
        f"test {m['test_events']:,} events",
        f"targets     valid {m['valid_targets']:,} for {m['valid_users']:,} shoppers; "
        f"test {m['test_targets']:,} for {m['test_users']:,} shoppers",
        f"together    {m['bought_together_pairs']:,} bought-together pairs",
    ]
    if m["dropped_test_rows"]:
        lines.append(f"dropped     {m['dropped_test_rows']:,} test rows that are not purchases")
    lines += [f"note        {line}" for line in m["report"]]
    lines.append(f"cache       {m.get('cache')} ({m.get('seconds', 0):.2f} s)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    spec = spec_from_args(args)
    cfg = feature_config_from_args(args)
    prepared = prepare(spec, cfg, use_cache=not args.no_cache)
    print(json.dumps(prepared.meta, indent=2, default=str) if args.json
          else format_summary(prepared))
    return 0


cli = command(main)  # `tailor-prepare` (pyproject.toml [project.scripts])

if __name__ == "__main__":
    cli()
