"""The ranking stack: tower scores plus sparse candidate signals, weighted on validation data.

The towers generalize (new shoppers, long tails, embeddings for the index); sparse signals are
sharp where the data has them: shoppers cart and buy what they just looked at ("repeat"), and
some items reliably come next or together (item-kNN, sequential item-kNN). Rather than let one
win, the stack scores every item as

    tower logit + sum over sources s of  w_s * log1p(signal_s / scale_s)

where ``scale_s`` makes each signal unit-free and the weights ``w_s`` are chosen on the
*validation* fold by coordinate ascent on the protocol's metric, with the signals fitted on the
training fold only, so nothing about the test window leaks into the weights
(``training/stack.py`` chooses them). A weight of 0
switches a source off: on data where a signal does not help, the stack is the towers alone.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from features.config import setting
from features.history import Histories
from models.base import Recommender
from models.baselines import BASELINES, Baseline, Repeat, RepeatConfig
from models.scoring import TwoTowerRecommender

# The sparse signals the stack can weigh: every baseline, and the shopper's own items split by
# event type, so validation weighs "carted it" apart from "looked at it" and "bought it" (carted
# items tend to be bought next; bought ones are seldom bought again at once; on purchase-only
# data the view and cart signals are empty and stay at weight 0).
SOURCES: dict[str, tuple[type[Baseline], object | None]] = {
    **{name: (cls, None) for name, cls in BASELINES.items()},
    "repeat-view": (Repeat, RepeatConfig(event_weights=(1.0, 0.0, 0.0))),
    "repeat-cart": (Repeat, RepeatConfig(event_weights=(0.0, 1.0, 0.0))),
    "repeat-purchase": (Repeat, RepeatConfig(event_weights=(0.0, 0.0, 1.0))),
}
# Views and carts again with a month's memory (50 events without time) beside the week's:
# shoppers come back to an item they are weighing over weeks, and two weighted time scales let
# validation draw a decay of any shape between them.
SOURCES |= {f"{name}-long": (Repeat, replace(SOURCES[name][1], tau_days=30.0, tau_steps=50.0))
            for name in ("repeat-view", "repeat-cart")}


def fit_source(name: str, prepared, fold: str) -> Baseline:
    """Source ``name`` fitted on the events a shopper may use as input for ``fold``."""
    if name not in SOURCES:
        raise ValueError(f"unknown ranking-stack source {name!r}; choose from "
                         f"{', '.join(SOURCES)}")
    cls, config = SOURCES[name]
    return cls.from_prepared(prepared, fold=fold, config=config)


@dataclass(frozen=True)
class BlendConfig:
    sources: tuple[str, ...] = setting(
        ("repeat-view", "repeat-cart", "repeat-purchase", "repeat-view-long", "repeat-cart-long",
         "item-knn", "seq-item-knn"),
        "sparse signals scored together with the towers (weights chosen on validation; 0 switches"
        " one off): repeat-view, repeat-cart, repeat-purchase (the shopper's own items by event "
        "type, a week's memory), repeat-view-long, repeat-cart-long (a month's), repeat (all "
        "types), item-knn, seq-item-knn, most-popular")
    grid: tuple[float, ...] = setting(
        (0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, 8.0, 12.0, 16.0, 24.0, 32.0),
        "candidate weights tried for each source")
    rounds: int = setting(2, "coordinate-ascent passes over the sources")
    # 2,000 were too few: on Sports two weightings 0.0002 apart in validation NDCG@10 were 0.0046
    # apart on the test fold's 35,000 shoppers, and the worse one won.
    max_users: int = setting(5000, "validation shoppers the weights are chosen on")
    max_cells: int = setting(
        600_000_000,
        "bound on users x items x signals held in memory while choosing")
    k: int = setting(10, "the weights maximize NDCG@k on validation")

    def __post_init__(self) -> None:
        unknown = [name for name in self.sources if name not in SOURCES]
        if unknown:
            raise ValueError(f"unknown ranking-stack source(s) {', '.join(unknown)}; choose "
                             f"from {', '.join(SOURCES)}")

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class BlendWeights:
    weights: dict[str, float] = field(default_factory=dict)
    scales: dict[str, float] = field(default_factory=dict)
    valid_ndcg: float = float("nan")        # NDCG@k of the chosen weights on validation
    towers_valid_ndcg: float = float("nan")  # the same for the towers alone

    @property
    def active(self) -> dict[str, float]:
        return {name: w for name, w in self.weights.items() if w > 0}

    def to_dict(self) -> dict:
        return asdict(self)


def signal(raw: np.ndarray, scale: float) -> np.ndarray:
    """Unit-free, saturating transform of a non-negative sparse score."""
    return np.log1p(np.maximum(raw, 0.0) / np.float32(scale)).astype(np.float32)


class BlendedRecommender(Recommender):
    """Towers + weighted sparse signals: what Tailor evaluates and serves."""

    name = "tailor"

    def __init__(self, towers: TwoTowerRecommender, sources: dict[str, Baseline],
                 blend: BlendWeights) -> None:
        self.towers = towers
        self.blend = blend
        self.sources = {name: sources[name] for name in blend.active}

    @property
    def n_items(self) -> int:
        return self.towers.n_items

    def user_vectors(self, histories: Histories) -> np.ndarray:
        return self.towers.user_vectors(histories)

    def score(self, histories: Histories) -> np.ndarray:
        scores = self.towers.score(histories)
        for name, source in self.sources.items():
            scores += self.blend.weights[name] * signal(source.score(histories),
                                                        self.blend.scales[name])
        return scores

    def score_items(self, histories: Histories, rows: np.ndarray) -> np.ndarray:
        scores = self.towers.score_items(histories, rows)
        for name, source in self.sources.items():
            scores += self.blend.weights[name] * signal(source.score_items(histories, rows),
                                                        self.blend.scales[name])
        return scores


# --- persistence (inside the model bundle) ----------------------------------------------------

def save_sources(sources: dict[str, Baseline], folder: Path) -> None:
    """Each source's config, popularity filler and (for kNN) similarity matrix."""
    folder.mkdir(parents=True, exist_ok=True)
    meta = {}
    for name, source in sources.items():
        meta[name] = {"config": asdict(source.config)}
        np.save(folder / f"{name}.popularity.npy", source.popularity)
        if hasattr(source, "similarity"):
            sp.save_npz(folder / f"{name}.similarity.npz", source.similarity.tocsr())
    (folder / "sources.json").write_text(json.dumps(meta, indent=2))


def load_sources(folder: Path, item_vocab) -> dict[str, Baseline]:
    meta = json.loads((folder / "sources.json").read_text())
    sources = {}
    for name, entry in meta.items():
        cls = SOURCES[name][0]
        config = cls.config_type(**{k: tuple(v) if isinstance(v, list) else v
                                    for k, v in entry["config"].items()})
        source = cls(item_vocab, np.load(folder / f"{name}.popularity.npy"), config)
        sim = folder / f"{name}.similarity.npz"
        if sim.exists():
            source.similarity = sp.load_npz(sim).tocsr()
        sources[name] = source
    return sources
