"""`make campaign` (serving/campaign.py): a segment's shoppers with the lists /recommend gives
them, streamed in chunks to Parquet and CSV."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pandas as pd
import pytest

from features.infra import DataError
from serving.api import RecommendRequest
from serving.campaign import CampaignConfig, export, main, members
from serving.engine import Engine, load_engine
from serving.recommend import recommend
from serving.segments import SegmentConfig, Segmenter
from tests.serving.test_segments import RULES


@pytest.fixture(scope="module")
def segmenter(engine: Engine, tmp_path_factory: pytest.TempPathFactory) -> Segmenter:
    path = tmp_path_factory.mktemp("campaign") / "segments.toml"
    path.write_text(RULES)
    return Segmenter(engine, SegmentConfig(rules=str(path), learned=3))


def test_each_shopper_gets_what_recommend_gives_them(engine: Engine, segmenter: Segmenter,
                                                     tmp_path: Path) -> None:
    cfg = CampaignConfig(segment="printer people", k=5, chunk_users=7)   # many small chunks
    summary = export(engine, segmenter, cfg, tmp_path / "out", progress=False)
    table = pd.read_parquet(tmp_path / "out" / "campaign.parquet")
    csv = pd.read_csv(tmp_path / "out" / "campaign.csv", dtype={"user_id": str, "item_id": str})
    assert len(table) == len(csv) == summary["rows"] and summary["shoppers"] > 7
    assert table["user_id"].nunique() == summary["shoppers"]
    assert (table["segment"] == "printer people").all()
    assert list(csv["item_id"]) == list(table["item_id"])
    for user in table["user_id"].unique()[:10]:
        mine = table[table["user_id"] == user].sort_values("rank")
        served = recommend(engine, RecommendRequest(user_id=user, k=5))
        assert list(mine["item_id"]) == [i.item_id for i in served.items], user
        assert list(mine["title"]) == [i.title for i in served.items]
        # each item's reason is /recommend's because
        assert list(mine["because"]) == [i.because.kind for i in served.items]
        assert [x if isinstance(x, str) else None for x in mine["because_item_id"]] == \
            [i.because.item_id for i in served.items]
    assert table["because"].isin(["viewed", "carted", "bought", "similar_to", "model"]).all()
    named = table.dropna(subset=["because_item_id"])
    assert len(named) and named["because_title"].notna().all()
    # chunking changes nothing
    export(engine, segmenter, replace(cfg, chunk_users=10_000), tmp_path / "one", progress=False)
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "one" / "campaign.parquet"), table)


def test_the_rules_file_applies_as_in_the_service(bundle_dir: Path, engine: Engine,
                                                 tmp_path: Path) -> None:
    promoted = str(engine.ids[int(engine.popular_rows[-1])])   # the least popular item
    rules = tmp_path / "rules.toml"
    rules.write_text(f'[[pin]]\nitem_id = "{promoted}"\nslot = 2\n')
    ruled = load_engine(str(bundle_dir), rules=rules)
    path = tmp_path / "segments.toml"
    path.write_text(RULES)
    cfg = CampaignConfig(segment="printer people", k=4, explain=False)
    export(ruled, Segmenter(ruled, SegmentConfig(rules=str(path), learned=0)), cfg,
           tmp_path / "out", progress=False)
    table = pd.read_parquet(tmp_path / "out" / "campaign.parquet")
    second = table[table["rank"] == 2]
    assert len(second) and (second["item_id"] == promoted).mean() > 0.9   # unless bought
    assert table["because"].isna().all()     # explain off: no reasons computed


def test_a_learned_segment_exports_its_shoppers(engine: Engine, segmenter: Segmenter) -> None:
    positions = members(segmenter, "learned-1")
    assert len(positions) == int((segmenter.assignment == 1).sum()) > 0


def test_unknown_and_empty_segments_are_errors(engine: Engine, segmenter: Segmenter,
                                               tmp_path: Path) -> None:
    with pytest.raises(DataError, match="unknown segment .*learned-2.*: 'vips'"):
        members(segmenter, "vips")
    with pytest.raises(DataError, match="no stored shopper is in this segment"):
        members(segmenter, "first-time visitor")
    assert not (tmp_path / "out").exists()


def test_make_campaign_command(bundle_dir: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "campaign"
    assert main(["--model", str(bundle_dir), "--segment", "frequent buyer", "--k", "3",
                 "--out", str(out), "--no-progress"]) == 0
    table = pd.read_csv(out / "campaign.csv")
    assert table["rank"].max() == 3 and "frequent buyer" in capsys.readouterr().out
