"""What every Tailor package shares and nothing else owns: the user-facing error, the command-line
runner that turns it into one line and exit code 2 (``--traceback`` keeps the traceback), the
start / end lines of long steps, writes that replace a file or folder only once complete, the
cache root and the checkout's git commit."""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import subprocess
import sys
import time
import tomllib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TextIO

ROOT = Path(__file__).resolve().parent.parent


class TailorError(ValueError):
    """A problem a user can fix (a setting, a port, a model reference, a file). ``str()`` is one
    line naming what is wrong and where: file, row, field and value when they are known."""

    def __init__(self, message: str, *, path: str | None = None, row: int | None = None,
                 column: str | None = None, value: object = None) -> None:
        self.path, self.row, self.column, self.value = path, row, column, value
        where = []
        if path is not None:
            where.append(str(path))
        if row is not None:
            where.append(f"row {row}")
        if column is not None:
            where.append(f"column '{column}'")
        prefix = ", ".join(where)
        shown = "" if value is None else f": {value!r}"
        super().__init__(f"{prefix}: {message}{shown}" if prefix else f"{message}{shown}")


class DataError(TailorError):
    """Bad input data: a file, row, column or value that readers and validation refuse."""


DEBUG_ENV = "TAILOR_DEBUG"
TRACEBACK_FLAG = "--traceback"
# MLflow draws its own tqdm bars (artifact downloads while logging a model): a log file would
# get one carriage-return-separated line per refresh.
MLFLOW_PROGRESS_ENV = "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"
PHASE_LOGGER = "tailor.phase"


def debugging() -> bool:
    """``TAILOR_DEBUG=1`` (or ``--traceback``, which sets it): errors keep their traceback."""
    return os.environ.get(DEBUG_ENV, "").strip().lower() in ("1", "true", "yes")


class _Traceback(argparse.Action):
    """``--traceback``: the same as ``TAILOR_DEBUG=1``. It sets the variable rather than a flag
    of its own, so ``run_cli`` sees it and so do the processes this one starts (the benchmarks'
    training runs, torchrun's ranks, the demo's server)."""

    def __init__(self, option_strings: list[str], dest: str, **kwargs: object) -> None:
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS,
                         help="show the full traceback of an error instead of one line (the "
                              f"same as {DEBUG_ENV}=1; for a report of what looks like a bug)")

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: object, option_string: str | None = None) -> None:
        os.environ[DEBUG_ENV] = "1"


def add_traceback_arg(parser: argparse.ArgumentParser) -> None:
    """``--traceback`` on a command-line parser (every entry point run by ``run_cli`` has it)."""
    parser.add_argument(TRACEBACK_FLAG, action=_Traceback)


def run_cli(main: Callable[[], int]) -> None:
    """Run ``main``; a user's mistake becomes one line on stderr and exit code 2, never a
    traceback; Ctrl-C exits 130. With ``TAILOR_DEBUG=1`` or ``--traceback`` errors keep their
    full traceback (a ValueError from inside numpy or torch looks like a user's mistake
    otherwise). Long steps' start / end lines (``phase``) go to stderr; progress bars only to a
    terminal."""
    if not sys.stderr.isatty():
        os.environ.setdefault(MLFLOW_PROGRESS_ENV, "false")   # a setting of the user's wins
    _show_phases()
    try:
        code = main()
    except KeyboardInterrupt:
        if debugging():
            raise
        code = 130
    except (TailorError, FileNotFoundError, PermissionError, IsADirectoryError,
            ValueError) as exc:
        # Asked at the error, not before main: --traceback is only parsed inside it.
        if debugging():
            raise
        if isinstance(exc, OSError):
            print(f"error: {exc.strerror or exc}: {exc.filename}", file=sys.stderr)
        else:   # a TailorError, or a ValueError of settings that fail a dataclass check
            print(f"error: {exc}", file=sys.stderr)
        code = 2
    sys.exit(code)


