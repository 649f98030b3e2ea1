"""py-spy for the serving benchmark: where the server's busy samples go."""

from __future__ import annotations

import math
import shutil
import sys
from collections import Counter
from pathlib import Path
from typing import Any


def py_spy() -> str | None:
    found = Path(sys.executable).parent / "py-spy"
    return str(found) if found.is_file() else shutil.which("py-spy")


IDLE = ("select", "poll", "wait", "sleep", "acquire", "_wait_for_tstate_lock", "accept")
PROJECT = ("serving/", "models/", "features/", "training/")


def summarize_profile(text: str, top: int = 12) -> dict[str, Any]:
    """Where the worker's busy samples go.

    ``text``: py-spy's raw (collapsed) format, ``frame;frame;...;leaf count`` per line, frames
    as ``function (file:line)``. Samples whose leaf is a wait (select, Condition.wait, ...) are
    idle threads and left out of the shares. ``self``: the function running; ``project``:
    Tailor's own functions (serving/, models/, features/) anywhere on the stack."""
    self_counts: Counter[str] = Counter()
    project_counts: Counter[str] = Counter()
    samples = idle = in_project = 0
    for line in text.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        frames = [f for f in (_frame(f) for f in stack.split(";")) if f]
        if not frames:
            continue
        samples += n
        if frames[-1].split(" (")[0].rsplit(".", 1)[-1] in IDLE:
            idle += n
            continue
        self_counts[frames[-1]] += n
        mine = {f for f in frames if f.partition(" (")[2].startswith(PROJECT)}
        in_project += n if mine else 0
        for frame in mine:
            project_counts[frame] += n
    busy = samples - idle

    def rows(counts: Counter[str]) -> list[dict[str, Any]]:
        return [{"function": name, "share": n / busy, "samples": n}
                for name, n in counts.most_common(top)] if busy else []

    return {"samples": samples, "busy": busy,
            "project_share": in_project / busy if busy else math.nan,
            "self": rows(self_counts), "project": rows(project_counts)}


def _frame(frame: str) -> str:
    """``fn (path/to/module.py:12)`` -> ``fn (path/to/module.py)``; process / thread frames
    dropped."""
    frame = frame.strip()
    if not frame or frame.startswith(("process ", "thread ")):
        return ""
    name, _, where = frame.partition(" (")
    if not where:
        return name
    path = where.rstrip(")").rsplit(":", 1)[0]
    if "site-packages/" in path:
        path = path.split("site-packages/", 1)[1]
    return f"{name} ({path})"
