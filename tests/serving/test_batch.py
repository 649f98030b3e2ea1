"""Batch recommendations (serving/batch.py): same ranking as /recommend, CSV out, clean errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import serving.batch as batch
from features.infra import run_cli
from features.schema import EventData
from serving.api import RecommendRequest
from serving.batch import BatchConfig, batch_recommend, read_users
from serving.engine import Engine
from serving.recommend import recommend


def test_batch_ranks_like_the_endpoint(engine: Engine, synthetic_events: EventData) -> None:
    events = synthetic_events.events
    users = np.asarray(sorted(engine.known_users)[:40] + ["never-seen"], dtype=object)
    frame, summary = batch_recommend(engine, events, users, BatchConfig(k=8,
                                                                      exclude_purchased=False))
    assert summary == {"users": 41, "personal": 40, "rows": 41 * 8}
    assert list(frame.columns) == ["user_id", "item_id", "rank", "score"]
    for user in users:
        mine = frame[frame["user_id"] == user]
        assert list(mine["rank"]) == list(range(1, 9))
        served = recommend(engine, RecommendRequest(user_id=user, k=8, exclude_purchased=False))
        # the same history (the data the bundle was trained on) gives the same answer
        assert list(mine["item_id"]) == [i.item_id for i in served.items], user
        np.testing.assert_allclose(mine["score"], [i.score for i in served.items], rtol=1e-5)


def test_chunks_do_not_change_the_answer(engine: Engine, synthetic_events: EventData) -> None:
    users = np.asarray(sorted(engine.known_users)[:50], dtype=object)
    whole, _ = batch_recommend(engine, synthetic_events.events, users, BatchConfig(k=5))
    chunked, _ = batch_recommend(engine, synthetic_events.events, users,
                                 BatchConfig(k=5, chunk_users=7))
    pd.testing.assert_frame_equal(whole, chunked)


def test_exclude_seen_leaves_out_every_item_of_the_history(engine: Engine,
                                                          synthetic_events: EventData) -> None:
    events = synthetic_events.events
    users = events["user_id"].value_counts().index[:30].to_numpy(dtype=object)  # long histories
    plain, _ = batch_recommend(engine, events, users, BatchConfig(k=20))
    fresh, _ = batch_recommend(engine, events, users, BatchConfig(k=20, exclude_seen=True))
    seen = set(zip(events["user_id"], events["item_id"], strict=True))
    assert any((u, i) in seen for u, i in zip(plain["user_id"], plain["item_id"], strict=True))
    assert not any((u, i) in seen for u, i in zip(fresh["user_id"], fresh["item_id"],
                                                  strict=True))
    assert len(fresh) == 30 * 20


def test_purchases_are_left_out_by_default(engine: Engine, synthetic_events: EventData) -> None:
    events = synthetic_events.events
    buyers = events.loc[events["event"] == "purchase", "user_id"].value_counts().index[:30]
    users = buyers.to_numpy(dtype=object)
    kept, _ = batch_recommend(engine, events, users, BatchConfig(k=30, exclude_purchased=False))
    default, _ = batch_recommend(engine, events, users, BatchConfig(k=30))
    bought = events[events["event"] == "purchase"]
    bought = set(zip(bought["user_id"], bought["item_id"], strict=True))
    pairs = lambda f: set(zip(f["user_id"], f["item_id"], strict=True))
    assert pairs(kept) & bought                  # the model would recommend some of them again
    assert not pairs(default) & bought
    # Only purchases are left out: viewed items can still come back.
    viewed = set(zip(events["user_id"], events["item_id"], strict=True)) - bought
    assert pairs(default) & viewed


def test_every_shopper_of_the_data_by_default(engine: Engine, synthetic_events: EventData) -> None:
    events = synthetic_events.events
    frame, summary = batch_recommend(engine, events, None, BatchConfig(k=3))
    assert summary["users"] == events["user_id"].nunique() == frame["user_id"].nunique()
    assert len(frame) == 3 * summary["users"]
    assert engine.available[engine.bundle.item_vocab.lookup(frame["item_id"])].all()


def test_users_file(tmp_path: Path) -> None:
    path = tmp_path / "users.txt"
    path.write_text("u2\n\n u1 \nu2\n")
    assert list(read_users(path)) == ["u2", "u1"]
    path.write_text("\n\n")
    with pytest.raises(ValueError, match="no user ids"):
        read_users(path)


def test_cli_writes_the_csv(bundle_dir: Path, tmp_path: Path,
                            capsys: pytest.CaptureFixture[str]) -> None:
    users = tmp_path / "users.txt"
    users.write_text("u000001\nu000002\nnew-shopper\n")
    out = tmp_path / "out" / "recs.csv"
    assert batch.main(["--data", "synthetic", "--model", str(bundle_dir), "--k", "4",
                       "--users", str(users), "--out", str(out), "--exclude-seen"]) == 0
    frame = pd.read_csv(out, dtype={"user_id": str, "item_id": str})
    assert list(frame.columns) == ["user_id", "item_id", "rank", "score"]
    assert list(frame["user_id"].unique()) == ["u000001", "u000002", "new-shopper"]
    assert list(frame["rank"]) == [1, 2, 3, 4] * 3
    text = capsys.readouterr().out
    assert "3 shoppers x k 4 -> 12 rows" in text and "1 popular" in text


@pytest.mark.parametrize(("argv", "needle"), [
    (["--users", "{tmp}/missing.txt"], "missing.txt"),
    (["--data", "events:{tmp}/missing.csv"], "missing.csv"),
    (["--model", "{tmp}/no-bundle"], "no-bundle"),
    (["--k", "0"], "k must be"),
])
def test_bad_input_is_one_line_exit_2_and_keeps_out(argv: list[str], needle: str,
                                                    bundle_dir: Path, tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "recs.csv"
    out.write_text("kept\n")
    args = ["--data", "synthetic", "--model", str(bundle_dir), "--out", str(out)]
    args += [a.replace("{tmp}", str(tmp_path)) for a in argv]
    with pytest.raises(SystemExit) as done:
        run_cli(lambda: batch.main(args))
    assert done.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: ") and needle in err[-1]
    assert "Traceback" not in "\n".join(err)
    assert out.read_text() == "kept\n"
