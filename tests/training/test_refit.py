"""The refit for serving: its epoch plan (known answers), and a real run whose served bundle
knows the items and events the evaluation held out."""

from __future__ import annotations

import contextlib
import io
import re
from pathlib import Path

import pytest

import training.train as train
from features.config import FeatureConfig
from features.pipeline import prepare
from features.spec import parse_spec
from models.bundle import Bundle
from tests.conftest import TINY
from training.fit import NEWEST_WEIGHTS, FitResult
from training.refit import plan_refit, refit_data


def evaluation(best_epoch: int, epochs: int, per_epoch: int, seconds: float) -> FitResult:
    history = [{"epoch": e, "examples": per_epoch} for e in range(1, epochs + 1)]
    return FitResult(model=None, best_epoch=best_epoch, best_score=0.0, history=history,
                     seconds=seconds, examples=per_epoch * epochs)


def test_every_window_per_epoch_keeps_the_best_epoch_count() -> None:
    # 1,000 training events -> 800 examples an epoch; the refit has 1,500 events: 1,200 an epoch
    plan = plan_refit(evaluation(3, 6, 800, seconds=60.0), 1_000, 1_500, max_epoch_examples=0)
    assert plan.epochs == 3 and plan.data_ratio == pytest.approx(1.5)
    # 10 s an epoch of 800 examples -> 15 s an epoch of 1,200, 3 of them
    assert plan.minutes == pytest.approx(45 / 60)


def test_capped_epochs_are_scaled_to_the_data() -> None:
    # epochs are samples of 800 examples: twice the data needs twice the sampled epochs to see
    # each event as often as the best evaluation epoch had
    plan = plan_refit(evaluation(3, 5, 800, seconds=50.0), 1_000, 2_000, max_epoch_examples=800)
    assert plan.epochs == 6
    assert plan.minutes == pytest.approx(60 / 60)


def test_the_refit_trains_at_least_one_epoch() -> None:
    assert plan_refit(evaluation(0, 0, 0, 0.0), 10, 10, 0).epochs >= 1


def test_refit_data_holds_every_event_and_item(tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TAILOR_CACHE", str(tmp_path))
    spec = parse_spec("synthetic")
    evaluated = prepare(spec, FeatureConfig())
    full = refit_data(spec, FeatureConfig())
    assert len(full.events) == len(evaluated.events)
    assert set(full.item_vocab.ids) == set(evaluated.events["item_id"])
    assert len(full.item_vocab) > len(evaluated.item_vocab)  # items first seen after the cut
    assert full.targets.empty


def test_served_bundle_is_refitted_on_all_data(tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TAILOR_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("RANK", raising=False)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert train.main([*TINY, "--out", str(tmp_path / "refit")]) == 0
        assert train.main([*TINY, "--no-refit", "--out", str(tmp_path / "plain")]) == 0
    refitted, plain = Bundle.load(tmp_path / "refit"), Bundle.load(tmp_path / "plain")
    evaluated = prepare(parse_spec("synthetic"), FeatureConfig())
    # the refit knows every item of the data; the evaluation's model only the training fold's
    assert set(refitted.item_vocab.ids) == set(evaluated.events["item_id"])
    assert set(plain.item_vocab.ids) == set(evaluated.item_vocab.ids)
    assert refitted.model.cfg.n_items == len(refitted.item_vocab) == len(refitted.item_vectors)
    # both carry the evaluation's metrics and settings; only the refit says what it was fit on
    def quality(info: dict) -> dict:
        return {method: {k: v for k, v in row.items() if "@" in k}
                for method, row in info["metrics"]["test"].items()}

    assert quality(refitted.info) == quality(plain.info)
    assert refitted.info["features"]["split"] == "auto"
    assert refitted.info["refit"]["events"] == len(evaluated.events)
    assert "refit" not in plain.info
    # the stack's weights were chosen once, on validation, and are the same in both
    assert refitted.blend.weights == plain.blend.weights
    # so was the newest item's weight in the served user vector (the default model has the path)
    chosen = plain.info["fit"]["newest_weight"]
    assert chosen in NEWEST_WEIGHTS and refitted.info["fit"]["newest_weight"] == chosen
    assert float(plain.model.newest_weight) == float(refitted.model.newest_weight) == chosen
    assert set(refitted.sources) == set(plain.sources)
    assert re.search(r"^refit\s+\d+ epochs \(planned \d+\)", out.getvalue(), re.M)
