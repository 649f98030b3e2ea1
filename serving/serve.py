"""`make serve` / `tailor-serve`: check the model, then become ``bentoml serve
serving.service:Tailor`` on HOST:PORT (every other flag goes to ``bentoml serve``).

    tailor-serve [--model champion] [--host 127.0.0.1] [--port 3000] [bentoml serve flags]

The check comes first because a BentoML worker that cannot load its model is restarted forever,
so a mistyped MODEL would otherwise loop on tracebacks instead of failing: one line and exit 2
when the reference names no bundle, or when HOST is not loopback and no API key is configured
(serving/auth.py). Light on purpose (MLflow only, no torch), so the check costs a few seconds at
most; the process is then replaced by BentoML's (``exec``), so signals reach the server as before.
"""

from __future__ import annotations

import argparse
import os

from features.infra import TailorError, add_traceback_arg, command
from models.registry import resolve_model
from serving.auth import is_loopback, load_keys
from serving.process import serve_command


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tailor-serve", allow_abbrev=False,  # an abbreviation would hide a BentoML flag
        description="Serve a registered model over HTTP with BentoML, after checking that it "
                    "exists.",
        epilog="Any other flag goes to `bentoml serve` (bentoml serve --help lists them).")
    parser.add_argument("--model", default="champion", metavar="REF",
                        help="an alias of the registered model (champion, candidate), a version "
                             "number, an MLflow run id or a bundle folder (default: %(default)s)")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to listen on; another than loopback needs API keys "
                             "(make api-key) (default: %(default)s)")
    parser.add_argument("--port", type=int, default=3000, help="HTTP port (default: %(default)s)")
    add_traceback_arg(parser)
    return parser


def check(ref: str, host: str) -> None:
    """Refuse a ``ref`` that names no bundle, or a non-loopback ``host`` without API keys."""
    if not is_loopback(host) and not load_keys():
        raise TailorError(f"HOST={host} would serve other machines without API keys; make one "
                          "first (make api-key NAME=... ROLE=read|write|admin) or keep HOST on "
                          "loopback")
    print(f"model     {ref}: {resolve_model(ref)}", flush=True)


def main(argv: list[str] | None = None) -> int:
    args, bentoml_flags = build_parser().parse_known_args(argv)
    check(args.model, args.host)
    cmd, env = serve_command(args.model, args.host, args.port, *bentoml_flags)
    os.execve(cmd[0], cmd, env)
    return 0  # not reached: execve replaced this process


cli = command(main)  # `tailor-serve` (pyproject.toml [project.scripts])

if __name__ == "__main__":
    cli()
