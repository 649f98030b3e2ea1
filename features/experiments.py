"""Online experiments: a small TOML file per experiment, checked at start, and the assignment of a
shopper to a variant.

    [experiment]
    name = "towers-vs-popular"
    endpoint = "recommend"                    # recommend (the default) or also_bought
    start = 2026-12-01T00:00:00Z
    end = 2027-01-01T00:00:00Z

    [[variant]]
    name = "control"
    kind = "control"                          # no personalized items: the shop's default page
    share = 0.2

    [[variant]]
    name = "bestsellers"
    kind = "popular"                          # the recent window's bestsellers
    share = 0.2

    [[variant]]
    name = "category-bestsellers"
    kind = "category_bestsellers"             # bestsellers of the shopper's most-viewed category
    share = 0.2

    [[variant]]
    name = "champion"
    kind = "model"
    model = "champion"                        # a registered alias or version, or a bundle folder
    share = 0.4

Shares sum to 1. Assignment is a hash of (experiment, user id): every worker, replica and restart
agrees. The first assignment of a shopper is kept in the event store, so changing the shares
later moves new shoppers only. An experiment assigns between ``start`` and ``end``; its data stay
for the report.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from features.infra import DataError, read_toml
from features.rules import rule_line

KINDS = ("control", "popular", "category_bestsellers", "model")
ENDPOINTS = ("recommend", "also_bought")
SHARE_TOLERANCE = 1e-6


@dataclass(frozen=True)
class Variant:
    name: str
    kind: str
    share: float
    model: str | None = None


@dataclass(frozen=True)
class Experiment:
    name: str
    endpoint: str
    start: datetime
    end: datetime
    variants: tuple[Variant, ...]
    path: str = ""

    def active(self, at: datetime) -> bool:
        return self.start <= at < self.end

    def assign(self, user_id: str) -> Variant:
        """The shopper's variant by hash: the same everywhere, every time."""
        point = bucket(self.name, user_id)
        total = 0.0
        for variant in self.variants:
            total += variant.share
            if point < total:
                return variant
        return self.variants[-1]

    def variant(self, name: str) -> Variant | None:
        return next((v for v in self.variants if v.name == name), None)


def bucket(experiment: str, user_id: str) -> float:
    """A uniform number in [0, 1) from (experiment, user id)."""
    digest = hashlib.sha256(f"{experiment}\x00{user_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def load_experiment(path: str | Path) -> Experiment:
    doc, text = read_toml(path, "the experiment")
    return parse_experiment(doc, str(path), text)


def parse_experiment(doc: dict[str, Any], path: str = "experiment", text: str = "") -> Experiment:
    def fail(message: str, key: str | None = None, value: object = None,
             table: str = "experiment", index: int = 0) -> DataError:
        return DataError(message, path=path, row=rule_line(text, table, index, key), column=key,
                         value=value)

    unknown = set(doc) - {"experiment", "variant"}
    if unknown:
        raise fail("unknown table (tables: [experiment], [[variant]])", sorted(unknown)[0])
    head = doc.get("experiment")
    if not isinstance(head, dict):
        raise fail("an [experiment] table is needed")
    extra = set(head) - {"name", "endpoint", "start", "end"}
    if extra:
        raise fail("[experiment] has no such field (its fields: name, endpoint, start, end)",
                   sorted(extra)[0])
    name = head.get("name")
    if not isinstance(name, str) or not re.fullmatch(r"[\w.-]{1,64}", name or ""):
        raise fail("name: letters, digits, '_', '.', '-' (1..64)", "name", name)
    endpoint = head.get("endpoint", "recommend")
    if endpoint not in ENDPOINTS:
        raise fail(f"endpoint must be one of {', '.join(ENDPOINTS)}", "endpoint", endpoint)
    start, end = (_time(head.get(k), k, fail) for k in ("start", "end"))
    if end <= start:
        raise fail("end must come after start", "end", str(end))
    tables = doc.get("variant")
    if not isinstance(tables, list) or len(tables) < 2:
        raise fail("at least two [[variant]] tables are needed", table="variant")
    variants, names = [], set()
    for i, table in enumerate(tables):
        extra = set(table) - {"name", "kind", "share", "model"}
        if extra:
            raise fail("[[variant]] has no such field (its fields: name, kind, share, model)",
                       sorted(extra)[0], table="variant", index=i)
        vname, kind, share = table.get("name"), table.get("kind"), table.get("share")
        if not isinstance(vname, str) or not vname.strip() or vname in names:
            raise fail("every variant needs a unique name", "name", vname, "variant", i)
        names.add(vname)
        if kind not in KINDS:
            raise fail(f"kind must be one of {', '.join(KINDS)}", "kind", kind, "variant", i)
        if isinstance(share, bool) or not isinstance(share, int | float) or not 0 < share <= 1:
            raise fail("share must be a number in (0, 1]", "share", share, "variant", i)
        if endpoint == "also_bought" and kind not in ("control", "model"):
            raise fail("/also_bought experiments take control and model variants", "kind", kind,
                       "variant", i)
        model = table.get("model")
        if (kind == "model") != (model is not None):
            raise fail("a model variant names its model (and only it does)", "model", model,
                       "variant", i)
        variants.append(Variant(vname, kind, float(share), str(model) if model else None))
    total = sum(v.share for v in variants)
    if abs(total - 1.0) > SHARE_TOLERANCE:
        raise fail(f"the variants' shares sum to {total:g}, not 1", "share", total, "variant")
    return Experiment(name, endpoint, start, end, tuple(variants), path)


def check_overlaps(experiments: list[Experiment]) -> None:
    """Two experiments on one endpoint at the same time would fight over its shoppers."""
    for i, a in enumerate(experiments):
        if any(b.name == a.name for b in experiments[:i]):
            raise DataError(f"two experiments are named {a.name!r}", path=a.path)
        for b in experiments[:i]:
            if a.endpoint == b.endpoint and a.start < b.end and b.start < a.end:
                raise DataError(f"experiments {b.name!r} ({b.path}) and {a.name!r} overlap on "
                                f"/{a.endpoint}: end one before the other starts", path=a.path)


def _time(value: Any, key: str, fail) -> datetime:
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    if isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            parsed = None
        if parsed is not None:
            return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
    raise fail("must be a date-time (2026-12-01T00:00:00Z)", key, value)
