"""read_events for every kind: small fixture files in tmp_path, plus the real data when present."""

from __future__ import annotations

import gzip
import json
import os
import time
from pathlib import Path

import pandas as pd
import pytest

from features.infra import DataError
from features.readers import read_events
from features.schema import EVENT_DTYPE, TIMESTAMP_DTYPE, BadRowReport, EventData
from features.spec import DataSpec, parse_spec, with_overrides

SHARED = Path(os.environ.get("TAILOR_SHARED_DATA",
                             Path(__file__).resolve().parents[3] / "shared" / "data"))
CSV = "user_id,item_id,event,timestamp\n007,A1,view,1700000000\n007,A2,cart,1700000060\n" \
      "8,A1,buy,1700000120\n"


def write(path: Path, text: str) -> Path:
    if path.name.endswith(".gz"):
        with gzip.open(path, "wt", encoding="utf-8") as handle:
            handle.write(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


def read(text: str) -> EventData:
    return read_events(parse_spec(text))


def fails(text: str | DataSpec) -> str:
    with pytest.raises(DataError) as info:
        read_events(parse_spec(text) if isinstance(text, str) else text)
    message = str(info.value)
    assert "\n" not in message
    return message


# --- events: CSV / CSV.gz / TSV / Parquet ------------------------------------------------

@pytest.mark.parametrize("name", ["events.csv", "events.csv.gz"])
def test_csv_and_gzip(tmp_path: Path, name: str) -> None:
    path = write(tmp_path / name, CSV)
    data = read(f"events:{path}")
    ev = data.events
    assert ev["user_id"].tolist() == ["007", "007", "8"]   # ids are strings, zeros kept
    assert ev["event"].tolist() == ["view", "addtocart", "purchase"]
    assert ev["timestamp"][2] == pd.Timestamp("2023-11-14 22:15:20", tz="UTC")
    assert ev["event"].dtype == EVENT_DTYPE and ev["timestamp"].dtype == TIMESTAMP_DTYPE
    assert data.has_time and data.source == f"events:{path}"
    assert data.items.empty and list(data.items.columns) == ["item_id"]


@pytest.mark.parametrize("name, sep", [("e.tsv", "\t"), ("e.tsv.gz", "\t"), ("e.csv", ";"),
                                       ("e.txt", "|")])
def test_other_delimiters(tmp_path: Path, name: str, sep: str) -> None:
    path = write(tmp_path / name, CSV.replace(",", sep))
    assert read(f"events:{path}").events["item_id"].tolist() == ["A1", "A2", "A1"]


def test_parquet_with_native_types(tmp_path: Path) -> None:
    frame = pd.DataFrame({
        "user_id": pd.array([1, 2], dtype="Int64"), "item_id": ["x", "y"],
        "event": ["view", "purchase"],
        "timestamp": pd.to_datetime(["2024-01-01 10:00", "2024-01-02 11:00"]),
        "price": [1.5, 2.0]})
    frame.to_parquet(tmp_path / "e.parquet")
    ev = read(f"events:{tmp_path / 'e.parquet'}").events
    assert ev["user_id"].tolist() == ["1", "2"]
    assert ev["timestamp"][1] == pd.Timestamp("2024-01-02 11:00", tz="UTC")
    assert ev["price"].tolist() == [1.5, 2.0]
    bad = frame.assign(event=["view", "zap"])
    bad.to_parquet(tmp_path / "bad.parquet")
    message = fails(f"events:{tmp_path / 'bad.parquet'}")
    assert "bad.parquet, row 2, column 'event'" in message   # Parquet: 1-based table row


def test_epoch_ms_and_iso_files(tmp_path: Path) -> None:
    ms = write(tmp_path / "ms.csv", "visitorid,itemid,event,timestamp\n1,2,view,1433221332117\n")
    assert read(f"events:{ms}").events["timestamp"][0] == pd.Timestamp(
        "2015-06-02 05:02:12.117", tz="UTC")
    iso = write(tmp_path / "iso.csv", "user,item,action,time\n1,2,view,2024-06-01T12:00:00+02:00\n")
    assert read(f"events:{iso}").events["timestamp"][0] == pd.Timestamp(
        "2024-06-01 10:00", tz="UTC")


def test_na_is_an_id_and_blank_lines_keep_line_numbers(tmp_path: Path) -> None:
    path = write(tmp_path / "e.csv", "user_id,item_id,event\nNA,1,view\n\n2,1,view\n3,1,zap\n")
    message = fails(f"events:{path}")
    assert f"{path}, row 5, column 'event'" in message   # the blank line 3 still counts
    ok = write(tmp_path / "ok.csv", "user_id,item_id,event\nNA,1,view\n\n2,1,view\n")
    assert read(f"events:{ok}").events["user_id"].tolist() == ["NA", "2"]


def test_custom_columns_and_map_in_the_spec(tmp_path: Path) -> None:
    path = write(tmp_path / "e.csv", "uid,product,what,when\n1,2,click,2024-01-01\n1,3,zap,"
                 "2024-01-02\n")
    data = read(f"events:{path}?user=uid&item=product&event=what&timestamp=when&map=zap=purchase")
    assert data.events["event"].tolist() == ["view", "purchase"]
    message = fails(f"events:{path}?user=uid&item=product&event=what")
    assert f"{path}, row 3, column 'what'" in message and "map=zap=view" in message


def test_read_options_given_as_flags(tmp_path: Path) -> None:
    path = write(tmp_path / "e.csv", "who,sku,kind\n1,2,seen\n1,2,seen\n")
    spec = with_overrides(parse_spec(f"events:{path}"), columns={"user": "who", "event": "kind"},
                          event_map={"seen": "view"})
    data = read_events(spec)
    assert data.events["user_id"].tolist() == ["1"] and data.report.duplicates_dropped == 1


def test_bad_inputs_name_file_row_and_column(tmp_path: Path) -> None:
    missing = write(tmp_path / "m.csv", "user_id,item_id,ts\n1,2,3\n")
    assert fails(f"events:{missing}") == (
        f"{missing}: missing required column 'event' (also accepted: event_type, behavior, "
        "behaviour, behavior_type, action, type; or name it with event=COLUMN); columns found: "
        "user_id, item_id, ts")
    ts = write(tmp_path / "t.csv", "user_id,item_id,event,date\n1,2,view,2024-01-01\n"
               "1,2,view,2024-02-30\n")
    assert f"{ts}, row 3, column 'date': unparsable timestamp" in fails(f"events:{ts}")
    assert "'2024-02-30'" in fails(f"events:{ts}")
    empty_id = write(tmp_path / "i.csv", "user_id,item_id,event\n1,2,view\n1, ,view\n")
    assert fails(f"events:{empty_id}") == f"{empty_id}, row 3, column 'item_id': empty item id"
    split = write(tmp_path / "s.csv", "user_id,item_id,event,split\n1,2,view,train\n"
                  "1,3,view,holdout\n")
    assert fails(f"events:{split}") == (
        f"{split}, row 3, column 'split': split must be one of train, test: 'holdout'")


def test_missing_path_and_empty_files(tmp_path: Path) -> None:
    gone = tmp_path / "nope.csv"
    assert fails(f"events:{gone}") == f"{gone}: file not found"
    empty = write(tmp_path / "empty.csv", "")
    assert fails(f"events:{empty}") == f"{empty}: no events (the file is empty)"
    header = write(tmp_path / "header.csv.gz", "user_id,item_id,event\n")
    assert "no events" in fails(f"events:{header}") and str(header) in fails(f"events:{header}")


def test_skip_mode_through_the_spec(tmp_path: Path) -> None:
    path = write(tmp_path / "e.csv", "user_id,item_id,event\n1,2,view\n1,2,zap\n,2,view\n"
                 "1,2,view\n")
    data = read(f"events:{path}?on_bad_rows=skip")
    assert len(data.events) == 1
    assert data.report.counts == {"empty user_id": 1, "unknown event": 1}
    assert data.report.examples["unknown event"] == ["row 3: unknown event 'zap'"]
    assert data.report.duplicates_dropped == 1


def test_item_metadata_file(tmp_path: Path) -> None:
    events = write(tmp_path / "e.csv", "user_id,item_id,event,cate_id\n1,A,view,c1\n1,B,view,c2\n")
    items = write(tmp_path / "items.csv", "item_id,category_id,parent_category_id,available,"
                  "brand\nA,c9,root,0,acme\nC,c3,,yes,\n")
    data = read(f"events:{events}?items={items}")
    got = data.items.set_index("item_id")
    assert list(data.items.columns) == ["item_id", "category_id", "parent_category_id",
                                        "available", "brand"]
    assert got.loc["A", "category_id"] == "c9"          # the metadata file wins
    assert got.loc["B", "category_id"] == "c2"          # from the event file's category column
    assert got.loc["A", "available"] == False and got.loc["C", "available"] == True  # noqa: E712
    assert got.loc["A", "brand"] == "acme"
    bad = write(tmp_path / "bad.csv", "item_id,available\nA,1\nB,maybe\n")
    assert fails(f"events:{events}?items={bad}") == (
        f"{bad}, row 3, column 'available': available must be 0/1 or true/false: 'maybe'")
    skipped = read(f"events:{events}?items={bad}&on_bad_rows=skip")
    assert skipped.report.counts == {"bad available": 1}


# --- Retailrocket ------------------------------------------------------------------------

def retailrocket(folder: Path) -> Path:
    folder.mkdir()
    write(folder / "events.csv", "timestamp,visitorid,event,itemid,transactionid\n"
          "1433221332117,257597,view,355908,\n"
          "1433224214164,992329,view,248676,\n"
          "1433221999827,111016,addtocart,248676,\n"
          "1433222276276,111016,transaction,248676,4000\n")
    write(folder / "item_properties_part1.csv", "timestamp,itemid,property,value\n"
          "1435460400000,355908,categoryid,1338\n"
          "1433041200000,355908,available,1\n"
          "1433041200000,248676,888,1116713 960601 n277.200\n"
          "1431226800000,248676,categoryid,1\n")
    write(folder / "item_properties_part2.csv.gz", "timestamp,itemid,property,value\n"
          "1442113200000,355908,available,0\n"
          "1431226800001,248676,categoryid,2\n"
          "1400000000000,355908,categoryid,7\n")
    write(folder / "category_tree.csv", "categoryid,parentid\n1338,250\n2,\n1,9\n")
    return folder


def test_retailrocket_layout(tmp_path: Path) -> None:
    folder = retailrocket(tmp_path / "rr")
    data = read(f"retailrocket:{folder}")
    ev = data.events
    assert list(ev.columns) == ["user_id", "item_id", "event", "timestamp", "seq"]  # no txn id
    assert ev["event"].tolist() == ["view", "view", "addtocart", "purchase"]
    assert ev["timestamp"][0] == pd.Timestamp("2015-06-02 05:02:12.117", tz="UTC")
    assert data.has_time and ev["user_id"][0] == "257597"
    items = data.items.set_index("item_id")
    # The latest value per item and property wins, across part files.
    assert items.loc["355908", "category_id"] == "1338"
    assert items.loc["248676", "category_id"] == "2"
    assert items.loc["355908", "parent_category_id"] == "250"
    assert pd.isna(items.loc["248676", "parent_category_id"])   # a root category
    assert items.loc["355908", "available"] == False  # noqa: E712
    assert pd.isna(items.loc["248676", "available"])


def test_retailrocket_missing_files(tmp_path: Path) -> None:
    assert fails(f"retailrocket:{tmp_path / 'none'}") == f"{tmp_path / 'none'}: file not found"
    (tmp_path / "empty").mkdir()
    assert "events.csv: file not found" in fails(f"retailrocket:{tmp_path / 'empty'}")
    folder = retailrocket(tmp_path / "rr")
    (folder / "events.csv").write_text("timestamp,visitorid,event,itemid\n"
                                       "1433221332117,1,view,2\n1433221332118,1,remove,2\n")
    assert "events.csv, row 3, column 'event'" in fails(f"retailrocket:{folder}")
    retailrocket(tmp_path / "rr2")
    with open(tmp_path / "rr2" / "item_properties_part1.csv", "a") as handle:
        handle.write("1433041200000,1,color,red\nsoon,1,available,1\n")
    assert fails(f"retailrocket:{tmp_path / 'rr2'}") == (
        f"{tmp_path / 'rr2' / 'item_properties_part1.csv'}, row 7, column 'timestamp': "
        "unparsable timestamp (expected epoch milliseconds): 'soon'")


def test_retailrocket_events_only(tmp_path: Path) -> None:
    folder = retailrocket(tmp_path / "rr")
    for part in folder.glob("item_properties*"):
        part.unlink()
    data = read(f"retailrocket:{folder}")
    assert len(data.events) == 4 and data.items.empty


# --- seq ---------------------------------------------------------------------------------

@pytest.mark.parametrize("name, attrs", [("Shop.txt", "Shop_item2attributes.json"),
                                         ("Shop.txt.gz", "Shop_item2attributes.json.gz")])
def test_seq_lines_and_attributes(tmp_path: Path, name: str, attrs: str) -> None:
    path = write(tmp_path / name, "1 10 11 12\n2 11 10\n1 13\n")
    write(tmp_path / attrs, json.dumps({"10": [1, 2], "11": [3], "12": [], "13": [4, 5, 6]}))
    data = read(f"seq:{path}")
    ev = data.events
    assert ev["user_id"].tolist() == ["1", "1", "1", "2", "2", "1"]
    assert ev["item_id"].tolist() == ["10", "11", "12", "11", "10", "13"]
    assert ev["seq"].tolist() == list(range(6))
    assert (ev["event"] == "purchase").all() and ev["event"].dtype == EVENT_DTYPE
    assert ev["timestamp"].isna().all() and ev["timestamp"].dtype == TIMESTAMP_DTYPE
    assert not data.has_time
    assert data.items.to_dict("list") == {"item_id": ["10", "11", "12", "13"],
                                          "attributes": ["1 2", "3", "", "4 5 6"]}


def test_seq_without_attributes(tmp_path: Path) -> None:
    data = read(f"seq:{write(tmp_path / 'x.txt', '1 2 3')}")
    assert data.events["item_id"].tolist() == ["2", "3"] and data.items.empty


def test_seq_bad_lines(tmp_path: Path) -> None:
    lonely = write(tmp_path / "a.txt", "1 2 3\n7\n2 3\n")
    assert fails(f"seq:{lonely}") == (
        f"{lonely}, row 2: user with no items (expected 'user_id item_id item_id ...'): '7'")
    blank = write(tmp_path / "b.txt", "1 2 3\n2 3\n  \n")
    assert fails(f"seq:{blank}").startswith(f"{blank}, row 3: empty line")
    mixed = write(tmp_path / "c.txt", "1 2\n\n3\n4 5 6\n")
    skipped = read(f"seq:{mixed}?on_bad_rows=skip")
    assert skipped.events["user_id"].tolist() == ["1", "4", "4"]
    assert skipped.report.counts == {"empty line": 1, "user with no items": 1}
    assert skipped.report.examples["user with no items"] == ["row 3: user with no items"]


def test_seq_missing_and_empty(tmp_path: Path) -> None:
    assert fails(f"seq:{tmp_path / 'no.txt'}") == f"{tmp_path / 'no.txt'}: file not found"
    empty = write(tmp_path / "e.txt.gz", "")
    assert fails(f"seq:{empty}") == f"{empty}: no events (the file is empty)"
    bad_json = write(tmp_path / "j.txt", "1 2\n")
    write(tmp_path / "j_item2attributes.json", "[1, 2]")
    assert "j_item2attributes.json: expected a JSON object" in fails(f"seq:{bad_json}")


# --- synthetic ---------------------------------------------------------------------------

def test_synthetic_calls_the_generator(monkeypatch: pytest.MonkeyPatch) -> None:
    from features import synthetic

    frame = pd.DataFrame({"user_id": pd.array(["u"], dtype="string")})
    calls: list[str] = []

    def fake(size: str = "small", seed: int = 0) -> EventData:
        calls.append(size)
        return EventData(frame, frame, "generator", True, BadRowReport())

    monkeypatch.setattr(synthetic, "generate", fake)
    data = read("synthetic:medium")
    assert calls == ["medium"] and data.source == "synthetic:medium" and data.has_time


# --- the real data in ../shared/data, when it is there -----------------------------------

TMALL = SHARED / "tmall-mbcgcn" / "interactions.csv.gz"
TAOBAO = SHARED / "taobao-ecomm-cikm2019-dyhatr" / "events.csv.gz"
AMAZON = SHARED / "amazon2014-5core-s3rec"


def counts(data: EventData) -> tuple[int, int, int]:
    ev = data.events
    return len(ev), ev["user_id"].nunique(), ev["item_id"].nunique()


@pytest.mark.slow
@pytest.mark.skipif(not TMALL.exists(), reason="shared Tmall data not present")
def test_real_tmall() -> None:
    started = time.perf_counter()
    data = read(f"events:{TMALL}")
    assert time.perf_counter() - started < 10   # ~1.3 s here; catches a per-row Python loop
    assert counts(data) == (1_177_059, 15_449, 11_953)
    assert not data.has_time and data.events["timestamp"].isna().all()
    assert data.events["split"].value_counts().to_dict() == {"train": 1_130_712, "test": 46_347}
    assert data.events["event"].value_counts().to_dict() == {
        "view": 873_954, "addtocart": 195_476, "purchase": 107_629}
    assert data.report.duplicates_dropped == 0 and data.report.total == 0


@pytest.mark.skipif(not TAOBAO.exists(), reason="shared Taobao data not present")
def test_real_taobao() -> None:
    data = read(f"events:{TAOBAO}")
    assert data.report.duplicates_dropped == 4_270   # README: same user, item, event and day
    assert counts(data) == (85_213 - 4_270, 1_476, 34_505)
    assert data.has_time
    ts = data.events["timestamp"]
    assert ts.min() == pd.Timestamp("2019-06-10", tz="UTC")
    assert ts.max() == pd.Timestamp("2019-06-19", tz="UTC")
    assert len(data.items) == 34_505 and data.items["category_id"].notna().all()
    assert data.items["category_id"].nunique() == 398


@pytest.mark.parametrize("name, expected, n_attrs", [
    ("Sports_and_Outdoors", (296_337, 35_598, 18_357), 2_277),
    ("Toys_and_Games", (167_597, 19_412, 11_924), 1_027),
])
def test_real_amazon(name: str, expected: tuple[int, int, int], n_attrs: int) -> None:
    path = AMAZON / f"{name}.txt.gz"
    if not path.exists():
        pytest.skip("shared Amazon data not present")
    data = read(f"seq:{path}")
    assert counts(data) == expected
    assert not data.has_time and data.report.duplicates_dropped == 0
    assert len(data.items) == expected[2]
    assert data.items["attributes"].str.split().explode().nunique() == n_attrs
    lengths = data.events.groupby("user_id").size()
    assert lengths.min() == 5

