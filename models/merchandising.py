"""Merchandising on the model's ranking: filters, boosts, pins, a cap per category and diversity.

``Plan`` is a ``features.rules.Rules`` checked against one catalog (unknown categories and items
are errors) and turned into per-item arrays once; ``arrange`` applies it to each list's
candidates, the model's top ``pool_size(k)`` items:

* relevance is the model's score rescaled to 0..1 within the candidates, so a boost means the
  same on tower logits, blended scores and popularity counts: ``relevance * multiply + add``;
* the list is filled greedily by maximal marginal relevance (Carbonell & Goldstein, 1998):
  each slot takes the candidate with the highest
  ``(1 - diversity) * boosted relevance - diversity * (max cosine to the items already taken)``,
  so ``diversity`` 0 is the model's order and 1 picks the least similar item each time;
* a candidate whose leaf category already fills ``max_per_category`` slots is skipped; once
  ``max_boosted`` boosted items are in, the others compete without their boost;
* pins take their slots last (a slot past the end appends), if the item is allowed at all;
* items a shopper was shown again and again without interacting keep ``DEMOTION`` of their
  relevance (the "ramen" loop; serving says which).

A boost re-orders the candidates; it does not pull in items the model ranks below them (pin
those). Scores stay the model's; a pinned item the model did not rank has a NaN score.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from features.rules import Rules

# Chosen by benchmarks/merchandising.py (BENCHMARKS.md, "Merchandising"): the largest value
# whose NDCG@10 stayed within noise of the model's order on Toys, Tmall and the embedded shop
# (-0.1%, +0.9%, -0.7%), for 2-3% more intra-list diversity; 0.3 cost Toys 1.3%. No category
# cap by default: a cap of 3 cost the embedded shop 1.7%, 2 cost it 12%.
DEFAULT_DIVERSITY = 0.2
DEFAULT_MAX_PER_CATEGORY = 0
POOL_MIN, POOL_FACTOR = 100, 5
# An item shown to a shopper again and again without an interaction (serving's "ramen" loop)
# keeps this share of its relevance: it falls behind the fresher candidates near it, not out.
DEMOTION = 0.5
RANKED, BOOSTED, PINNED = 0, 1, 2    # why an item holds its slot (``arrange``'s flags)


def pool_size(k: int) -> int:
    """Candidates merchandising chooses from, for a list of ``k``."""
    return max(POOL_MIN, POOL_FACTOR * k)


class RuleError(ValueError):
    """A rule that does not fit the catalog: which table, which entry and field."""

    def __init__(self, message: str, table: str, key: str, value: object = None,
                 index: int = 0) -> None:
        super().__init__(message)
        self.message, self.table, self.key, self.value, self.index = \
            message, table, key, value, index


class Catalog:
    """What merchandising reads of a bundle's items, built once per loaded model."""

    def __init__(self, ids: np.ndarray, items: pd.DataFrame, vectors: np.ndarray) -> None:
        self.ids = ids
        self.rows = {item_id: row for row, item_id in enumerate(ids)}
        self.leaf = item_strings(items, "category_id")
        self.parent = item_strings(items, "parent_category_id")
        self.leaf_code = pd.factorize(self.leaf)[0] if self.leaf is not None else \
            np.full(len(ids), -1)
        if self.leaf is not None:
            self.leaf_code[self.leaf == ""] = -1
        # Text from an items file, numbers, or missing (an item added without one): NaN is
        # no price, which no price range admits.
        self.price = pd.to_numeric(items["price"], errors="coerce").to_numpy(
            dtype=np.float64, na_value=np.nan) if "price" in items else None
        self.unit = np.asarray(vectors, dtype=np.float32)   # the bundle's: unit length

    def __len__(self) -> int:
        return len(self.ids)

    def category_mask(self, category: str) -> np.ndarray:
        """Items whose leaf or parent category is ``category`` (all False: none)."""
        mask = np.zeros(len(self.ids), dtype=bool)
        for column in (self.leaf, self.parent):
            if column is not None:
                mask |= column == category
        return mask


