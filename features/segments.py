"""Rule-based shopper segments a marketer reads and edits: a TOML file of ``[[segment]]`` tables,
each a name and one rule over the shopper's history.

    [[segment]]
    name = "cart abandoner"
    rule = "cart_abandoner"
    days = 7

Rules (``RULES`` lists each one's fields):
  first_time         no history at all (a visitor the shop has never seen)
  returning          a history
  cart_abandoner     a cart in the last ``days`` whose item was not bought after it
  frequent_buyer     at least ``min_purchases`` purchases (in the last ``days``, if given)
  category_affinity  at least ``min_share`` of the shopper's events in ``category`` (leaf or
                     parent category id)
The history is what the model keeps of each shopper (the last L events); "the last N days" count
back from the end of the data. A malformed file is a ``DataError`` naming the file, the line of
the segment and the field.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from features.history import Histories
from features.infra import DataError, read_toml
from features.schema import EVENT_TYPES

CART, PURCHASE = EVENT_TYPES.index("addtocart"), EVENT_TYPES.index("purchase")

# rule -> (required fields, optional fields with defaults)
RULES: dict[str, tuple[tuple[str, ...], dict[str, Any]]] = {
    "first_time": ((), {}),
    "returning": ((), {}),
    "cart_abandoner": ((), {"days": 7.0}),
    "frequent_buyer": ((), {"min_purchases": 3, "days": None}),
    "category_affinity": (("category",), {"min_share": 0.3}),
}


@dataclass(frozen=True)
class SegmentRule:
    name: str
    rule: str
    params: dict[str, Any] = field(default_factory=dict)
    line: int = 0          # where the segment starts in its file (for errors)

    def describe(self) -> str:
        extra = ", ".join(f"{k}={v}" for k, v in self.params.items() if v is not None)
        return f"{self.rule}({extra})" if extra else self.rule


def load_rules(path: str | Path) -> list[SegmentRule]:
    """The segments of a TOML file, checked field by field."""
    doc, text = read_toml(path, "the segments file")
    return parse_rules(doc, str(path), _segment_lines(text))


def _segment_lines(text: str) -> list[int]:
    return [i + 1 for i, line in enumerate(text.splitlines())
            if re.match(r"\s*\[\[\s*segment\s*\]\]", line)]


def parse_rules(doc: dict[str, Any], path: str = "segments",
                lines: list[int] | None = None) -> list[SegmentRule]:
    extra = set(doc) - {"segment"}
    if extra:
        raise DataError(f"unknown top-level key {sorted(extra)[0]!r} (expected [[segment]] "
                        "tables)", path=path)
    tables = doc.get("segment", [])
    if not isinstance(tables, list) or not tables:
        raise DataError("no [[segment]] tables", path=path)
    rules, seen = [], set()
    for i, table in enumerate(tables):
        line = lines[i] if lines and i < len(lines) else None

        def fail(message: str, column: str | None = None, value: object = None,
                 line: int | None = line) -> DataError:
            return DataError(message, path=path, row=line, column=column, value=value)

        name, rule = table.get("name"), table.get("rule")
        if not isinstance(name, str) or not name.strip():
            raise fail("every segment needs a non-empty name", "name", name)
        if name in seen:
            raise fail("a segment of that name comes earlier", "name", name)
        seen.add(name)
        if rule not in RULES:
            raise fail(f"unknown rule (rules: {', '.join(RULES)})", "rule", rule)
        required, optional = RULES[rule]
        unknown = set(table) - {"name", "rule", *required, *optional}
        if unknown:
            field_name = sorted(unknown)[0]
            allowed = ", ".join([*required, *optional]) or "none"
            raise fail(f"rule {rule} has no such field (its fields: {allowed})", field_name,
                       table[field_name])
        params = dict(optional)
        for key in required:
            if key not in table:
                raise fail(f"rule {rule} needs this field", key)
        params |= {k: table[k] for k in table if k not in ("name", "rule")}
        _check_values(params, fail)
        rules.append(SegmentRule(name.strip(), rule, params, line or 0))
    return rules


def _check_values(params: dict[str, Any], fail) -> None:
    numbers = {"days": (0.0, None), "min_purchases": (1, None), "min_share": (0.0, 1.0)}
    for key, (low, high) in numbers.items():
        value = params.get(key)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int | float) or value < low or \
                (high is not None and value > high) or (key == "min_share" and value == 0):
            bound = f"in (0, {high}]" if key == "min_share" else f">= {low}"
            raise fail(f"must be a number {bound}", key, value)
    if "category" in params and (not isinstance(params["category"], str)
                                 or not params["category"].strip()):
        raise fail("must be a category id", "category", params["category"])


def check_categories(rules: list[SegmentRule], known: set[str], path: str = "segments") -> None:
    """Every ``category_affinity`` names a category the items have."""
    for r in rules:
        category = r.params.get("category")
        if category is not None and category not in known:
            raise DataError("no item has this category", path=path, row=r.line or None,
                            column="category", value=category)


def evaluate(rules: list[SegmentRule], hist: Histories, categories: np.ndarray | None,
             parents: np.ndarray | None) -> np.ndarray:
    """(shoppers, rules) membership. ``categories`` / ``parents``: each item row's category and
    parent category id (object arrays, "" unknown), for ``category_affinity``."""
    n = len(hist)
    lengths = hist.lengths
    owner = np.repeat(np.arange(n), lengths)
    out = np.zeros((n, len(rules)), dtype=bool)
    for j, r in enumerate(rules):
        days = r.params.get("days")
        recent = np.ones(len(owner), dtype=bool) if days is None else \
            ~(hist.age_days > days)      # NaN ages (no time in the data) count as recent
        if r.rule == "first_time":
            out[:, j] = lengths == 0
        elif r.rule == "returning":
            out[:, j] = lengths > 0
        elif r.rule == "frequent_buyer":
            buys = hist.count((hist.event_code == PURCHASE) & recent)
            out[:, j] = buys >= r.params["min_purchases"]
        elif r.rule == "cart_abandoner":
            out[:, j] = _abandoned(hist, owner, recent)
        elif r.rule == "category_affinity":
            wanted = r.params["category"]
            hit = np.zeros(len(owner), dtype=bool)
            for column in (categories, parents):
                if column is not None:
                    hit |= column[hist.item_idx] == wanted
            share = hist.count(hit) / np.maximum(lengths, 1)
            out[:, j] = (lengths > 0) & (share >= r.params["min_share"])
    return out


def _abandoned(hist: Histories, owner: np.ndarray, recent: np.ndarray) -> np.ndarray:
    """Per shopper: a recent cart whose item the shopper did not buy afterwards."""
    position = np.arange(len(owner))
    key = owner.astype(np.int64) * (int(hist.item_idx.max(initial=0)) + 1) + hist.item_idx
    buys = hist.event_code == PURCHASE
    last_buy = {}
    for k, p in zip(key[buys], position[buys], strict=True):
        last_buy[k] = p                      # positions ascend: the last one wins
    carts = np.flatnonzero((hist.event_code == CART) & recent)
    left = np.array([last_buy.get(k, -1) < p for k, p in zip(key[carts], carts, strict=True)],
                    dtype=bool)
    return np.bincount(owner[carts[left]], minlength=len(hist)) > 0
