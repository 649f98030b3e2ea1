"""Experiments in serving (serving/experiments.py) and their report
(serving/experiment_report.py): variants answer as configured, assignment sticks, impressions
and outcomes are stored, and the report's figures have known answers."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from features.event_store import EventStore
from features.experiments import Experiment, Variant
from features.infra import DataError
from serving.api import ItemRequest, RecommendRequest
from serving.engine import Engine
from serving.experiment_report import build_report, outcomes, report
from serving.experiments import (
    Runner,
    also_bought_in_experiment,
    favourite_category,
    load_experiments,
    recommend_in_experiment,
)

NOW = datetime.now(UTC)


def experiment(*variants: Variant, name: str = "exp", endpoint: str = "recommend"
               ) -> Experiment:
    return Experiment(name, endpoint, NOW - timedelta(hours=1), NOW + timedelta(days=1),
                      tuple(variants))


@pytest.fixture
def store(tmp_path: Path) -> Iterator[EventStore]:
    store = EventStore(f"sqlite:///{tmp_path / 'events.db'}")
    yield store
    store.close()


def runner_of(engine: Engine, store: EventStore, *experiments: Experiment) -> Runner:
    return Runner(list(experiments), store, lambda ref: engine, {"tiny": engine})


def test_each_variant_answers_as_configured(engine: Engine, store: EventStore) -> None:
    variants = (Variant("control", "control", 0.25), Variant("popular", "popular", 0.25),
                Variant("favourite", "category_bestsellers", 0.25),
                Variant("model", "model", 0.25, "tiny"))
    runner = runner_of(engine, store, experiment(*variants))
    users = [str(u) for u in engine.bundle.histories.user_ids[:80]]
    seen = {}
    for user in users:
        answer = recommend_in_experiment(runner, engine, RecommendRequest(user_id=user, k=5))
        assert answer.experiment == "exp" and answer.request_id
        seen.setdefault(answer.variant, []).append((user, answer))
    assert set(seen) == {"control", "popular", "favourite", "model"}
    assert all(a.items == [] and a.strategy == "control" for _, a in seen["control"])
    assert all(a.strategy == "popular" for _, a in seen["popular"])
    assert all(a.strategy.startswith("history") for _, a in seen["model"])
    for user, answer in seen["favourite"]:   # bestsellers of the shopper's favourite category
        favourite = favourite_category(engine, RecommendRequest(user_id=user))
        assert answer.strategy == "popular:category"
        assert {item.category_id for item in answer.items} == {favourite}
    runner.flush()
    _, shown, _ = store.experiment_tables("exp")
    assert len(shown) == len(users)
    control_ids = {a.request_id for _, a in seen["control"]}
    assert all(items == [] for items in shown.loc[shown["request_id"].isin(control_ids),
                                                  "items"])


def test_assignment_sticks_when_the_shares_change(engine: Engine, store: EventStore) -> None:
    first = experiment(Variant("a", "control", 0.5), Variant("b", "popular", 0.5))
    runner = runner_of(engine, store, first)
    users = [f"shopper-{n}" for n in range(60)]
    before = {u: runner.assign(first, u).name for u in users}
    moved = replace(first, variants=(Variant("a", "control", 0.05),
                                     Variant("b", "popular", 0.95)))
    runner = runner_of(engine, store, moved)
    assert {u: runner.assign(moved, u).name for u in users} == before   # old shoppers stay
    newcomers = [runner.assign(moved, f"new-{n}").name for n in range(60)]
    assert newcomers.count("b") > 45                                     # new ones follow


def test_no_experiment_no_variant_and_an_ended_one_stops_assigning(engine: Engine,
                                                                   store: EventStore) -> None:
    ended = replace(experiment(Variant("a", "control", 0.5), Variant("b", "popular", 0.5)),
                    end=NOW - timedelta(minutes=1))
    runner = runner_of(engine, store, ended)
    answer = recommend_in_experiment(runner, engine, RecommendRequest(user_id="u1", k=3))
    assert answer.experiment is None and answer.variant is None and answer.request_id
    assert len(answer.items) == 3
    bought = also_bought_in_experiment(runner, engine, ItemRequest(item_id=str(engine.ids[0])))
    assert bought.request_id and bought.variant is None


def test_a_variant_with_a_missing_model_stops_the_start(tmp_path: Path) -> None:
    path = tmp_path / "exp.toml"
    path.write_text("""[experiment]
