"""`python -m serving.model_check REF`: one line and exit 2 when REF names no bundle.

`make serve` runs it first: a BentoML worker that cannot load its model is restarted forever,
so a mistyped MODEL would otherwise loop on tracebacks instead of failing. Light on purpose
(MLflow only, no torch), so the check costs a few seconds at most.
"""

from __future__ import annotations

import sys

from features.infra import run_cli
from models.registry import resolve_model


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    ref = args[0] if args else "champion"
    print(f"model     {ref}: {resolve_model(ref)}")
    return 0


if __name__ == "__main__":
    run_cli(main)
