"""The data flags every Tailor entry point shares (``--data`` and the column overrides); the runner
that turns errors into one line is ``features.infra.run_cli``."""

from __future__ import annotations

import argparse

from features.spec import DataSpec, parse_event_map, parse_spec, with_overrides

COLUMN_FLAGS = {"user": "user id", "item": "item id", "event": "event name",
                "timestamp": "timestamp", "session": "session id", "split": "train/test split",
                "price": "price", "quantity": "quantity", "category": "item category"}


def add_data_args(parser: argparse.ArgumentParser, *, default: str = "synthetic") -> None:
    group = parser.add_argument_group("data")
    group.add_argument("--data", default=default,
                       help="data spec: synthetic[:small|medium|large], events:PATH[?opts], "
                            "retailrocket:DIR or seq:PATH (default: %(default)s)")
    for key, what in COLUMN_FLAGS.items():
        group.add_argument(f"--{key}-col", metavar="NAME",
                           help=f"column holding the {what} (default: canonical name or a "
                                f"common alias)")
    group.add_argument("--event-map", metavar="MAP",
                       help="map other event names onto view/addtocart/purchase, e.g. "
                            "click=view,cart=addtocart,buy=purchase,fav=view")
    group.add_argument("--items", metavar="PATH", help="item metadata file (CSV or Parquet)")
    group.add_argument("--on-bad-rows", choices=("error", "skip"),
                       help="stop at the first bad row (default) or skip and count bad rows")


def spec_from_args(args: argparse.Namespace) -> DataSpec:
    spec = parse_spec(args.data)
    columns = {k: getattr(args, f"{k}_col") for k in COLUMN_FLAGS if getattr(args, f"{k}_col")}
    event_map = parse_event_map(args.event_map, where="--event-map") if args.event_map else None
    return with_overrides(spec, columns=columns, event_map=event_map, items_path=args.items,
                          on_bad_rows=args.on_bad_rows)
