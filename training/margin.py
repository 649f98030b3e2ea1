"""How large a lift must be to not be noise: a bootstrap over test shoppers.

A test fold of a few thousand shoppers measures NDCG@10 with an error of a few percent of its
value; two models a hair apart are the same model. Resampling the shoppers (with replacement)
and recomputing the lift many times gives its spread; the **margin** is 1.96 of those standard
errors (a two-sided 95% level). Paired when both models ranked the same shoppers, which removes
the shoppers' own variance and so gives a far smaller margin than two independent folds.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

Z_95 = 1.96
N_BOOT = 1000
CHUNK = 50  # resamples drawn at once: bounds memory to CHUNK x shoppers indices


@dataclass(frozen=True)
class Lift:
    candidate: float              # mean of the candidate's values
    champion: float
    lift: float                   # candidate - champion
    margin: float                 # Z_95 bootstrap standard errors of the lift
    interval: tuple[float, float]  # the bootstrap's 2.5% and 97.5% quantiles of the lift
    shoppers: int                 # per-shopper values resampled (both sides when unpaired)
    method: str                   # what was resampled, in words

    def to_dict(self) -> dict:
        out = asdict(self)
        out["interval"] = list(self.interval)
        return out


def _resampled_means(values: np.ndarray, rng: np.random.Generator, n_boot: int) -> np.ndarray:
    n = len(values)
    out = np.empty(n_boot)
    for start in range(0, n_boot, CHUNK):
        stop = min(start + CHUNK, n_boot)
        out[start:stop] = values[rng.integers(0, n, size=(stop - start, n))].mean(axis=1)
    return out


def bootstrap_lift(candidate: np.ndarray | None, champion: np.ndarray | None, *, paired: bool,
                   seed: int = 0, n_boot: int = N_BOOT, candidate_mean: float | None = None,
                   champion_mean: float | None = None) -> Lift:
    """The lift ``mean(candidate) - mean(champion)`` and its margin.

    ``paired``: both arrays hold the same shoppers in the same order; the per-shopper
    differences are resampled. Otherwise each side is resampled on its own. A side given as
    None counts as the fixed number ``*_mean`` (a run logged without per-shopper values).
    """
    rng = np.random.default_rng(seed)
    c = None if candidate is None else np.asarray(candidate, dtype=np.float64)
    h = None if champion is None else np.asarray(champion, dtype=np.float64)
    c_mean = float(c.mean()) if c is not None and len(c) else float(candidate_mean or 0.0)
    h_mean = float(h.mean()) if h is not None and len(h) else float(champion_mean or 0.0)
    lift = c_mean - h_mean
    if paired:
        if c is None or h is None or len(c) != len(h):
            raise ValueError("a paired bootstrap needs both sides' values for the same shoppers")
        boot = _resampled_means(c - h, rng, n_boot)
        method, shoppers = f"paired bootstrap over {len(c):,} test shoppers", len(c)
    else:
        sides = [(c, c_mean), (h, h_mean)]
        if all(v is None or not len(v) for v, _ in sides):
            return Lift(c_mean, h_mean, lift, 0.0, (lift, lift), 0,
                        "no per-shopper values: no margin")
        boot = np.zeros(n_boot)
        for sign, (values, mean) in zip((1.0, -1.0), sides, strict=True):
            boot += sign * (_resampled_means(values, rng, n_boot) if values is not None
                            and len(values) else mean)
        shoppers = sum(len(v) for v, _ in sides if v is not None)
        known = " and ".join(name for name, (v, _) in zip(("candidate", "champion"), sides,
                                                          strict=True) if v is not None)
        method = f"bootstrap of the {known} test shoppers ({shoppers:,}), unpaired"
    low, high = np.quantile(boot, [0.025, 0.975])
    margin = Z_95 * float(boot.std(ddof=1))
    return Lift(c_mean, h_mean, lift, margin, (float(low), float(high)), shoppers, method)
