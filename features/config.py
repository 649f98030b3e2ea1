"""Settings of the feature stage: one frozen dataclass, defaults that run as they are."""

from __future__ import annotations

import argparse
from dataclasses import asdict, dataclass, fields

PROTOCOLS = ("auto", "temporal", "leave-one-out", "predefined")


@dataclass(frozen=True)
class FeatureConfig:
    # Split. "auto": a `split` column -> predefined; timestamps -> temporal; else leave-one-out.
    split: str = "auto"
    # Temporal test window in days. None: 14 days, shrunk to a fifth of the data's span for short
    # logs (10 days of data -> 2 test days), so the same default works on short and long logs.
    test_days: float | None = None
    valid_days: float | None = None  # None: same as the test window
    seed: int = 0  # for the predefined split's validation hold-out
    # User histories: the most recent L events feed the user tower and the service.
    history_len: int = 50
    # Item popularity: events in this many days before the cut (all events for data without time).
    popularity_days: float = 7.0
    # Bought together: pairs of cart/purchase events of the same user at most `cooccur_days` apart
    # (and at most `cooccur_neighbors` events apart, which bounds the work), top-M kept per item.
    cooccur_days: float = 7.0
    cooccur_neighbors: int = 10
    cooccur_min_count: int = 2
    cooccur_top_m: int = 50

    def __post_init__(self) -> None:
        if self.split not in PROTOCOLS:
            raise ValueError(f"split must be one of {', '.join(PROTOCOLS)}, got {self.split!r}")
        for name in ("test_days", "valid_days"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ValueError(f"{name} must be positive, got {value}")
        if self.history_len < 1 or self.cooccur_top_m < 1 or self.cooccur_neighbors < 1:
            raise ValueError("history_len, cooccur_top_m and cooccur_neighbors must be >= 1")

    def to_dict(self) -> dict:
        return asdict(self)


_HELP = {
    "split": "evaluation protocol: auto, temporal, leave-one-out or predefined",
    "test_days": "temporal test window in days (default: 14, or a fifth of a shorter log)",
    "valid_days": "temporal validation window in days (default: the test window)",
    "seed": "seed of the validation hold-out for predefined splits",
    "history_len": "events kept per user history (L)",
    "popularity_days": "window in days for recent item popularity",
    "cooccur_days": "max days between two cart/purchase events counted as bought together",
    "cooccur_neighbors": "max events apart for a bought-together pair (bounds the work)",
    "cooccur_min_count": "min shoppers per bought-together pair",
    "cooccur_top_m": "bought-together neighbours kept per item",
}


def add_feature_args(parser: argparse.ArgumentParser) -> None:
    """One flag per field, defaults from the dataclass, so --help documents every setting."""
    group = parser.add_argument_group("features")
    defaults = FeatureConfig()
    for f in fields(FeatureConfig):
        default = getattr(defaults, f.name)
        kind = {"int": int, "str": str}.get(str(f.type), float)
        group.add_argument(f"--{f.name.replace('_', '-')}", type=kind, default=default,
                           choices=PROTOCOLS if f.name == "split" else None,
                           help=f"{_HELP[f.name]} (default: {default})")


def feature_config_from_args(args: argparse.Namespace) -> FeatureConfig:
    return FeatureConfig(**{f.name: getattr(args, f.name) for f in fields(FeatureConfig)})
