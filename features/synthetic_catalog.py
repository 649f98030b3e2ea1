"""The catalog of the synthetic shop: a category tree, planted complement pairs, popularity.

Kept apart from ``features.synthetic`` (which simulates the shoppers) so the shop's contents can
be read and changed in one place. Everything is whole-array numpy; the only Python loops run over
the few dozen leaf categories and complement kinds.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# (parent, leaf category, noun used in titles, typical price). Leaf names are unique across the
# tree, so the leaf name alone is the category_id.
LEAVES: tuple[tuple[str, str, str, float], ...] = (
    ("electronics", "printers", "printer", 180.0),
    ("electronics", "laptops", "laptop", 900.0),
    ("electronics", "cameras", "camera", 450.0),
    ("electronics", "phones", "phone", 600.0),
    ("electronics", "tvs", "tv", 700.0),
    ("electronics", "game-consoles", "game console", 400.0),
    ("electronics", "tablets", "tablet", 350.0),
    ("electronics", "headphones", "headphones", 120.0),
    ("accessories", "mice", "mouse", 30.0),
    ("accessories", "memory-cards", "memory card", 25.0),
    ("accessories", "phone-cases", "phone case", 20.0),
    ("accessories", "hdmi-cables", "hdmi cable", 12.0),
    ("accessories", "controllers", "controller", 55.0),
    ("accessories", "tablet-covers", "tablet cover", 30.0),
    ("accessories", "chargers", "charger", 25.0),
    ("office", "ink", "ink cartridge", 35.0),
    ("office", "paper", "paper pack", 8.0),
    ("office", "pens", "pen set", 6.0),
    ("office", "notebooks", "notebook", 5.0),
    ("office", "desk-lamps", "desk lamp", 40.0),
    ("office", "staplers", "stapler", 10.0),
    ("home", "coffee-makers", "coffee maker", 120.0),
    ("home", "coffee-filters", "coffee filters", 5.0),
    ("home", "vacuum-cleaners", "vacuum cleaner", 220.0),
    ("home", "vacuum-bags", "vacuum bags", 12.0),
    ("home", "cushions", "cushion", 25.0),
    ("home", "towels", "towel", 15.0),
    ("home", "candles", "candle", 10.0),
    ("sports", "bikes", "bike", 650.0),
    ("sports", "bike-helmets", "bike helmet", 60.0),
    ("sports", "tennis-rackets", "tennis racket", 110.0),
    ("sports", "tennis-balls", "tennis balls", 8.0),
    ("sports", "tents", "tent", 200.0),
    ("sports", "tent-pegs", "tent pegs", 9.0),
    ("sports", "yoga-mats", "yoga mat", 30.0),
    ("sports", "running-shoes", "running shoes", 90.0),
    ("toys", "train-sets", "train set", 80.0),
    ("toys", "train-tracks", "train tracks", 20.0),
    ("toys", "dolls", "doll", 30.0),
    ("toys", "doll-clothes", "doll outfit", 12.0),
    ("toys", "puzzles", "puzzle", 15.0),
    ("toys", "board-games", "board game", 35.0),
    ("toys", "building-blocks", "building blocks", 45.0),
    ("garden", "lawn-mowers", "lawn mower", 300.0),
    ("garden", "mower-blades", "mower blade", 25.0),
    ("garden", "grills", "grill", 250.0),
    ("garden", "grill-covers", "grill cover", 30.0),
    ("garden", "garden-hoses", "garden hose", 35.0),
    ("garden", "hose-nozzles", "hose nozzle", 10.0),
    ("garden", "plant-pots", "plant pot", 12.0),
    ("garden", "seeds", "seed packet", 3.0),
)

# (anchor leaf, complement leaf, complement noun). Every item of an anchor leaf has exactly one
# complement item of its own ("ink for printer 12"); complement leaves also hold generic items
# that belong to no pair, so a complement is not trivially guessable from its category.
COMPLEMENT_KINDS: tuple[tuple[str, str, str], ...] = (
    ("printers", "ink", "ink"),
    ("laptops", "mice", "mouse"),
    ("cameras", "memory-cards", "memory card"),
    ("phones", "phone-cases", "case"),
    ("tvs", "hdmi-cables", "hdmi cable"),
    ("game-consoles", "controllers", "controller"),
    ("tablets", "tablet-covers", "cover"),
    ("coffee-makers", "coffee-filters", "filters"),
    ("vacuum-cleaners", "vacuum-bags", "bags"),
    ("bikes", "bike-helmets", "helmet"),
    ("tennis-rackets", "tennis-balls", "balls"),
    ("tents", "tent-pegs", "pegs"),
    ("train-sets", "train-tracks", "tracks"),
    ("dolls", "doll-clothes", "outfit"),
    ("lawn-mowers", "mower-blades", "blade"),
    ("grills", "grill-covers", "cover"),
    ("garden-hoses", "hose-nozzles", "nozzle"),
)

LEAF_NAMES = np.array([leaf for _, leaf, _, _ in LEAVES], dtype=object)
PARENT_NAMES = np.array([parent for parent, _, _, _ in LEAVES], dtype=object)
_LEAF_INDEX = {leaf: i for i, leaf in enumerate(LEAF_NAMES)}


@dataclass(frozen=True)
class Catalog:
    """Item attributes as arrays indexed by item number (the number in the item id)."""

    ids: np.ndarray           # object array of "i000123"
    leaf: np.ndarray          # int leaf index into LEAVES
    title: np.ndarray         # object array of human-readable titles
    price: np.ndarray         # float64
    popularity: np.ndarray    # float64, Zipf-like, sums to 1
    complement: np.ndarray    # int item number of the planted complement, -1 if none
    leaf_weight: np.ndarray   # float64 per leaf: how many shoppers have it as a taste
    # Items sorted by leaf with cumulative popularity, for drawing "a popular item of leaf L".
    by_leaf: np.ndarray
    cum_pop: np.ndarray
    leaf_lo: np.ndarray       # cum_pop value where leaf L starts / ends
    leaf_hi: np.ndarray
    leaf_start: np.ndarray    # position in by_leaf where leaf L starts / ends
    leaf_end: np.ndarray
    printer: int              # the named printer (a popular one) for the demo and tests

    def draw_in_leaf(self, rng: np.random.Generator, leaf: np.ndarray) -> np.ndarray:
        """One popularity-weighted item per entry of ``leaf`` (inverse-CDF, vectorized)."""
        u = self.leaf_lo[leaf] + rng.random(len(leaf)) * (self.leaf_hi[leaf] - self.leaf_lo[leaf])
        pos = np.searchsorted(self.cum_pop, u, side="right")
        # Float round-off at a leaf's edge must not spill into the neighbouring leaf.
        pos = np.clip(pos, self.leaf_start[leaf], self.leaf_end[leaf] - 1)
        return self.by_leaf[pos]

    def draw_any(self, rng: np.random.Generator, n: int) -> np.ndarray:
        """``n`` popularity-weighted items from the whole catalog."""
        pos = np.searchsorted(np.cumsum(self.popularity), rng.random(n), side="right")
        return np.minimum(pos, len(self.ids) - 1)


def _split(total: int, weights: np.ndarray) -> np.ndarray:
    """Largest-remainder split of ``total`` into len(weights) non-negative integer parts."""
    raw = total * weights / weights.sum()
    parts = np.floor(raw).astype(np.int64)
    order = np.argsort(-(raw - parts), kind="stable")
    parts[order[: total - parts.sum()]] += 1
    return parts


def build_catalog(rng: np.random.Generator, n_items: int, pair_share: float,
                  zipf_exponent: float) -> Catalog:
    n_leaves = len(LEAVES)
    anchor_leaf = np.array([_LEAF_INDEX[a] for a, _, _ in COMPLEMENT_KINDS])
    comp_leaf = np.array([_LEAF_INDEX[c] for _, c, _ in COMPLEMENT_KINDS])
    # Shopper interest differs by leaf; printers are boosted so the demo printer gets buyers.
    leaf_weight = rng.lognormal(0.0, 0.5, n_leaves)
    leaf_weight[_LEAF_INDEX["printers"]] *= 3.0

    n_kinds = len(COMPLEMENT_KINDS)
    n_pairs = max(n_kinds, int(round(pair_share * n_items)))
    pairs_per_kind = _split(n_pairs, leaf_weight[anchor_leaf])
    pairs_per_kind = np.maximum(pairs_per_kind, 1)
    n_pairs = int(pairs_per_kind.sum())
    n_generic = n_items - 2 * n_pairs
    if n_generic < n_leaves:
        raise ValueError(f"n_items={n_items} is too small for the catalog")
    generic_leaves = np.setdiff1d(np.arange(n_leaves), anchor_leaf)
    # At least one item per leaf: a shopper may hold any leaf as a taste and must find items.
    generic_per_leaf = 1 + _split(n_generic - len(generic_leaves), leaf_weight[generic_leaves])

    # Lay items out grouped (anchors, their complements, generic items), then shuffle the item
    # numbers so ids carry no hint of category or pairing.
    kind_of_pair = np.repeat(np.arange(n_kinds), pairs_per_kind)
    leaf_grouped = np.concatenate([anchor_leaf[kind_of_pair], comp_leaf[kind_of_pair],
                                   np.repeat(generic_leaves, generic_per_leaf)])
    perm = rng.permutation(n_items)            # grouped position -> item number
    leaf = np.empty(n_items, np.int64)
    leaf[perm] = leaf_grouped
    complement = np.full(n_items, -1, np.int64)
    anchors, comps = perm[:n_pairs], perm[n_pairs:2 * n_pairs]
    complement[anchors] = comps

    # Titles number items within their leaf ("printer 1", "printer 2", ...) in item-id order.
    order = np.lexsort((np.arange(n_items), leaf))
    counts = np.bincount(leaf, minlength=n_leaves)
    number = np.empty(n_items, np.int64)
    number[order] = np.arange(n_items) - np.repeat(np.cumsum(counts) - counts, counts) + 1
    nouns = np.array([noun for _, _, noun, _ in LEAVES], dtype=object)
    title = np.array([f"{n} {k}" for n, k in zip(nouns[leaf], number, strict=True)], dtype=object)
    comp_noun = np.array([c for _, _, c in COMPLEMENT_KINDS], dtype=object)[kind_of_pair]
    title[comps] = [f"{c} for {a}" for c, a in zip(comp_noun, title[anchors], strict=True)]

    base_price = np.array([p for _, _, _, p in LEAVES])[leaf]
    price = np.maximum(np.round(base_price * rng.lognormal(0.0, 0.35, n_items)) - 0.01, 0.99)

    # Zipf over a random ranking of the whole catalog; the offset keeps the head from being a
    # single item that every shopper sees.
    rank = rng.permutation(n_items)
    popularity = (rank + 3.0) ** -zipf_exponent
    printers = anchors[leaf[anchors] == _LEAF_INDEX["printers"]]
    printer = int(printers[np.argmax(popularity[printers])])
    popularity[printer] = max(popularity[printer], np.quantile(popularity, 0.995))
    popularity /= popularity.sum()

    by_leaf = np.lexsort((np.arange(n_items), leaf))
    cum_pop = np.cumsum(popularity[by_leaf])
    leaf_end = np.cumsum(counts)
    leaf_start = leaf_end - counts
    leaf_hi = cum_pop[leaf_end - 1]
    leaf_lo = np.where(leaf_start > 0, cum_pop[np.maximum(leaf_start - 1, 0)], 0.0)
    width = max(6, len(str(n_items - 1)))
    ids = np.array([f"i{i:0{width}d}" for i in range(n_items)], dtype=object)
    return Catalog(ids=ids, leaf=leaf, title=title, price=price, popularity=popularity,
                   complement=complement, leaf_weight=leaf_weight, by_leaf=by_leaf,
                   cum_pop=cum_pop, leaf_lo=leaf_lo, leaf_hi=leaf_hi, leaf_start=leaf_start,
                   leaf_end=leaf_end, printer=printer)
