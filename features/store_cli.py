"""The event store from the command line: `make forget USER=...`, `make export-events OUT=...`.

    tailor-store forget --user u000042 [--by alice]
    tailor-store consent --user u000042 --opt-out | --opt-in
    tailor-store export --out events.parquet

The store is ``$TAILOR_EVENTS_URL`` or the SQLite file ``events/events.db`` (``--url`` picks
another). A running service sees a forget or a consent change on its next request; every later
`make train` / `make prepare` leaves a forgotten shopper out, even when raw files hold them.
"""

from __future__ import annotations

import argparse
import getpass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from features.event_store import EventStore, store_url
from features.infra import add_traceback_arg, atomic_path, command

EXPORT_COLUMNS = ("user_id", "item_id", "event", "timestamp", "event_id", "request_id",
                  "received_at")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tailor-store",
                                     description="Forget a shopper, set their consent, or "
                                                 "export the stored events.")
    parser.add_argument("--url", help="the store's SQLAlchemy URL (default: $TAILOR_EVENTS_URL, "
                                      "else sqlite:///events/events.db)")
    commands = parser.add_subparsers(dest="command", required=True)
    forget = commands.add_parser("forget", help="delete a shopper's events, record it (hashed "
                                                "id, time, who); training leaves them out")
    forget.add_argument("--user", required=True, help="the shopper's user id")
    forget.add_argument("--by", default=getpass.getuser(), help="who asks (default: you)")
    consent = commands.add_parser("consent", help="opt a shopper out of personalization and "
                                                  "event collection, or back in")
    consent.add_argument("--user", required=True, help="the shopper's user id")
    choice = consent.add_mutually_exclusive_group(required=True)
    choice.add_argument("--opt-out", action="store_true", help="no personalization, no events")
    choice.add_argument("--opt-in", action="store_true", help="back to normal")
    export = commands.add_parser("export", help="every stored event as Parquet, in the canonical "
                                                "columns plus event_id, request_id, received_at")
    export.add_argument("--out", default="events.parquet", help="Parquet file to write "
                                                                "(default: %(default)s)")
    for each in (parser, forget, consent, export):   # before or after the command
        add_traceback_arg(each)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    store = EventStore(store_url(args.url), create=args.command != "export")
    try:
        if args.command == "forget":
            deleted = store.forget(args.user, by=args.by)
            print(f"forgot {args.user}: {deleted:,} events deleted from {store.safe_url}; "
                  "recorded in the audit; later training leaves them out")
        elif args.command == "consent":
            store.set_consent(args.user, personalized=args.opt_in)
            print(f"{args.user}: {'personalized' if args.opt_in else 'opted out'}")
        else:
            frame = store.since()[list(EXPORT_COLUMNS)]
            out = Path(args.out)
            with atomic_path(out) as tmp:
                pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), tmp)
            print(f"exported {len(frame):,} events from {store.safe_url} to {out}")
    finally:
        store.close()
    return 0


cli = command(main)  # `tailor-store` (pyproject.toml [project.scripts])

if __name__ == "__main__":
    cli()
