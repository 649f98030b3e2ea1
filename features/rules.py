"""Merchandising rules a merchandiser reads and edits: filters, boosts, pins and feed settings,
as a TOML file (``rules.toml``, or ``$TAILOR_RULES``) and as the same fields in a request.

    [feed]
    diversity = 0.2          # 0..1: maximal-marginal-relevance re-ranking of the top candidates
    max_per_category = 3     # at most this many items of one leaf category per list (0: no cap)
    max_boosted = 2          # at most this many boosted items per list (0: no cap)

    [filter]
    exclude_categories = ["knives"]
    exclude_items = ["i000123"]
    price_min = 5.0
    price_max = 500.0

    [[boost]]                # an item or a (leaf or parent) category, multiplied and/or added
    category = "ink"
    multiply = 1.5           # on the item's relevance, which is 0..1 within the candidates
    add = 0.1

    [[pin]]                  # an item at a fixed slot (1 is the top), e.g. a promotion
    item_id = "i000042"
    slot = 1

Everything is optional. This module checks the shape and ranges and names the file, line and
field of a mistake (``DataError``); whether the categories and items exist is checked against a
model's catalog by ``models.merchandising.Plan``. A request's rules go on top of the file's
(``Rules.merged``).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from features.infra import DataError, read_toml

MAX_PINS = 20


@dataclass(frozen=True)
class Boost:
    item_id: str | None = None
    category: str | None = None
    multiply: float = 1.0
    add: float = 0.0

    def describe(self) -> str:
        target = f"item {self.item_id}" if self.item_id else f"category {self.category}"
        parts = ([f"x{self.multiply:g}"] if self.multiply != 1 else []) + \
            ([f"{self.add:+g}"] if self.add else [])
        return f"{target} {' '.join(parts)}".strip()


@dataclass(frozen=True)
class Pin:
    item_id: str
    slot: int   # 1 is the top of the list


@dataclass(frozen=True)
class Rules:
    """What merchandising does to a list; ``None`` settings fall back to the defaults."""

    diversity: float | None = None
    max_per_category: int | None = None
    max_boosted: int | None = None
    exclude_categories: tuple[str, ...] = ()
    exclude_items: tuple[str, ...] = ()
    price_min: float | None = None
    price_max: float | None = None
    boosts: tuple[Boost, ...] = ()
    pins: tuple[Pin, ...] = field(default_factory=tuple)

    def merged(self, over: Rules) -> Rules:
        """``over`` (a request) on top of these rules (the file): settings it gives win,
        exclusions add up, boosts add up, its pins take their slots."""
        slots = {p.slot for p in over.pins}
        return replace(
            self,
            diversity=_first(over.diversity, self.diversity),
            max_per_category=_first(over.max_per_category, self.max_per_category),
            max_boosted=_first(over.max_boosted, self.max_boosted),
            exclude_categories=tuple(dict.fromkeys(self.exclude_categories
                                                   + over.exclude_categories)),
            exclude_items=tuple(dict.fromkeys(self.exclude_items + over.exclude_items)),
            price_min=_first(over.price_min, self.price_min),
            price_max=_first(over.price_max, self.price_max),
            boosts=self.boosts + over.boosts,
            pins=tuple(p for p in self.pins if p.slot not in slots) + over.pins)


NO_RULES = Rules()


def _first(value, default):
    return default if value is None else value


# --- the file ---------------------------------------------------------------------------------

FEED = {"diversity", "max_per_category", "max_boosted"}
FILTER = {"exclude_categories", "exclude_items", "price_min", "price_max"}
BOOST = {"item_id", "category", "multiply", "add"}
PIN = {"item_id", "slot"}
TABLES = {"feed": FEED, "filter": FILTER, "boost": BOOST, "pin": PIN}


def load_rules(path: str | Path) -> Rules:
    """The rules of a TOML file, checked field by field."""
    doc, text = read_toml(path, "the rules file")
    return parse_rules(doc, str(path), text)


def parse_rules(doc: dict[str, Any], path: str = "rules", text: str = "") -> Rules:
    """Rules from a parsed document (a file's, or a request's fields shaped alike)."""
    def fail(message: str, table: str, key: str | None, value: object = None,
             index: int = 0) -> DataError:
        return DataError(message, path=path, row=rule_line(text, table, index, key), column=key,
                         value=value)

    unknown = set(doc) - set(TABLES)
    if unknown:
        name = sorted(unknown)[0]
        raise DataError(f"unknown table {name!r} (tables: [feed], [filter], [[boost]], "
                        "[[pin]])", path=path, row=rule_line(text, name, 0, None), column=name)
    single = {}
    for name in ("feed", "filter"):
        table = doc.get(name, {})
        if not isinstance(table, dict):
            raise fail(f"[{name}] must be a table", name, None)
        _known_keys(table, TABLES[name], name, 0, fail)
        single |= table
    out = Rules(
        diversity=_number(single, "diversity", 0.0, 1.0, "feed", fail),
        max_per_category=_count(single, "max_per_category", "feed", fail),
        max_boosted=_count(single, "max_boosted", "feed", fail),
        exclude_categories=_ids(single, "exclude_categories", "filter", fail),
        exclude_items=_ids(single, "exclude_items", "filter", fail),
        price_min=_number(single, "price_min", 0.0, None, "filter", fail),
        price_max=_number(single, "price_max", 0.0, None, "filter", fail),
        boosts=tuple(_boost(t, i, fail) for i, t in enumerate(_tables(doc, "boost", fail))),
        pins=tuple(_pin(t, i, fail) for i, t in enumerate(_tables(doc, "pin", fail))))
    if out.price_min is not None and out.price_max is not None and out.price_min > out.price_max:
        raise fail("price_min is above price_max", "filter", "price_min", out.price_min)
    if len(out.pins) > MAX_PINS:
        raise fail(f"at most {MAX_PINS} pins", "pin", None, index=MAX_PINS)
    slots = [p.slot for p in out.pins]
    for i, slot in enumerate(slots):
        if slot in slots[:i]:
            raise fail("another pin holds this slot", "pin", "slot", slot, index=i)
    return out


def _tables(doc: dict[str, Any], name: str, fail) -> list[dict[str, Any]]:
    tables = doc.get(name, [])
    if not isinstance(tables, list) or not all(isinstance(t, dict) for t in tables):
        raise fail(f"write each {name} as a [[{name}]] table", name, None)
    for i, table in enumerate(tables):
        _known_keys(table, TABLES[name], name, i, fail)
    return tables


def _known_keys(table: dict, allowed: set[str], name: str, index: int, fail) -> None:
    unknown = sorted(set(table) - allowed)
    if unknown:
        raise fail(f"[{name}] has no such field (its fields: {', '.join(sorted(allowed))})",
                   name, unknown[0], table[unknown[0]], index)


def _boost(table: dict[str, Any], i: int, fail) -> Boost:
    item, category = table.get("item_id"), table.get("category")
    if (item is None) == (category is None):
        raise fail("a boost names either item_id or category", "boost",
                   "item_id" if item is not None else "category", None, i)
    key = "item_id" if item is not None else "category"
    target = _id(table[key], key, "boost", i, fail)
    multiply = _number(table, "multiply", 0.0, None, "boost", fail, i)
    add = _number(table, "add", None, None, "boost", fail, i)
    if (multiply is None or multiply == 1) and not add:
        raise fail("a boost needs multiply (not 1) or add (not 0)", "boost", "multiply",
                   multiply, i)
    return Boost(target if key == "item_id" else None, target if key == "category" else None,
                 1.0 if multiply is None else multiply, add or 0.0)


def _pin(table: dict[str, Any], i: int, fail) -> Pin:
    if "item_id" not in table:
        raise fail("a pin needs item_id", "pin", "item_id", None, i)
    slot = table.get("slot")
    if isinstance(slot, bool) or not isinstance(slot, int) or slot < 1:
        raise fail("slot must be a whole number >= 1 (1 is the top)", "pin", "slot", slot, i)
    return Pin(_id(table["item_id"], "item_id", "pin", i, fail), slot)


def _number(table: dict, key: str, low: float | None, high: float | None, name: str, fail,
            index: int = 0) -> float | None:
    value = table.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) \
            or (low is not None and value < low) or (high is not None and value > high):
        bound = f"in {low:g}..{high:g}" if high is not None else \
            f">= {low:g}" if low is not None else "finite"
        raise fail(f"must be a number {bound}", name, key, value, index)
    return float(value)


def _count(table: dict, key: str, name: str, fail) -> int | None:
    value = table.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise fail("must be a whole number >= 0 (0: no cap)", name, key, value)
    return value


def _ids(table: dict, key: str, name: str, fail) -> tuple[str, ...]:
    values = table.get(key, [])
    if not isinstance(values, list):
        raise fail("must be a list of ids", name, key, values)
    return tuple(_id(v, key, name, 0, fail) for v in values)


def _id(value: object, key: str, name: str, index: int, fail) -> str:
    if isinstance(value, bool) or not isinstance(value, str | int) or not str(value).strip():
        raise fail("must be a non-empty id", name, key, value, index)
    return str(value).strip()


def rule_line(text: str, table: str, index: int, key: str | None) -> int | None:
    """The line of ``key`` in the ``index``-th ``[table]`` / ``[[table]]`` of ``text`` (that
    table's header without a key), so an error points at what to edit."""
    if not text:
        return None
    lines = text.splitlines()
    headers = [i for i, line in enumerate(lines)
               if re.match(rf"\s*\[\[?\s*{re.escape(table)}\s*\]\]?\s*(#.*)?$", line)]
    if index >= len(headers):
        return None
    start = headers[index]
    if key is None:
        return start + 1
    for i in range(start + 1, len(lines)):
        if re.match(r"\s*\[", lines[i]):
            break
        if re.match(rf"\s*{re.escape(key)}\s*=", lines[i]):
            return i + 1
    return start + 1