@dataclass(frozen=True, eq=False)
class Plan:
    diversity: float
    max_per_category: int
    max_boosted: int
    allowed: np.ndarray | None        # the filters' mask over items (None: no filter)
    multiply: np.ndarray | None       # per item (None: no boost)
    add: np.ndarray | None
    boosted: np.ndarray | None        # bool per item
    pins: tuple[tuple[int, int], ...]  # (item row, slot from 1), by slot

    @property
    def plain(self) -> bool:
        """Nothing to arrange: the model's order as it is (filters act before ranking)."""
        return (self.diversity == 0 and self.max_per_category == 0 and self.multiply is None
                and not self.pins)


def make_plan(rules: Rules, catalog: Catalog) -> Plan:
    """``rules`` for ``catalog``; a ``RuleError`` names a category or item it does not hold."""
    n = len(catalog)
    allowed = None
    for category in rules.exclude_categories:
        mask = _category(catalog, category, "filter", "exclude_categories", 0)
        allowed = (np.ones(n, dtype=bool) if allowed is None else allowed) & ~mask
    for item in rules.exclude_items:
        row = _row(catalog, item, "filter", "exclude_items", 0)
        allowed = np.ones(n, dtype=bool) if allowed is None else allowed
        allowed[row] = False
    if rules.price_min is not None or rules.price_max is not None:
        if catalog.price is None:
            key = "price_min" if rules.price_min is not None else "price_max"
            raise RuleError("this model's items have no price", "filter", key)
        price = np.nan_to_num(catalog.price, nan=-1.0)
        low = -np.inf if rules.price_min is None else rules.price_min
        high = np.inf if rules.price_max is None else rules.price_max
        in_range = (price >= low) & (price <= high) & ~np.isnan(catalog.price)
        allowed = in_range if allowed is None else allowed & in_range
    multiply = add = boosted = None
    if rules.boosts:
        multiply, add = np.ones(n, dtype=np.float32), np.zeros(n, dtype=np.float32)
        boosted = np.zeros(n, dtype=bool)
        for i, boost in enumerate(rules.boosts):
            if boost.item_id is not None:
                mask = np.zeros(n, dtype=bool)
                mask[_row(catalog, boost.item_id, "boost", "item_id", i)] = True
            else:
                mask = _category(catalog, boost.category, "boost", "category", i)
            multiply[mask] *= boost.multiply
            add[mask] += boost.add
            boosted |= mask
    pins = tuple(sorted(((_row(catalog, p.item_id, "pin", "item_id", i), p.slot)
                         for i, p in enumerate(rules.pins)), key=lambda pin: pin[1]))
    diversity = DEFAULT_DIVERSITY if rules.diversity is None else rules.diversity
    per_category = DEFAULT_MAX_PER_CATEGORY if rules.max_per_category is None \
        else rules.max_per_category
    return Plan(diversity, per_category, rules.max_boosted or 0, allowed, multiply, add,
                boosted, pins)


def _category(catalog: Catalog, category: str, table: str, key: str, index: int) -> np.ndarray:
    mask = catalog.category_mask(category)
    if not mask.any():
        raise RuleError(f"no item has category {category!r}", table, key, category, index)
    return mask


def _row(catalog: Catalog, item_id: str, table: str, key: str, index: int) -> int:
    row = catalog.rows.get(item_id, -1)
    if row < 0:
        raise RuleError(f"unknown item {item_id!r}", table, key, item_id, index)
    return row


# --- arranging the lists ----------------------------------------------------------------------

