"""`python -m serving.model_check REF [HOST]`: one line and exit 2 when REF names no bundle, or
when HOST is not loopback and no API key is configured (serving/auth.py).

`make serve` runs it first: a BentoML worker that cannot load its model is restarted forever,
so a mistyped MODEL would otherwise loop on tracebacks instead of failing. Light on purpose
(MLflow only, no torch), so the check costs a few seconds at most.
"""

from __future__ import annotations

import sys

from features.infra import TailorError, run_cli
from models.registry import resolve_model
from serving.auth import is_loopback, load_keys


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    ref = args[0] if args else "champion"
    host = args[1] if len(args) > 1 else "127.0.0.1"
    if not is_loopback(host) and not load_keys():
        raise TailorError(f"HOST={host} would serve other machines without API keys; make one "
                          "first (make api-key NAME=... ROLE=read|write|admin) or keep HOST on "
                          "loopback")
    print(f"model     {ref}: {resolve_model(ref)}")
    return 0


if __name__ == "__main__":
    run_cli(main)