class _Stderr(logging.StreamHandler):
    """A handler writing to whatever ``sys.stderr`` is when a line is logged (tests and
    ``contextlib.redirect_stderr`` replace it after the handler exists)."""

    @property
    def stream(self) -> TextIO:  # type: ignore[override]
        return sys.stderr

    @stream.setter
    def stream(self, _value: object) -> None:
        pass


def _show_phases() -> None:
    """Phase lines on stderr, bare like the commands' other status lines (once per process)."""
    log = logging.getLogger(PHASE_LOGGER)
    log.setLevel(logging.INFO)
    if not any(isinstance(h, _Stderr) for h in log.handlers):
        handler = _Stderr()
        handler.setFormatter(logging.Formatter("%(message)s"))
        log.addHandler(handler)
        log.propagate = False   # a root handler (some libraries add one) must not print them twice


@contextmanager
def phase(label: str, what: str) -> Iterator[None]:
    """A start line and an end line with the wall time around a step that is long and says
    nothing meanwhile (evaluation, tuning, batch ranking), so a log shows what is running and
    what took the time. Logged (``tailor.phase``, INFO): a command run by ``run_cli`` shows them
    on stderr; a library user sees them only when it sets up logging."""
    log = logging.getLogger(PHASE_LOGGER)
    log.info("%-9s %s ...", label, what)
    started = time.perf_counter()
    yield
    log.info("%-9s %s: done in %.1f s", label, what, time.perf_counter() - started)


def command(main: Callable[[], int]) -> Callable[[], None]:
    """``main`` as a command without arguments: what ``python -m`` and the ``tailor-*`` console
    commands (pyproject.toml, ``[project.scripts]``) run, both through ``run_cli``, so an installed
    command fails as ``make`` does (one line, exit 2) where ``main`` itself would raise."""
    def run() -> None:
        run_cli(main)

    return run


@contextmanager
def atomic_path(target: str | Path, *, keep_existing: bool = False) -> Iterator[Path]:
    """A temporary sibling of ``target`` to write (a file or a folder); it replaces ``target``
    only when the block ends without an error, so a failed or interrupted write leaves what was
    there. ``keep_existing``: when ``target`` appeared meanwhile (another process finished the
    same work first), keep theirs."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    _remove(tmp)
    try:
        yield tmp
        if keep_existing and target.exists():
            return
        if target.is_dir() and not target.is_symlink():
            shutil.rmtree(target)
        os.replace(tmp, target)
    finally:
        _remove(tmp)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def read_toml(path: str | Path, what: str) -> tuple[dict, str]:
    """A TOML file's document and text (for line numbers in later errors); a ``DataError``
    naming the file when it cannot be read or parsed (``what``: e.g. "the rules file")."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise DataError(f"cannot read {what} ({exc.strerror or exc})", path=str(path)) from exc
    try:
        return tomllib.loads(text), text
    except tomllib.TOMLDecodeError as exc:
        raise DataError(f"not valid TOML ({exc})", path=str(path)) from exc


def git_state(cwd: Path = ROOT) -> dict[str, str]:
    """Commit and dirty flag of the checkout, 'unknown' outside git (e.g. an unpacked copy):
    what a training run and a Bento record of the code that made them."""
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True,
                              timeout=10, check=True).stdout.strip()
    try:
        commit = git("rev-parse", "HEAD")
        dirty = bool(git("status", "--porcelain", "--untracked-files=no"))
    except (OSError, subprocess.SubprocessError):
        return {"git.commit": "unknown", "git.dirty": "unknown"}
    return {"git.commit": commit, "git.dirty": str(dirty).lower(),
            "mlflow.source.git.commit": commit}


def cache_root() -> Path:
    """Where processed data and downloaded models are cached: ``$TAILOR_CACHE``, else
    ``.cache/tailor`` in the project root (wherever the command runs from)."""
    return Path(os.environ.get("TAILOR_CACHE") or ROOT / ".cache" / "tailor")