def arrange(plan: Plan, catalog: Catalog, rows: np.ndarray, scores: np.ndarray, k: int,
            blocked: list[np.ndarray] | None = None, allowed: np.ndarray | None = None,
            demote: list[np.ndarray] | None = None
            ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Top-``k`` of each row's candidates (``rows``/``scores``, (n, pool), best first, -1 pads)
    under ``plan``: (rows, scores, flags), each (n, k). ``allowed`` and ``blocked`` (per list:
    excluded rows) decide whether a pinned item may appear; ``demote`` (per list) rows whose
    relevance is multiplied by ``DEMOTION``."""
    n = len(rows)
    out_rows = np.full((n, k), -1, dtype=np.int64)
    out_scores = np.full((n, k), -np.inf, dtype=np.float32)
    flags = np.zeros((n, k), dtype=np.int8)
    for i in range(n):
        pins = [(r, s) for r, s in plan.pins
                if (allowed is None or allowed[r])
                and (blocked is None or not np.isin(r, blocked[i]))]
        pinned = np.array([r for r, _ in pins], dtype=np.int64)
        keep = (rows[i] >= 0) & ~np.isin(rows[i], pinned)
        cand, cand_scores = rows[i][keep], scores[i][keep]
        chosen, is_boosted = _choose(plan, catalog, cand, cand_scores, k - len(pins),
                                     None if demote is None else demote[i])
        got = list(cand[chosen])
        got_flags = [BOOSTED if b else RANKED for b in is_boosted]
        for row, slot in pins:   # by slot, so earlier pins keep theirs
            at = min(slot - 1, len(got))
            got.insert(at, row)
            got_flags.insert(at, PINNED)
        got, got_flags = got[:k], got_flags[:k]
        model_score = dict(zip(rows[i][rows[i] >= 0].tolist(),
                               scores[i][rows[i] >= 0].tolist(), strict=True))
        out_rows[i, :len(got)] = got
        out_scores[i, :len(got)] = [model_score.get(r, np.nan) for r in got]
        flags[i, :len(got)] = got_flags
    return out_rows, out_scores, flags


def _choose(plan: Plan, catalog: Catalog, cand: np.ndarray, scores: np.ndarray, k: int,
            demoted: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Positions in ``cand`` of the items taken, in slot order, and whether each one's boost
    counted."""
    if k <= 0 or not len(cand):
        return np.array([], dtype=np.int64), np.array([], dtype=bool)
    low, high = float(scores.min()), float(scores.max())
    relevance = (scores - low) / (high - low) if high > low else np.ones(len(cand), np.float32)
    relevance = relevance.astype(np.float32)
    if demoted is not None and len(demoted):
        relevance[np.isin(cand, demoted)] *= np.float32(DEMOTION)
    boosted = plan.boosted[cand] if plan.boosted is not None else np.zeros(len(cand), bool)
    lifted = relevance * plan.multiply[cand] + plan.add[cand] if plan.multiply is not None \
        else relevance
    if plan.diversity == 0 and plan.max_per_category == 0 and plan.max_boosted == 0:
        order = np.argsort(-lifted, kind="stable")[:k]   # stable: the model's order on ties
        return order, boosted[order]
    lam = np.float32(plan.diversity)
    vectors = catalog.unit[cand]
    nearest = np.full(len(cand), -1.0, dtype=np.float32)   # max cosine to the taken items
    open_ = np.ones(len(cand), dtype=bool)
    per_category: dict[int, int] = {}
    taken, took_boost, n_boosted = [], [], 0
    codes = catalog.leaf_code[cand]
    for _ in range(min(k, len(cand))):
        gain = lifted if not plan.max_boosted or n_boosted < plan.max_boosted else \
            np.where(boosted, relevance, lifted)
        value = (1 - lam) * gain - lam * nearest if lam else gain.copy()
        value[~open_] = -np.inf
        best = int(np.argmax(value))
        if value[best] == -np.inf:
            break
        taken.append(best)
        counted = bool(boosted[best] and gain[best] != relevance[best])
        took_boost.append(counted)
        n_boosted += counted
        open_[best] = False
        code = int(codes[best])
        if plan.max_per_category and code >= 0:
            per_category[code] = per_category.get(code, 0) + 1
            if per_category[code] >= plan.max_per_category:
                open_ &= codes != code
        if lam:
            np.maximum(nearest, vectors @ vectors[best], out=nearest)
    return np.array(taken, dtype=np.int64), np.array(took_boost, dtype=bool)


def item_strings(items: pd.DataFrame, column: str) -> np.ndarray | None:
    """A metadata column as an object array of strings ("" where missing); None without it."""
    if column not in items:
        return None
    return items[column].astype("string").fillna("").to_numpy(dtype=object)
