"""Rule-based segments (features/segments.py): each rule on hand-made histories with a known
answer, and a malformed segments file named by file, line and field."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from features.history import build_histories
from features.infra import DataError
from features.segments import SegmentRule, check_categories, evaluate, load_rules, parse_rules
from features.split import sort_events
from features.vocab import Vocabulary
from tests.helpers import make_events

NOW = pd.Timestamp("2024-03-31 00:00", tz="UTC")
# p1, p2: printers (electronics); h1: hoses (garden); x: no category
VOCAB = Vocabulary.fit(pd.Series(["p1", "p2", "h1", "x"]))
LEAF = {"p1": "printers", "p2": "printers", "h1": "hoses"}
PARENT = {"p1": "electronics", "p2": "electronics", "h1": "garden"}
CATEGORIES = np.array([LEAF.get(i, "") for i in VOCAB.ids], dtype=object)
PARENTS = np.array([PARENT.get(i, "") for i in VOCAB.ids], dtype=object)


def histories():
    rows = [
        # ann: carted p1 two days ago and bought it after: not an abandoner; 3 purchases
        ("ann", "p1", "addtocart", "2024-03-29 10:00"),
        ("ann", "p1", "purchase", "2024-03-29 11:00"),
        ("ann", "p2", "purchase", "2024-03-30 11:00"),
        ("ann", "h1", "purchase", "2024-03-30 12:00"),
        # bob: carted h1 yesterday, never bought it: abandoner; mostly garden
        ("bob", "h1", "view", "2024-03-30 09:00"), ("bob", "h1", "addtocart", "2024-03-30 09:05"),
        ("bob", "p1", "view", "2024-03-30 09:10"),
        # cid: carted p2 twenty days ago and left it: too old for a 7-day abandoner
        ("cid", "p2", "addtocart", "2024-03-11 10:00"), ("cid", "x", "view", "2024-03-30 10:00"),
        # dee: bought p1 before carting it again: the later cart is abandoned
        ("dee", "p1", "purchase", "2024-03-20 10:00"),
        ("dee", "p1", "addtocart", "2024-03-29 10:00"),
    ]
    events = sort_events(make_events(rows))
    return build_histories(events, VOCAB, max_len=50, now=NOW,
                           users=np.array(["ann", "bob", "cid", "dee", "new"], dtype=object))


RULES = parse_rules({"segment": [
    {"name": "first", "rule": "first_time"},
    {"name": "back", "rule": "returning"},
    {"name": "abandoner", "rule": "cart_abandoner", "days": 7},
    {"name": "abandoner-30d", "rule": "cart_abandoner", "days": 30},
    {"name": "buyer", "rule": "frequent_buyer", "min_purchases": 3},
    {"name": "buyer-1d", "rule": "frequent_buyer", "min_purchases": 2, "days": 1},
    {"name": "garden", "rule": "category_affinity", "category": "garden", "min_share": 0.6},
    {"name": "printers", "rule": "category_affinity", "category": "printers"},
]})


def members(name: str) -> list[str]:
    hist = histories()
    j = [r.name for r in RULES].index(name)
    return list(hist.user_ids[evaluate(RULES, hist, CATEGORIES, PARENTS)[:, j]])


@pytest.mark.parametrize(("name", "expected"), [
    ("first", ["new"]),
    ("back", ["ann", "bob", "cid", "dee"]),
    ("abandoner", ["bob", "dee"]),
    ("abandoner-30d", ["bob", "cid", "dee"]),
    ("buyer", ["ann"]),
    ("buyer-1d", ["ann"]),          # p2 and h1 a day before the end; p1 two days
    ("garden", ["bob"]),            # 2 of 3 events; ann has 1 of 4
    ("printers", ["ann", "bob", "cid", "dee"]),   # 30% or more: cid 1 of 2
])
def test_each_rule_has_a_known_answer(name: str, expected: list[str]) -> None:
    assert members(name) == expected


def test_defaults_fill_optional_fields() -> None:
    (rule,) = parse_rules({"segment": [{"name": "a", "rule": "cart_abandoner"}]})
    assert rule.params == {"days": 7.0} and rule.describe() == "cart_abandoner(days=7.0)"


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "segments.toml"
    path.write_text(text)
    return path


GOOD = '[[segment]]\nname = "back"\nrule = "returning"\n\n'


@pytest.mark.parametrize(("body", "line", "field", "words"), [
    ('[[segment]]\nname = "x"\nrule = "big_spender"\n', 5, "rule", "unknown rule"),
    ('[[segment]]\nname = "x"\nrule = "cart_abandoner"\ndayz = 3\n', 5, "dayz", "no such field"),
    ('[[segment]]\nname = "x"\nrule = "category_affinity"\n', 5, "category", "needs"),
    ('[[segment]]\nname = "back"\nrule = "first_time"\n', 5, "name", "comes earlier"),
    ('[[segment]]\nrule = "first_time"\n', 5, "name", "non-empty name"),
    ('[[segment]]\nname = "x"\nrule = "category_affinity"\ncategory = "a"\nmin_share = 2\n', 5,
     "min_share", "number"),
    ('[[segment]]\nname = "x"\nrule = "frequent_buyer"\nmin_purchases = "3"\n', 5,
     "min_purchases", "number"),
])
def test_a_bad_segment_names_file_line_and_field(tmp_path: Path, body: str, line: int,
                                                 field: str, words: str) -> None:
    path = write(tmp_path, GOOD + body)
    with pytest.raises(DataError) as err:
        load_rules(path)
    message = str(err.value)
    assert str(path) in message and f"row {line}" in message and f"'{field}'" in message
    assert words in message


def test_invalid_toml_and_empty_files_are_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="not valid TOML"):
        load_rules(write(tmp_path, "[[segment]\nname = 1\n"))
    with pytest.raises(DataError, match="no \\[\\[segment\\]\\] tables"):
        load_rules(write(tmp_path, "# nothing yet\n"))
    with pytest.raises(DataError, match="cannot read"):
        load_rules(tmp_path / "missing.toml")


def test_an_unknown_category_is_named_with_its_line() -> None:
    rules = [SegmentRule("pets", "category_affinity", {"category": "pets", "min_share": 0.3}, 9)]
    with pytest.raises(DataError) as err:
        check_categories(rules, {"printers", "garden"}, "segments.toml")
    assert "row 9" in str(err.value) and "'pets'" in str(err.value)


def test_the_projects_segments_file_loads() -> None:
    rules = load_rules(Path(__file__).resolve().parents[2] / "segments.toml")
    assert {r.rule for r in rules} >= {"first_time", "returning", "cart_abandoner"}
