"""`make prepare` end to end: clean one-line errors, skip reports and the Parquet cache."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from features.config import FeatureConfig
from features.infra import DataError
from features.pipeline import prepare
from features.spec import parse_spec

ROOT = Path(__file__).resolve().parents[2]


def run_prepare(*args: str, cache: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "TAILOR_CACHE": str(cache)}
    return subprocess.run([sys.executable, "-m", "features.prepare", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)


def shop_csv(path: Path, bad_line: str | None = None) -> Path:
    """Twelve days of a tiny shop; ``bad_line`` is inserted as data row 3 (file line 4)."""
    rows = []
    for day in range(1, 13):
        for user in range(4):
            rows.append(f"u{user},i{(user + day) % 5},view,2024-01-{day:02d}T10:00:00Z")
            rows.append(f"u{user},i{(user + day) % 5},buy,2024-01-{day:02d}T10:05:00Z")
    if bad_line is not None:
        rows.insert(2, bad_line)
    path.write_text("user_id,item_id,event,timestamp\n" + "\n".join(rows) + "\n")
    return path


@pytest.mark.parametrize("bad_line, expected", [
    (None, "file not found"),
    ("u9,i1,teleport,2024-01-01T00:00:00Z", "row 4, column 'event'"),
    ("u9,i1,view,yesterday", "row 4, column 'timestamp'"),
    (",i1,view,2024-01-01T00:00:00Z", "row 4, column 'user_id'"),
])
def test_bad_input_is_one_line_and_exit_2(tmp_path: Path, bad_line: str | None,
                                          expected: str) -> None:
    path = tmp_path / "events.csv"
    if bad_line is not None:
        shop_csv(path, bad_line)
    done = run_prepare("--data", f"events:{path}", cache=tmp_path / "cache")
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), done.stderr
    assert expected in lines[0]
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "cache").exists()  # nothing written when validation fails


def test_missing_column_and_empty_file(tmp_path: Path) -> None:
    no_event = tmp_path / "no_event.csv"
    no_event.write_text("user_id,item_id,timestamp\nu1,i1,2024-01-01\n")
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    for path, expected in [(no_event, "event"), (empty, "empty")]:
        done = run_prepare("--data", f"events:{path}", cache=tmp_path / "cache")
        assert done.returncode == 2 and "Traceback" not in done.stderr
        assert expected in done.stderr and str(path.name) in done.stderr


def test_skip_mode_reports_and_continues(tmp_path: Path) -> None:
    path = shop_csv(tmp_path / "events.csv", "u9,i1,teleport,2024-01-01T00:00:00Z")
    done = run_prepare("--data", f"events:{path}", "--on-bad-rows", "skip",
                       "--event-map", "buy=purchase", cache=tmp_path / "cache")
    assert done.returncode == 0, done.stderr
    assert "skipped 1" in done.stdout and "event" in done.stdout
    assert "shoppers    4" in done.stdout  # u9's only row was the bad one


def test_help_documents_every_option() -> None:
    done = subprocess.run([sys.executable, "-m", "features.prepare", "--help"], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0
    for flag in ("--data", "--on-bad-rows", "--event-map", "--user-col", "--no-cache"):
        assert flag in done.stdout


def test_cache_is_keyed_by_data_and_settings(tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TAILOR_CACHE", str(tmp_path / "cache"))
    path = shop_csv(tmp_path / "events.csv")
    spec = parse_spec(f"events:{path}?map=buy=purchase")
    first = prepare(spec)
    again = prepare(spec)
    assert first.meta["cache"] == "miss" and again.meta["cache"] == "hit"
    pd.testing.assert_frame_equal(first.events.reset_index(drop=True),
                                  again.events.reset_index(drop=True))
    pd.testing.assert_frame_equal(first.targets.reset_index(drop=True),
                                  again.targets.reset_index(drop=True))
    assert list(first.item_vocab.ids) == list(again.item_vocab.ids)

    other = prepare(spec, FeatureConfig(test_days=3))
    assert other.meta["cache"] == "miss" and other.split.test_days == 3
    assert len(list((tmp_path / "cache").iterdir())) == 2

    shop_csv(path, "u7,i2,view,2024-01-05T00:00:00Z")  # new content, same path
    assert prepare(spec).meta["cache"] == "miss"


def test_failed_read_keeps_the_existing_cache(tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TAILOR_CACHE", str(tmp_path / "cache"))
    path = shop_csv(tmp_path / "events.csv")
    spec = parse_spec(f"events:{path}?map=buy=purchase")
    prepare(spec)
    before = sorted(p.name for p in (tmp_path / "cache").iterdir())
    shop_csv(path, "u9,i1,teleport,2024-01-01T00:00:00Z")
    with pytest.raises(DataError, match="row 4"):
        prepare(spec)
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == before


def test_a_new_generator_version_is_new_data(monkeypatch: pytest.MonkeyPatch) -> None:
    """The embedded shop's generator version is part of its fingerprint, so a changed generator
    never reads an old cache (nor compares as the same data in promotion)."""
    from features import synthetic
    from features.pipeline import fingerprint

    spec = parse_spec("synthetic")
    before = fingerprint(spec)
    monkeypatch.setattr(synthetic, "VERSION", synthetic.VERSION + "-next")
    assert fingerprint(spec) != before
