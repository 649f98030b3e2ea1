"""``features.rules``: the merchandising rules file, its checks and a request on top of it."""

from __future__ import annotations

from pathlib import Path

import pytest

from features.infra import DataError
from features.rules import NO_RULES, Boost, Pin, Rules, load_rules

GOOD = """\
# a comment
[feed]
diversity = 0.25
max_per_category = 3

[filter]
exclude_categories = ["knives"]
price_max = 500

[[boost]]
category = "ink"
multiply = 1.5

[[boost]]
item_id = "i7"
add = 0.2

[[pin]]
item_id = "i9"
slot = 2
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "rules.toml"
    path.write_text(text)
    return path


def test_a_full_file_reads_into_rules(tmp_path: Path) -> None:
    rules = load_rules(write(tmp_path, GOOD))
    assert rules == Rules(diversity=0.25, max_per_category=3, exclude_categories=("knives",),
                          price_max=500.0,
                          boosts=(Boost(category="ink", multiply=1.5), Boost(item_id="i7",
                                                                              add=0.2)),
                          pins=(Pin("i9", 2),))
    assert load_rules(write(tmp_path, "# nothing\n")) == NO_RULES


@pytest.mark.parametrize(("text", "line", "column", "message"), [
    ("[feed]\ndiversity = 2\n", 2, "diversity", "must be a number in 0..1"),
    ("[feed]\n\nmax_per_category = -1\n", 3, "max_per_category", "whole number"),
    ("[filter]\ncolour = 'red'\n", 2, "colour", "[filter] has no such field"),
    ("[[boost]]\ncategory = 'a'\nmultiply = 2\n\n[[boost]]\ncategory = 'b'\nfactor = 2\n",
     7, "factor", "[boost] has no such field"),
    ("[[boost]]\ncategory = 'a'\n", 1, "multiply", "needs multiply"),
    ("[[boost]]\nitem_id = 'i1'\ncategory = 'a'\nadd = 1\n", 2, "item_id", "either item_id or"),
    ("[[pin]]\nitem_id = 'i1'\nslot = 0\n", 3, "slot", "slot must be"),
    ("[[pin]]\nitem_id = 'i1'\nslot = 1\n[[pin]]\nitem_id = 'i2'\nslot = 1\n", 6, "slot",
     "another pin"),
    ("[filter]\nprice_min = 10\nprice_max = 5\n", 2, "price_min", "above price_max"),
    ("[boosts]\n", 1, "boosts", "unknown table"),
])
def test_a_mistake_names_the_file_line_and_field(tmp_path: Path, text: str, line: int,
                                                  column: str, message: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(DataError) as err:
        load_rules(path)
    said = str(err.value)
    assert message in said and str(path) in said
    assert f"line {line}" in said or f"row {line}" in said
    assert column in said


def test_not_toml_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="not valid TOML"):
        load_rules(write(tmp_path, "[feed\n"))
    with pytest.raises(DataError, match="cannot read"):
        load_rules(tmp_path / "missing.toml")


def test_a_request_goes_on_top_of_the_file() -> None:
    file = Rules(diversity=0.2, exclude_categories=("a",), boosts=(Boost(category="x", add=1),),
                 pins=(Pin("i1", 1), Pin("i2", 2)))
    request = Rules(diversity=0.0, exclude_categories=("b", "a"),
                    boosts=(Boost(item_id="i5", multiply=2),), pins=(Pin("i3", 2),))
    merged = file.merged(request)
    assert merged.diversity == 0.0                      # the request's setting wins, even 0
    assert merged.exclude_categories == ("a", "b")      # exclusions add up
    assert merged.boosts == file.boosts + request.boosts
    assert merged.pins == (Pin("i1", 1), Pin("i3", 2))  # the request takes slot 2
    assert file.merged(NO_RULES) == file
