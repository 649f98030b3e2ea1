"""validate_events: column resolution, value checks, error messages, skip mode, duplicates."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from features.infra import DataError
from features.schema import EVENT_DTYPE, SPLIT_DTYPE, TIMESTAMP_DTYPE
from features.spec import ReadOptions
from features.validate import parse_timestamps, resolve_columns, validate_events

PATH = "shop/events.csv"


def raw(**columns: list) -> pd.DataFrame:
    """A frame as read from a CSV: every cell a string (None = empty cell)."""
    return pd.DataFrame({k: pd.Series(v, dtype="str") for k, v in columns.items()})


def basic(n: int = 3, **extra: list) -> pd.DataFrame:
    return raw(user_id=[f"u{i}" for i in range(n)], item_id=[f"0{i}" for i in range(n)],
               event=["view"] * n, **extra)


def error(frame: pd.DataFrame, options: ReadOptions | None = None, **kw: object) -> str:
    with pytest.raises(DataError) as info:
        validate_events(frame, PATH, options or ReadOptions(), **kw)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(PATH)
    return message


# --- the canonical frame -----------------------------------------------------------------

def test_canonical_columns_dtypes_and_source_order() -> None:
    frame = raw(user_id=["b", "a", "b"], item_id=["007", "1", "2"], event=["view", "cart", "buy"],
                timestamp=["2024-01-02", "2024-01-01", "2024-01-03"], split=["train"] * 3,
                price=["1.5", "", "3"], session_id=["s1", "s1", None])
    data = validate_events(frame, PATH, ReadOptions(), source="events:x")
    ev = data.events
    assert list(ev.columns) == ["user_id", "item_id", "event", "timestamp", "seq", "session_id",
                                "price", "split"]
    assert ev["user_id"].dtype == "string" and ev["item_id"].dtype == "string"
    assert ev["event"].dtype == EVENT_DTYPE and ev["split"].dtype == SPLIT_DTYPE
    assert ev["timestamp"].dtype == TIMESTAMP_DTYPE and ev["seq"].dtype == "int64"
    assert ev["price"].dtype == "float64" and np.isnan(ev["price"][1])
    assert ev["user_id"].tolist() == ["b", "a", "b"]  # not sorted: that is a later stage's job
    assert ev["item_id"][0] == "007"                  # leading zeros kept
    assert ev["event"].tolist() == ["view", "addtocart", "purchase"]
    assert ev["seq"].tolist() == [0, 1, 2]
    assert ev["session_id"].isna().tolist() == [False, False, True]
    assert data.has_time and data.source == "events:x" and data.report.total == 0


def test_no_timestamp_column_means_no_time() -> None:
    data = validate_events(basic(), PATH, ReadOptions())
    assert not data.has_time
    assert data.events["timestamp"].isna().all()
    assert data.events["timestamp"].dtype == TIMESTAMP_DTYPE
    assert "split" not in data.events and "price" not in data.events


def test_aliases_are_case_insensitive() -> None:
    frame = raw(VisitorID=["1"], ItemId=["2"], Behavior_Type=["pv"], TS=["1700000000"],
                Cate_ID=["c9"])
    cols = resolve_columns(list(frame.columns), PATH, ReadOptions())
    assert cols == {"user": "VisitorID", "item": "ItemId", "event": "Behavior_Type",
                    "timestamp": "TS", "category": "Cate_ID"}
    data = validate_events(frame, PATH, ReadOptions())
    assert data.events["event"][0] == "view"
    assert data.items.to_dict("list") == {"item_id": ["2"], "category_id": ["c9"]}


def test_column_overrides_win_over_aliases() -> None:
    frame = raw(uid=["1"], user_id=["decoy"], sku=["2"], what=["buy"], when=["2024-05-01"])
    options = ReadOptions(columns={"user": "uid", "event": "what", "timestamp": "WHEN"})
    ev = validate_events(frame, PATH, options).events
    assert ev["user_id"][0] == "1" and ev["event"][0] == "purchase"
    assert ev["timestamp"][0] == pd.Timestamp("2024-05-01", tz="UTC")


def test_override_naming_a_missing_column() -> None:
    message = error(basic(), ReadOptions(columns={"user": "uid"}))
    assert "user=uid" in message and "user_id, item_id, event" in message


def test_missing_required_column_names_file_column_and_found_columns() -> None:
    message = error(raw(user_id=["1"], item_id=["2"], when=["x"]))
    assert "missing required column 'event'" in message
    assert "columns found: user_id, item_id, when" in message
    assert "event=COLUMN" in message


def test_no_rows_is_an_error() -> None:
    assert "no events" in error(raw(user_id=[], item_id=[], event=[]))


# --- events ------------------------------------------------------------------------------

def test_user_event_map_first_then_defaults() -> None:
    frame = basic(4).assign(event=["Click ", "ZAP", "pv", "cart"])
    options = ReadOptions(event_map={"zap": "purchase", "click": "addtocart"})
    ev = validate_events(frame, PATH, options).events
    assert ev["event"].tolist() == ["addtocart", "purchase", "view", "addtocart"]


def test_unknown_event_names_file_row_column_value_and_how_to_map() -> None:
    frame = basic(3).assign(event=["view", "view", "Zap"])
    message = error(frame)
    assert "row 4, column 'event'" in message   # data row 2 is line 4 (header is line 1)
    assert "'Zap'" in message and "map=zap=view" in message
    assert "view, addtocart, purchase" in message


def test_row_numbers_passed_by_the_reader_are_used() -> None:
    frame = basic(2).assign(event=["view", "nope"])
    assert "row 17," in error(frame, rows=[10, 17])


def test_empty_event_is_an_error() -> None:
    message = error(basic(2).assign(event=["view", None]))
    assert "row 3, column 'event': empty event name" in message


# --- ids, numbers, split -----------------------------------------------------------------

@pytest.mark.parametrize("column", ["user_id", "item_id"])
@pytest.mark.parametrize("blank", [None, "", "   "])
def test_empty_ids(column: str, blank: str | None) -> None:
    frame = basic(3)
    frame.loc[1, column] = blank
    message = error(frame)
    assert f"row 3, column '{column}': empty {column.split('_')[0]} id" in message


def test_bad_price_and_quantity() -> None:
    message = error(basic(2, price=["1", "abc"]))
    assert "row 3, column 'price': price is not a number: 'abc'" in message
    message = error(basic(2, qty=["x", "1"]))
    assert "row 2, column 'qty': quantity is not a number: 'x'" in message
    ev = validate_events(basic(2, quantity=["2", " 3 "]), PATH, ReadOptions()).events
    assert ev["quantity"].tolist() == [2.0, 3.0]


def test_split_values() -> None:
    ev = validate_events(basic(2, split=["TRAIN", " test"]), PATH, ReadOptions()).events
    assert ev["split"].tolist() == ["train", "test"]
    message = error(basic(3, split=["train", "test", "valid"]))
    assert "row 4, column 'split'" in message and "'valid'" in message
    assert "train, test" in message


# --- timestamps --------------------------------------------------------------------------

def _ts(values: list) -> list[pd.Timestamp]:
    ts, bad, _ = parse_timestamps(pd.Series(values, dtype="str"))
    assert not bad.any()
    assert ts.dtype == TIMESTAMP_DTYPE
    return ts.tolist()


def test_epoch_units_decided_by_magnitude() -> None:
    expected = pd.Timestamp("2023-11-14 22:13:20", tz="UTC")
    assert _ts(["1700000000", "1700000000.0"]) == [expected] * 2                # seconds
    assert _ts(["1700000000000", "1700000000123"])[1] == expected + pd.Timedelta(milliseconds=123)
    assert _ts(["1700000000000000"]) == [expected]                              # microseconds
    assert _ts(["1700000000000000000"]) == [expected]                           # nanoseconds


def test_iso_dates_and_times_in_utc() -> None:
    got = _ts(["2024-03-01", "2024-03-01T10:00:00+02:00", "2024-03-01 10:00:00",
               "2024-03-01T10:00:00.250Z"])
    assert got == [pd.Timestamp("2024-03-01", tz="UTC"),
                   pd.Timestamp("2024-03-01 08:00", tz="UTC"),
                   pd.Timestamp("2024-03-01 10:00", tz="UTC"),
                   pd.Timestamp("2024-03-01 10:00:00.250", tz="UTC")]


def test_compact_dates() -> None:
    assert _ts(["20190610", "20190611"]) == [pd.Timestamp("2019-06-10", tz="UTC"),
                                            pd.Timestamp("2019-06-11", tz="UTC")]


def test_native_parquet_types() -> None:
    naive = pd.Series(pd.to_datetime(["2024-01-01 12:00"]))
    ts, bad, _ = parse_timestamps(naive)
    assert ts[0] == pd.Timestamp("2024-01-01 12:00", tz="UTC") and not bad.any()
    ts, bad, _ = parse_timestamps(pd.Series([1_700_000_000_000], dtype="Int64"))
    assert ts[0] == pd.Timestamp("2023-11-14 22:13:20", tz="UTC") and not bad.any()


@pytest.mark.parametrize("values, bad_row, shown", [
    (["2024-01-01", "2024-01-02", "yesterday"], 4, "'yesterday'"),
    (["1700000000", "1700000001", "soon"], 4, "'soon'"),
    (["1700000000000", "1700000001", "1700000002000"], 3, "'1700000001'"),  # mixed units
    (["2024-01-01", None, "2024-01-03"], 3, "empty timestamp"),
    (["1", " ", "2"], 3, "empty timestamp"),
    (["2024-13-45", "2024-01-02", "2024-01-02"], 2, "'2024-13-45'"),
])
def test_bad_timestamps(values: list, bad_row: int, shown: str) -> None:
    message = error(basic(3, timestamp=values))
    assert f"row {bad_row}, column 'timestamp'" in message
    assert shown in message


# --- skip mode and duplicates ------------------------------------------------------------

def test_skip_mode_drops_and_counts_by_reason() -> None:
    frame = raw(user_id=["a", "", "c", "d", "e", "f", "g"],
                item_id=["1", "2", "3", "4", "5", "6", "7"],
                event=["view", "view", "zap", "zap", "view", "bogus", "view"],
                ts=["2024-01-01", "2024-01-01", "2024-01-01", "2024-01-01", "later",
                    "never", "2024-01-02"])
    data = validate_events(frame, PATH, ReadOptions(on_bad_rows="skip"))
    assert data.events["user_id"].tolist() == ["a", "g"]
    assert data.events["seq"].tolist() == [0, 6]      # source positions survive
    report = data.report
    assert report.counts == {"empty user_id": 1, "unknown event": 3, "bad timestamp": 1}
    assert report.total == 5
    assert report.examples["unknown event"] == [
        "row 4: unknown event 'zap'", "row 5: unknown event 'zap'", "row 7: unknown event 'bogus'"]
    assert report.examples["empty user_id"] == ["row 3: empty user_id"]
    assert report.examples["bad timestamp"] == ["row 6: bad timestamp 'later'"]
    assert any("skipped 3 bad rows: unknown event" in line for line in report.lines())


def test_skip_mode_with_every_row_bad() -> None:
    frame = basic(2).assign(event=["x", "y"])
    assert "no events" in error(frame, ReadOptions(on_bad_rows="skip"))


@pytest.mark.parametrize("mode", ["error", "skip"])
def test_exact_duplicates_dropped_and_counted(mode: str) -> None:
    frame = raw(user_id=["a", "a", "a", "a", "a", "a"], item_id=["1", "1", "1", "1", "1", "1"],
                event=["click", "click", "fav", "click", "click", "buy"],
                date=["2024-01-01", "2024-01-01", "2024-01-01", "2024-01-02", "2024-01-01",
                      "2024-01-01"])
    data = validate_events(frame, PATH, ReadOptions(on_bad_rows=mode))
    # rows 1 and 4 repeat row 0. A fav is not a click although both become 'view'.
    assert data.report.duplicates_dropped == 2
    assert data.events["seq"].tolist() == [0, 2, 3, 5]
    assert data.events["event"].tolist() == ["view", "view", "view", "purchase"]


def test_sessions_and_splits_distinguish_duplicates() -> None:
    frame = basic(1).loc[[0, 0, 0, 0]].reset_index(drop=True)
    frame["session_id"] = pd.Series(["s1", "s2", "s1", "s1"], dtype="str")
    frame["split"] = pd.Series(["train", "train", "test", "train"], dtype="str")
    data = validate_events(frame, PATH, ReadOptions())
    assert data.report.duplicates_dropped == 1 and len(data.events) == 3


def test_items_from_category_column_most_frequent_then_latest() -> None:
    frame = raw(user_id=list("abcdefg"), item_id=["1", "1", "1", "2", "2", "3", "4"],
                event=["view"] * 7, category_id=["x", "y", "x", "p", "q", "z", None])
    items = validate_events(frame, PATH, ReadOptions()).items
    assert items["item_id"].tolist() == ["1", "2", "3", "4"]
    assert items["category_id"].tolist()[:3] == ["x", "q", "z"]   # 2: tie, the latest wins
    assert pd.isna(items["category_id"][3])
    assert items["item_id"].dtype == "string" and items["category_id"].dtype == "string"