name = "x"
start = 2026-01-01T00:00:00Z
end = 2027-01-01T00:00:00Z
[[variant]]
name = "control"
kind = "control"
share = 0.5
[[variant]]
name = "m"
kind = "model"
model = "/no/such/bundle"
share = 0.5
""")
    from features.experiments import load_experiment
    with pytest.raises(DataError, match="variant 'm'"):
        load_experiments([path])
    assert load_experiment(path).name == "x"


def test_the_report_has_known_answers() -> None:
    exp = experiment(Variant("control", "control", 0.5), Variant("model", "model", 0.5, "m"))
    # 100 shoppers a variant; model: 40 impressions clicked, 20 carted, 30 buyers; control:
    # 10 buyers (organic), no items shown
    assigned = pd.DataFrame({"experiment": "exp",
                             "user_id": [f"c{i}" for i in range(100)] +
                                        [f"m{i}" for i in range(100)],
                             "variant": ["control"] * 100 + ["model"] * 100, "assigned_ms": 0})
    shown = pd.DataFrame({"request_id": [f"r-{u}" for u in assigned["user_id"]],
                          "user_id": assigned["user_id"],
                          "items": [[] for _ in range(100)] + [["i1", "i2"]] * 100})
    rows = []
    for i in range(100):
        if i < 40:
            rows.append((f"m{i}", "i1", "view", f"r-m{i}", 5))
        if i < 20:
            rows.append((f"m{i}", "i1", "addtocart", f"r-m{i}", 6))
        if i < 30:
            rows.append((f"m{i}", "i9", "purchase", None, 7))
        if i < 10:
            rows.append((f"c{i}", "i9", "purchase", None, 7))
    rows.append(("m99", "i7", "view", "r-m99", 5))   # not a shown item: no click
    events = pd.DataFrame(rows, columns=["user_id", "item_id", "event", "request_id", "ts_ms"])
    table, checks = report(exp, outcomes(assigned, shown, events, {"i9": 10.0}))
    assert table.loc["model", "ctr"] == 0.40 and table.loc["model", "cart_rate"] == 0.20
    assert np.isnan(table.loc["control", "ctr"])
    assert table.loc["model", "conversion"] == 0.30 and table.loc["control", "conversion"] == 0.10
    assert table.loc["model", "conversion_lift"] == pytest.approx(0.20)
    assert 0 < table.loc["model", "conversion_lift_low"] < 0.20 < \
        table.loc["model", "conversion_lift_high"]
    assert table.loc["model", "conversion_p"] < 0.01
    assert table.loc["model", "revenue_per_shopper"] == pytest.approx(3.0)
    assert table.loc["model", "revenue_lift"] == pytest.approx(2.0)
    assert checks["baseline"] == "control" and not checks["srm_warning"]
    skewed = assigned.iloc[:130]   # 100 control, 30 model for 50/50 shares
    _, checks = report(exp, outcomes(skewed, shown.iloc[:130], events))
    assert checks["srm_warning"]


def test_impressions_and_outcomes_from_the_store(engine: Engine, store: EventStore) -> None:
    exp = experiment(Variant("control", "control", 0.5), Variant("model", "model", 0.5, "tiny"))
    runner = runner_of(engine, store, exp)
    for n in range(40):
        user = str(engine.bundle.histories.user_ids[n])
        answer = recommend_in_experiment(runner, engine, RecommendRequest(user_id=user, k=3))
        if answer.items:
            store.add([{"user_id": user, "item_id": answer.items[0].item_id, "event": "view",
                        "request_id": answer.request_id}])
    runner.flush()
    table, _ = build_report(exp, store)
    assert table.loc["model", "ctr"] == 1.0 and table.loc["model", "impressions"] > 0
    assert int(table["shoppers"].sum()) == 40


@pytest.mark.slow
def test_the_simulated_shop_orders_model_popular_control(bundle_dir: Path,
                                                        tmp_path: Path) -> None:
    import os

    from serving.experiments import EXPERIMENTS_ENV
    from serving.simulate import main as simulate

    before = os.environ.get(EXPERIMENTS_ENV)
    assert simulate(["--model", str(bundle_dir), "--shoppers", "900", "--no-mlflow",
                     "--work", str(tmp_path)]) == 0
    assert os.environ.get(EXPERIMENTS_ENV) == before   # the environment is given back
