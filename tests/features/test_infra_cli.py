"""`features.infra.run_cli` and what every entry point gets from it: one-line errors unless
``--traceback`` / ``TAILOR_DEBUG=1``, phase lines on stderr, no progress bars off a terminal."""

from __future__ import annotations

import argparse
import logging
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from features import infra
from features.infra import (
    DEBUG_ENV,
    MLFLOW_PROGRESS_ENV,
    PHASE_LOGGER,
    DataError,
    TailorError,
    add_traceback_arg,
    phase,
    run_cli,
)

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("features", "models", "training", "serving", "benchmarks")
# Entry points that are no command a person types, each with why it has no run_cli of its own.
NOT_RUN_CLI = {
    # torchrun minus its traceback: every rank runs `training.train`, which has run_cli
    "training/distributed.py",
}
NO_TRACEBACK_FLAG: set[str] = set()


@pytest.fixture(autouse=True)
def restored(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """run_cli and --traceback set process-wide state: put it back after each test."""
    for name in (DEBUG_ENV, MLFLOW_PROGRESS_ENV):
        monkeypatch.setenv(name, "")   # recorded first, so undone even when the test sets it
        monkeypatch.delenv(name)
    log = logging.getLogger(PHASE_LOGGER)
    handlers, propagate, level = list(log.handlers), log.propagate, log.level
    yield
    log.handlers[:], log.propagate = handlers, propagate
    log.setLevel(level)


def entry_points() -> list[Path]:
    return sorted(p for package in PACKAGES for p in (ROOT / package).rglob("*.py")
                  if 'if __name__ == "__main__":' in p.read_text())


def failing_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    add_traceback_arg(parser)
    parser.parse_args(argv)
    raise DataError("no such column", path="shop.csv", row=3, column="event")


def test_every_entry_point_goes_through_run_cli_and_takes_traceback() -> None:
    found = {str(p.relative_to(ROOT)): p.read_text() for p in entry_points()}
    assert "training/train.py" in found and "serving/batch.py" in found
    for name, text in found.items():
        if name in NOT_RUN_CLI:
            continue
        # run_cli itself, or the console command's `cli = command(main)` (which runs run_cli)
        assert re.search(r'__name__ == "__main__":\n\s+run_cli\(main\)', text) or (
            re.search(r'__name__ == "__main__":\n\s+cli\(\)', text)
            and "cli = command(main)" in text), name
        if name not in NO_TRACEBACK_FLAG:
            assert "add_traceback_arg(" in text, name


def test_an_error_is_one_line_and_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as done:
        run_cli(lambda: failing_main([]))
    assert done.value.code == 2
    err = capsys.readouterr().err
    assert err == "error: shop.csv, row 3, column 'event': no such column\n"


@pytest.mark.parametrize("how", ["flag", "env"])
def test_traceback_flag_or_env_keeps_the_traceback(how: str,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    if how == "env":
        monkeypatch.setenv(DEBUG_ENV, "1")
    with pytest.raises(DataError, match="no such column"):
        run_cli(lambda: failing_main(["--traceback"] if how == "flag" else []))
    if how == "flag":   # what the processes it starts inherit
        assert infra.debugging()


def test_train_documents_and_honours_traceback(tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    import training.train as train

    help_text = " ".join(train.build_parser().format_help().split())
    assert "--traceback show the full traceback" in help_text and DEBUG_ENV in help_text
    with pytest.raises(TailorError, match="nonexistent.csv"):
        run_cli(lambda: train.main(["--traceback", "--data",
                                    f"events:{tmp_path}/nonexistent.csv"]))


def test_phases_print_start_and_end_lines_on_stderr(capsys: pytest.CaptureFixture[str]) -> None:
    def main() -> int:
        with phase("evaluate", "6 methods on 347 test shoppers"):
            print("table")
        return 0

    with pytest.raises(SystemExit) as done:
        run_cli(main)
    assert done.value.code == 0
    out, err = capsys.readouterr()
    assert out == "table\n"
    start, end = err.splitlines()
    assert start == "evaluate  6 methods on 347 test shoppers ..."
    assert re.fullmatch(r"evaluate  6 methods on 347 test shoppers: done in \d+\.\d s", end)


def test_off_a_terminal_mlflow_draws_no_progress_bars(monkeypatch: pytest.MonkeyPatch) -> None:
    from mlflow.environment_variables import MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR

    with pytest.raises(SystemExit):   # pytest's stderr is no terminal
        run_cli(lambda: 0)
    assert MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR.get() is False
    monkeypatch.setenv(MLFLOW_PROGRESS_ENV, "true")   # the user's own setting wins
    with pytest.raises(SystemExit):
        run_cli(lambda: 0)
    assert MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR.get() is True
