import numpy as np
import pandas as pd
import pytest

from features.infra import DataError
from features.spec import parse_event_map, parse_spec, with_overrides
from features.vocab import UNKNOWN, Vocabulary


def test_vocabulary_is_sorted_and_order_independent():
    a = Vocabulary.fit(["b", "a", "c", "a"])
    b = Vocabulary.fit(["c", "b", "a"])
    assert a == b
    assert list(a.ids) == ["a", "b", "c"]
    assert list(a.lookup(["c", "zz", "a"])) == [2, UNKNOWN, 0]
    assert a.row("b") == 1 and a.row("nope") == UNKNOWN
    assert list(a.id_of(np.array([2, 0]))) == ["c", "a"]
    with pytest.raises(IndexError):
        a.id_of([3])


def test_vocabulary_roundtrip_through_a_frame():
    vocab = Vocabulary.fit(pd.Series(["007", "42", "x"]))
    again = Vocabulary.from_frame(vocab.to_frame())
    assert again == vocab and "007" in again and "7" not in again


def test_parse_synthetic_specs():
    assert parse_spec("synthetic").size == "small"
    assert parse_spec("synthetic:large").name == "synthetic-large"
    with pytest.raises(DataError, match="synthetic size"):
        parse_spec("synthetic:huge")


def test_parse_events_spec_with_options():
    spec = parse_spec("events:/tmp/x.csv.gz?user=visitor&map=click=view,buy=purchase"
                      "&on_bad_rows=skip")
    assert spec.kind == "events" and spec.path == "/tmp/x.csv.gz"
    assert spec.options.columns == {"user": "visitor"}
    assert spec.options.event_map == {"click": "view", "buy": "purchase"}
    assert spec.options.on_bad_rows == "skip"
    flagged = with_overrides(spec, columns={"user": "uid"}, on_bad_rows=None)
    assert flagged.options.columns == {"user": "uid"}
    assert flagged.options.on_bad_rows == "skip"


@pytest.mark.parametrize("text,message", [
    ("", "empty data spec"),
    ("csv:/x", "unknown kind 'csv'"),
    ("events:", "missing path"),
    ("events:/x?bogus=1", "unknown option 'bogus'"),
    ("events:/x?user", "needs key=value"),
    ("events:/x?map=click=clicked", "unknown event 'clicked'"),
])
def test_bad_specs_say_what_is_wrong(text, message):
    with pytest.raises(DataError, match=message):
        parse_spec(text)


def test_event_map_needs_pairs():
    with pytest.raises(DataError, match="expected name=canonical"):
        parse_event_map("click")
