import pandas as pd
import pytest

from features.config import SERVING_SPLIT, FeatureConfig
from features.infra import DataError
from features.split import auto_window_days, make_split
from tests.helpers import make_events


def day(d: int, hour: int = 12) -> str:
    return f"2024-01-{d:02d} {hour:02d}:00"


@pytest.fixture
def timed():
    rows = [
        ("u1", "a", "view", day(1)), ("u1", "b", "purchase", day(2)),
        ("u1", "c", "addtocart", day(9)),            # valid window (days 8-9)
        ("u1", "a", "purchase", day(11)),            # test window (days 10-11)
        ("u1", "new", "purchase", day(11)),          # item never in train: not a target
        ("u2", "c", "view", day(3)), ("u2", "b", "view", day(10)),  # views are not targets
        ("u3", "b", "purchase", day(11)),            # no event before the test window
        ("u4", "c", "view", day(1)), ("u4", "a", "view", day(1)),
    ]
    return make_events(rows)


def test_temporal_folds_and_targets(timed):
    split = make_split(timed, True, FeatureConfig(test_days=2))
    assert split.protocol == "temporal"
    assert split.test_start == pd.Timestamp("2024-01-09 12:00:00.001", tz="UTC")
    folds = split.events.set_index(["user_id", "item_id", "event"])["fold"]
    assert folds[("u1", "c", "addtocart")] == "valid"
    assert folds[("u1", "a", "purchase")] == "test"
    test = split.targets[split.targets["fold"] == "test"]
    assert sorted(map(tuple, test[["user_id", "item_id"]].to_numpy())) == [("u1", "a")]
    valid = split.targets[split.targets["fold"] == "valid"]
    assert sorted(map(tuple, valid[["user_id", "item_id"]].to_numpy())) == [("u1", "c")]
    assert set(split.history_for("test")["fold"]) == {"train", "valid"}


def test_auto_window_is_a_fifth_of_a_short_log(timed):
    assert auto_window_days(timed) == 2.0  # 10 days of data
    long = timed.assign(timestamp=timed["timestamp"] + pd.to_timedelta(timed["seq"] * 20, "D"))
    assert auto_window_days(long) == 14.0


def test_leave_one_out_uses_order_and_needs_three_events():
    rows = [("u1", "a", "purchase"), ("u1", "b", "purchase"), ("u1", "c", "purchase"),
            ("u1", "d", "purchase"), ("u2", "a", "purchase"), ("u2", "b", "purchase")]
    split = make_split(make_events(rows, with_time=False), False, FeatureConfig())
    assert split.protocol == "leave-one-out"
    u1 = split.events[split.events["user_id"] == "u1"]
    assert list(u1["fold"]) == ["train", "train", "valid", "test"]
    assert set(split.events.loc[split.events["user_id"] == "u2", "fold"]) == {"train"}
    # d is the test target but never trained on: not rankable, so not a target; c likewise.
    assert split.targets.empty


def test_predefined_split_drops_non_purchase_test_rows():
    rows = [("u1", "a", "view"), ("u1", "b", "purchase"), ("u1", "c", "purchase"),
            ("u1", "a", "purchase"), ("u1", "b", "view"), ("u2", "a", "purchase"),
            ("u3", "b", "view"), ("u3", "c", "view")]
    events = make_events(rows, with_time=False,
                         split=["train", "train", "train", "test", "test", "train", "train",
                                "train"])
    split = make_split(events, False, FeatureConfig())
    assert split.protocol == "predefined" and split.dropped_rows == 1
    test = split.targets[split.targets["fold"] == "test"]
    assert list(map(tuple, test[["user_id", "item_id"]].to_numpy())) == [("u1", "a")]
    valid = split.targets[split.targets["fold"] == "valid"]
    assert list(valid["user_id"]) == ["u1"]  # u2 has a single purchase: never held out
    assert valid["item_id"].iloc[0] in {"b", "c"}


def test_temporal_needs_time():
    events = make_events([("u1", "a", "view")], with_time=False)
    with pytest.raises(DataError, match="needs timestamps"):
        make_split(events, False, FeatureConfig(split="temporal"))


def test_serving_split_puts_every_event_in_training(timed):
    """The refit for serving (features.config.SERVING_SPLIT): nothing held out, no targets."""
    split = make_split(timed, True, FeatureConfig(split=SERVING_SPLIT))
    assert split.protocol == SERVING_SPLIT
    assert len(split.fold("train")) == len(timed) and split.targets.empty
    assert split.valid_start is None and split.test_start is None
    # the item first seen in the test window of the evaluation split trains here
    assert "new" in set(split.fold("train")["item_id"])


def test_serving_split_is_no_command_line_choice():
    from features.config import PROTOCOLS

    assert SERVING_SPLIT not in PROTOCOLS  # set by training itself, never by --split
