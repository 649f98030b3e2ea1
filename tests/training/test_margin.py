"""The promotion margin: a bootstrap over test shoppers, checked against the standard errors
that statistics gives in closed form for 0/1 values."""

from __future__ import annotations

import numpy as np
import pytest

from training.margin import Z_95, bootstrap_lift


def hits(n: int, found: int) -> np.ndarray:
    return (np.arange(n) < found).astype(float)


def test_identical_models_have_no_lift_and_no_margin() -> None:
    values = hits(300, 40)
    lift = bootstrap_lift(values, values.copy(), paired=True)
    assert lift.lift == 0 and lift.margin == 0 and lift.interval == (0.0, 0.0)


def test_paired_margin_is_the_standard_error_of_the_mean_difference() -> None:
    # 30 of 1,000 shoppers gained a hit: differences are Bernoulli(0.03)
    champion, candidate = hits(1000, 100), hits(1000, 130)
    lift = bootstrap_lift(candidate, champion, paired=True, seed=1)
    assert lift.lift == pytest.approx(0.03)
    assert lift.margin == pytest.approx(Z_95 * np.sqrt(0.03 * 0.97 / 1000), rel=0.1)
    assert lift.interval[0] > 0 and lift.shoppers == 1000 and "paired" in lift.method


def test_unpaired_margin_adds_both_folds_variances() -> None:
    candidate, champion = hits(1000, 130), hits(800, 100)
    lift = bootstrap_lift(candidate, champion, paired=False, seed=2)
    se = np.sqrt(0.13 * 0.87 / 1000 + 0.125 * 0.875 / 800)
    assert lift.margin == pytest.approx(Z_95 * se, rel=0.1)
    assert lift.shoppers == 1800 and "unpaired" in lift.method
    # pairing the same shoppers removes their own variance: a far smaller margin
    paired = bootstrap_lift(hits(1000, 130), hits(1000, 100), paired=True, seed=2)
    assert paired.margin < lift.margin / 2


def test_a_side_without_values_counts_as_a_fixed_number() -> None:
    lift = bootstrap_lift(None, hits(500, 50), paired=False, candidate_mean=0.2)
    assert lift.candidate == 0.2 and lift.lift == pytest.approx(0.1)
    assert lift.margin == pytest.approx(Z_95 * np.sqrt(0.1 * 0.9 / 500), rel=0.1)
    assert "champion" in lift.method and "candidate" not in lift.method
    none = bootstrap_lift(None, None, paired=False, candidate_mean=0.3, champion_mean=0.2)
    assert none.lift == pytest.approx(0.1) and none.margin == 0
    assert none.method == "no per-shopper values: no margin"


def test_seeded_and_checked() -> None:
    a, b = hits(200, 30), hits(200, 20)
    assert bootstrap_lift(a, b, paired=True, seed=5) == bootstrap_lift(a, b, paired=True, seed=5)
    with pytest.raises(ValueError, match="same shoppers"):
        bootstrap_lift(a, b[:100], paired=True)
