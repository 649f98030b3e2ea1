"""Segments over the tiny bundle (serving/segments.py): `make segments` writes the table, the
profiles and the picture and logs them to MLflow; /segments answers one shopper, session
included, the same way."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from features.infra import DataError
from serving.api import SegmentRequest
from serving.engine import Engine
from serving.segments import (
    SegmentConfig,
    Segmenter,
    main,
    segmenter_for_service,
    shopper_segments,
)
from tests.helpers import isolated_store

RULES = """
[[segment]]
name = "first-time visitor"
rule = "first_time"

[[segment]]
name = "returning"
rule = "returning"

[[segment]]
name = "cart abandoner"
rule = "cart_abandoner"
days = 3

[[segment]]
name = "printer people"
rule = "category_affinity"
category = "printers"
min_share = 0.2
"""


@pytest.fixture(scope="module")
def rules_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("segments") / "segments.toml"
    path.write_text(RULES)
    return path


@pytest.fixture(scope="module")
def segmenter(engine: Engine, rules_file: Path) -> Segmenter:
    return Segmenter(engine, SegmentConfig(rules=str(rules_file), learned=4))


def test_every_stored_shopper_has_one_learned_segment(segmenter: Segmenter) -> None:
    table = segmenter.table()
    stored = segmenter.engine.bundle.histories
    learned = table[table["kind"] == "learned"]
    assert len(learned) == len(stored) and learned["user_id"].is_unique
    assert set(learned["segment"]) == {f"learned-{s}" for s in range(4)}
    rules = table[table["kind"] == "rule"]
    assert (rules["segment"] == "returning").sum() == len(stored)
    assert "first-time visitor" not in set(rules["segment"])   # stored shoppers have a history
    assert 0 < (rules["segment"] == "printer people").sum() < len(stored)
    assert sum(p["shoppers"] for p in segmenter.profiles) == len(stored)


def test_the_answer_for_a_stored_shopper_matches_the_table(segmenter: Segmenter) -> None:
    table = segmenter.table()
    for user in segmenter.engine.bundle.histories.user_ids[:25]:
        answer = shopper_segments(segmenter, SegmentRequest(user_id=user))
        expected = set(table.loc[table["user_id"] == user, "segment"])
        assert {s.name for s in answer.segments} == expected, user


def test_a_session_cart_makes_a_new_visitor_an_abandoner(segmenter: Segmenter) -> None:
    engine = segmenter.engine
    alone = shopper_segments(segmenter, SegmentRequest(user_id="someone-new"))
    assert [s.name for s in alone.segments] == ["first-time visitor"]
    printer = engine.ids[int(np.flatnonzero(engine.categories == "printers")[0])]
    carted = shopper_segments(segmenter, SegmentRequest(
        user_id="someone-new", recent_events=[{"item_id": printer, "event": "addtocart"}]))
    names = [s.name for s in carted.segments]
    assert names[:3] == ["returning", "cart abandoner", "printer people"]
    assert carted.segments[-1].kind == "learned" and carted.segments[-1].rule.startswith("mostly")


def test_a_rule_on_an_unknown_category_stops_the_start(engine: Engine, tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text('[[segment]]\nname = "pets"\nrule = "category_affinity"\ncategory = "pets"\n')
    with pytest.raises(DataError) as err:
        Segmenter(engine, SegmentConfig(rules=str(path)))
    assert str(path) in str(err.value) and "row 1" in str(err.value) and "'pets'" in str(err.value)


def test_make_segments_writes_the_table_profiles_picture_and_logs_them(
        bundle_dir: Path, rules_file: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    with isolated_store(tmp_path):
        assert main(["--model", str(bundle_dir), "--out", str(out), "--rules", str(rules_file),
                     "--learned", "3"]) == 0
        client = MlflowClient()
        exp = client.get_experiment_by_name("tailor-segments")
        (run,) = client.search_runs([exp.experiment_id])
        artifacts = {a.path for a in client.list_artifacts(run.info.run_id, "segments")}
    table = pd.read_parquet(out / "shopper_segments.parquet")
    assert set(table.columns) == {"user_id", "segment", "kind"}
    assert len(pd.read_csv(out / "shopper_segments.csv")) == len(table)
    profiles = json.loads((out / "profiles.json").read_text())
    assert [p["name"] for p in profiles["rules"]][:2] == ["first-time visitor", "returning"]
    assert len(profiles["learned"]) == 3 and profiles["learned"][0]["top_categories"]
    assert (out / "segments.png").stat().st_size > 10_000
    assert run.data.metrics["segment/returning/shoppers"] == profiles["shoppers"]
    assert "segments/segments.png" in artifacts


def test_the_service_reads_tailor_segments_or_the_projects_file(
        engine: Engine, rules_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TAILOR_SEGMENTS", raising=False)
    assert "frequent buyer" in [r.name for r in segmenter_for_service(engine).rules]
    monkeypatch.setenv("TAILOR_SEGMENTS", str(rules_file))
    assert "printer people" in [r.name for r in segmenter_for_service(engine).rules]
    monkeypatch.setenv("TAILOR_SEGMENTS", str(tmp_path / "missing.toml"))
    with pytest.raises(DataError, match="cannot read the segments file"):
        segmenter_for_service(engine)
