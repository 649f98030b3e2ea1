"""Experiment files (features/experiments.py): checks with file, line and field, and a
deterministic, sticky assignment that follows the shares."""

from __future__ import annotations

from collections import Counter
from dataclasses import replace
from pathlib import Path

import pytest

from features.experiments import Variant, check_overlaps, load_experiment
from features.infra import DataError

GOOD = """\
[experiment]
name = "exp-1"
start = 2026-12-01T00:00:00Z
end = 2027-01-01T00:00:00Z

[[variant]]
name = "control"
kind = "control"
share = 0.2

[[variant]]
name = "popular"
kind = "popular"
share = 0.3

[[variant]]
name = "champion"
kind = "model"
model = "champion"
share = 0.5
"""


def write(tmp_path: Path, text: str, name: str = "exp.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_a_good_file_and_its_assignment(tmp_path: Path) -> None:
    experiment = load_experiment(write(tmp_path, GOOD))
    assert experiment.endpoint == "recommend" and len(experiment.variants) == 3
    assert experiment.variants[2] == Variant("champion", "model", 0.5, "champion")
    users = [f"u{n}" for n in range(20_000)]
    counts = Counter(experiment.assign(u).name for u in users)
    for variant in experiment.variants:
        assert counts[variant.name] / len(users) == pytest.approx(variant.share, abs=0.015)
    # the same answer every time, and another experiment splits independently
    assert [experiment.assign(u).name for u in users[:50]] == \
        [experiment.assign(u).name for u in users[:50]]
    other = replace(experiment, name="exp-2")
    assert [other.assign(u).name for u in users[:200]] != \
        [experiment.assign(u).name for u in users[:200]]


@pytest.mark.parametrize(("change", "message", "column"), [
    (("share = 0.5\n", "share = 0.6\n"), "sum to 1.1", "share"),
    (('kind = "popular"', 'kind = "magic"'), "kind must be one of", "kind"),
    (('model = "champion"\n', ""), "names its model", "model"),
    (('name = "exp-1"', 'name = "exp 1!"'), "name:", "name"),
    (("end = 2027-01-01T00:00:00Z", "end = 2026-11-01T00:00:00Z"), "end must come after",
     "end"),
    (('kind = "control"\n', 'kind = "control"\ncolour = "red"\n'), "no such field", "colour"),
])
def test_mistakes_name_file_line_and_field(tmp_path: Path, change: tuple[str, str],
                                           message: str, column: str) -> None:
    path = write(tmp_path, GOOD.replace(*change, 1))
    with pytest.raises(DataError) as err:
        load_experiment(path)
    said = str(err.value)
    assert message in said and str(path) in said and column in said and "row " in said


def test_also_bought_takes_control_and_model_variants_only(tmp_path: Path) -> None:
    text = GOOD.replace('start =', 'endpoint = "also_bought"\nstart =')
    with pytest.raises(DataError, match="/also_bought experiments take"):
        load_experiment(write(tmp_path, text))


def test_overlapping_experiments_on_one_endpoint_are_refused(tmp_path: Path) -> None:
    a = load_experiment(write(tmp_path, GOOD, "a.toml"))
    b = load_experiment(write(tmp_path, GOOD.replace('"exp-1"', '"exp-2"'), "b.toml"))
    with pytest.raises(DataError, match="overlap on /recommend"):
        check_overlaps([a, b])
    later = load_experiment(write(tmp_path, GOOD.replace('"exp-1"', '"exp-3"').replace(
        "start = 2026-12-01", "start = 2027-01-01").replace("end = 2027-01-01",
                                                            "end = 2027-02-01"), "c.toml"))
    check_overlaps([a, later])   # one after the other: fine
    with pytest.raises(DataError, match="two experiments are named"):
        check_overlaps([a, a])
