"""What every Tailor package shares and nothing else owns: the user-facing error, the command-line
runner that turns it into one line and exit code 2, writes that replace a file or folder only
once complete, and the cache root."""

from __future__ import annotations

import os
import shutil
import sys
import tomllib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

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


def run_cli(main: Callable[[], int]) -> None:
    """Run ``main``; a user's mistake becomes one line on stderr and exit code 2, never a
    traceback; Ctrl-C exits 130. With ``TAILOR_DEBUG=1`` errors keep their full traceback (a
    ValueError from inside numpy or torch looks like a user's mistake otherwise)."""
    if os.environ.get(DEBUG_ENV, "").strip().lower() in ("1", "true", "yes"):
        sys.exit(main())
    try:
        code = main()
    except TailorError as exc:
        print(f"error: {exc}", file=sys.stderr)
        code = 2
    except (FileNotFoundError, PermissionError, IsADirectoryError) as exc:
        print(f"error: {exc.strerror or exc}: {exc.filename}", file=sys.stderr)
        code = 2
    except ValueError as exc:  # settings that fail a dataclass check
        print(f"error: {exc}", file=sys.stderr)
        code = 2
    except KeyboardInterrupt:
        code = 130
    sys.exit(code)


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


def cache_root() -> Path:
    """Where processed data and downloaded models are cached: ``$TAILOR_CACHE``, else
    ``.cache/tailor`` in the project root (wherever the command runs from)."""
    return Path(os.environ.get("TAILOR_CACHE") or ROOT / ".cache" / "tailor")
