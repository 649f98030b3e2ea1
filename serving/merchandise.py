"""The merchandiser's side of serving: the rules file, read at start and again whenever it
changes, a request's own rules on top, and each item's ``because``.

The file is ``$TAILOR_RULES``, else ``rules.toml`` at the project's root when it exists
(``features/rules.py`` describes it). A file that is wrong at start stops the service with the
file, line and field; a file edited into a wrong state while serving is logged and the last good
rules stay in force, so a typo never takes the shop's recommendations down.
"""

from __future__ import annotations

import logging
import math
import os
import time
from pathlib import Path

import numpy as np

from features.infra import ROOT, DataError
from features.rules import NO_RULES, Boost, Pin, Rules, load_rules, rule_line
from features.schema import EVENT_TYPES
from models.explain import history_reasons
from models.merchandising import BOOSTED, PINNED, Catalog, Plan, RuleError, make_plan
from serving.api import Because, BoostRule, Merchandising, PinRule, RequestError

RULES_ENV = "TAILOR_RULES"
DEFAULT_RULES = ROOT / "rules.toml"
CHECK_SECONDS = 1.0   # how often a worker looks at the file's modification time
log = logging.getLogger("tailor.rules")


def rules_path() -> Path | None:
    """The rules file in force: ``$TAILOR_RULES``, else ``rules.toml`` when it exists."""
    named = os.environ.get(RULES_ENV, "").strip()
    if named:
        return Path(named).expanduser()
    return DEFAULT_RULES if DEFAULT_RULES.exists() else None


def load_plan(path: Path | None, catalog: Catalog) -> tuple[Rules, Plan]:
    """The file's rules and their plan for ``catalog``; a ``DataError`` names file, line, field."""
    if path is None:
        return NO_RULES, make_plan(NO_RULES, catalog)
    rules = load_rules(path)
    try:
        return rules, make_plan(rules, catalog)
    except RuleError as err:
        text = path.read_text(encoding="utf-8")
        raise DataError(err.message, path=str(path), column=err.key, value=err.value,
                        row=rule_line(text, err.table, err.index, err.key)) from err


class RulesFile:
    """The rules file of one worker, reloaded between requests when its mtime changes."""

    def __init__(self, catalog: Catalog, path: Path | None = None) -> None:
        self.catalog, self.path = catalog, path
        self.stamp = self._stamp()
        self.rules, self.plan = load_plan(path if self.stamp else None, catalog)
        if path is not None and self.stamp is None:
            raise DataError("no such rules file", path=str(path))
        self.checked = time.monotonic()

    def _stamp(self) -> tuple[int, int] | None:
        try:
            stat = self.path.stat() if self.path else None
        except OSError:
            return None
        return (stat.st_mtime_ns, stat.st_size) if stat else None

    def current(self) -> tuple[Rules, Plan]:
        now = time.monotonic()
        if self.path is not None and now - self.checked >= CHECK_SECONDS:
            self.checked = now
            stamp = self._stamp()
            if stamp != self.stamp:
                self.stamp = stamp
                try:
                    self.rules, self.plan = load_plan(self.path if stamp else None, self.catalog)
                    log.warning("rules reloaded from %s", self.path)
                except DataError as err:
                    log.error("rules file not reloaded, the previous rules stay: %s", err)
        return self.rules, self.plan


# --- a request's rules ------------------------------------------------------------------------

def request_rules(request: Merchandising) -> Rules:
    return Rules(diversity=request.diversity, max_per_category=request.max_per_category,
                 max_boosted=request.max_boosted,
                 exclude_categories=tuple(request.exclude_categories),
                 price_min=request.price_min, price_max=request.price_max,
                 boosts=tuple(_boost(b) for b in request.boosts),
                 pins=tuple(_pin(p) for p in request.pins))


def request_plan(rules_file: RulesFile, request: Merchandising) -> tuple[Rules, Plan]:
    """The file's rules with the request's on top, as a plan (the file's own when the request
    adds nothing, so the common request builds nothing)."""
    rules, plan = rules_file.current()
    mine = request_rules(request)
    if mine == NO_RULES:
        return rules, plan
    if request.price_min is not None and request.price_max is not None and \
            request.price_min > request.price_max:
        raise RequestError(400, "price_min", "price_min is above price_max", "value_error")
    merged = rules.merged(mine)
    try:
        return merged, make_plan(merged, rules_file.catalog)
    except RuleError as err:
        raise RequestError(404 if "unknown" in err.message or "no item" in err.message else 422,
                           _field(err), err.message, "value_error") from err


def _field(err: RuleError) -> str:
    if err.table in ("boost", "pin"):
        return f"{err.table}s[{err.index}].{err.key}"
    return err.key


def _boost(b: BoostRule) -> Boost:
    return Boost(b.item_id, b.category, b.multiply, b.add)


def _pin(p: PinRule) -> Pin:
    return Pin(p.item_id, p.slot)


# --- because ----------------------------------------------------------------------------------

REPEAT_KIND = {"view": "viewed", "addtocart": "carted", "purchase": "bought"}


def reasons(ranker, history, rows: np.ndarray, flags: np.ndarray | None, rules: Rules,
            personal: bool, category: str | None) -> list[Because]:
    """Each listed item's ``because`` (``rows`` without pads)."""
    out: list[Because | None] = [None] * len(rows)
    flags = np.zeros(len(rows), dtype=np.int8) if flags is None else flags
    for i, flag in enumerate(flags):
        if flag == PINNED:
            out[i] = Because(kind="pinned")
        elif flag == BOOSTED:
            out[i] = Because(kind="boosted", rule=_boost_rule(ranker.catalog, rules, rows[i]))
    todo = [i for i in range(len(rows)) if out[i] is None]
    if not personal:
        kind = "popular_in_category" if category is not None else "popular"
        return [out[i] or Because(kind=kind) for i in range(len(rows))]
    found = history_reasons(ranker.recommender, history, rows[todo])
    for i, reason in zip(todo, found, strict=True):
        if reason is None:
            out[i] = Because(kind="model")
            continue
        event = EVENT_TYPES[reason.event_code]
        drop = round(reason.score_drop, 6) if math.isfinite(reason.score_drop) else None
        item_id = str(ranker.catalog.ids[reason.item_idx])
        if reason.item_idx == rows[i]:
            out[i] = Because(kind=REPEAT_KIND[event], item_id=item_id, score_drop=drop)
        else:
            out[i] = Because(kind="similar_to", item_id=item_id, event=event, score_drop=drop)
    return out


def _boost_rule(catalog: Catalog, rules: Rules, row: int) -> str:
    named = [b.describe() for b in rules.boosts
             if (b.item_id is not None and catalog.rows.get(b.item_id) == row)
             or (b.category is not None and catalog.category_mask(b.category)[row])]
    return "; ".join(named)
