"""`python -m training.train`: flags, one real run into a throw-away MLflow store, promotion.

A tiny model (pooling encoder, dim 16, 2 epochs) on the embedded shop keeps a whole run to
a few seconds of training. The first run is shared by the fast tests; the promotion tests train
more and are slow, as is the end-to-end `make train`.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import mlflow.pyfunc
import numpy as np
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

import training.refit as refit_module
import training.train as train
from features.config import FeatureConfig, add_config_args, config_from_args, setting
from features.infra import DataError, run_cli
from features.pipeline import Prepared, prepare
from features.rules import Rules
from features.schema import EVENT_TYPES
from features.spec import parse_spec
from models.baselines import BASELINES
from models.blend import BlendConfig
from models.bundle import Bundle
from models.merchandising import Catalog, arrange, make_plan, pool_size
from models.ranking import popular_items
from models.registry import tracking_uri
from models.two_tower import TwoTower, TwoTowerConfig
from tests.conftest import TINY_MODEL
from tests.helpers import aliases, isolated_store
from training.fit import FitResult, TrainConfig

ROOT = Path(__file__).resolve().parents[2]
TINY = [*TINY_MODEL, "--epochs", "2"]
SCORE = "test/tailor/ndcg_at_10"


# --- fast: flags -------------------------------------------------------------------------------

def test_help_documents_every_setting() -> None:
    parser = train.build_parser()
    text = parser.format_help()
    # each setting is documented once, in its dataclass field, and its flag shows that text
    for cls, skip in ((TwoTowerConfig, train.MODEL_FROM_DATA), (TrainConfig, ()),
                      (BlendConfig, ()), (FeatureConfig, ())):
        for f in fields(cls):
            if f.name not in skip:
                assert f.metadata.get("help"), f"{cls.__name__}.{f.name} has no help text"
                assert " ".join(f.metadata["help"].split()[:3]) in " ".join(text.split()), f.name
    for flag in ("--data", "--split", "--history-len", "--dim", "--encoder", "--interest",
                 "--no-interest", "--epochs", "--patience", "--train-seed", "--seed",
                 "--no-progress", "--valid-users", "--force-promote", "--out", "--no-mlflow"):
        assert flag in text, flag
    assert "--n-items" not in text and "--n-categories" not in text  # from the data
    args = parser.parse_args(["--epochs", "3", "--train-seed", "7", "--seed", "5",
                              "--no-interest", "--dim", "8"])
    assert config_from_args(TrainConfig, args) == TrainConfig(epochs=3, seed=7)
    assert train.feature_config_from_args(args) == FeatureConfig(seed=5)
    model = config_from_args(TwoTowerConfig, args, n_items=10)
    assert (model.n_items, model.dim, model.interest) == (10, 8, False)


def test_config_args_handle_optional_bool_and_tuple_fields() -> None:
    @dataclass(frozen=True)
    class Settings:
        size: int = field(metadata={"help": "a size"})
        rate: float | None = setting(None, "a rate (default: auto)")
        on: bool = setting(True, "on or off")
        weights: tuple[float, ...] = setting((1.0, 2.0), "weights")
        name: str = setting("a", "a name")

    parser = argparse.ArgumentParser()
    add_config_args(parser, Settings, title="s", choices={"name": ("a", "b")},
                    flags={"name": "settings-name"})
    assert config_from_args(Settings, parser.parse_args(["--size", "3"])) == Settings(3)
    args = parser.parse_args(["--size", "3", "--rate", "0.5", "--no-on", "--weights", "4", "5",
                              "--settings-name", "b"])
    assert config_from_args(Settings, args) == Settings(3, 0.5, False, (4.0, 5.0), "b")
    text = parser.format_help()
    assert "a rate (default: auto)" in text and text.count("(default: True)") == 1
    with pytest.raises(SystemExit):  # size has no default: required
        parser.parse_args([])

    @dataclass(frozen=True)
    class Undocumented:
        size: int = 1

    with pytest.raises(TypeError, match="Undocumented.size has no help text"):
        add_config_args(argparse.ArgumentParser(), Undocumented, title="u")


def test_bad_input_is_one_line_and_exit_2(capsys: pytest.CaptureFixture[str],
                                          tmp_path: Path) -> None:
    with pytest.raises(SystemExit) as done:
        run_cli(lambda: train.main(["--data", f"events:{tmp_path}/nonexistent.csv"]))
    assert done.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ") and "nonexistent.csv" in err
    with pytest.raises(SystemExit) as done:
        run_cli(lambda: train.main(["--valid-users", "0"]))
    assert done.value.code == 2 and "--valid-users" in capsys.readouterr().err


def test_tailor_debug_keeps_the_traceback(tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TAILOR_DEBUG", "1")
    with pytest.raises(DataError, match="nonexistent.csv"):
        run_cli(lambda: train.main(["--data", f"events:{tmp_path}/nonexistent.csv"]))


# --- fixtures: a throw-away store, one real run -------------------------------------------------

@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    with isolated_store(tmp_path_factory.mktemp("train")) as root:
        yield root


@pytest.fixture(scope="module")
def prepared(store: Path) -> Prepared:
    return prepare(parse_spec("synthetic"))


def test_validation_without_targets_falls_back_to_the_loss(prepared: Prepared) -> None:
    split = prepared.split
    no_valid = replace(prepared, split=replace(
        split, targets=split.targets[split.targets["fold"] != "valid"]))
    assert train.validator(no_valid, 2000, 0) is None
    validate = train.validator(prepared, 50, 0)
    model = TwoTower(train.model_config(train.build_parser().parse_args(["--dim", "8"]),
                                        prepared))
    assert 0 <= validate(model) <= 1


def run_main(argv: list[str]) -> str:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert train.main(argv) == 0
    return out.getvalue()


@pytest.fixture(scope="module")
def first(store: Path) -> dict[str, Any]:
    built: list[Bundle] = []
    real_build = train.build_bundle

    def keep(*args: Any, **kwargs: Any) -> Bundle:  # the in-memory bundle, to compare with
        built.append(real_build(*args, **kwargs))
        return built[-1]

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(train, "build_bundle", keep)
        # System metrics are sampled every 10 s by default: this run is shorter than that.
        mp.setenv("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", "0.5")
        mp.setenv("MLFLOW_SYSTEM_METRICS_SAMPLES_BEFORE_LOGGING", "1")
        stdout = run_main([*TINY, "--out", str(store / "bundle"), "--run-name", "first"])
    client = MlflowClient(tracking_uri())
    exp = client.get_experiment_by_name("tailor-synthetic-small")
    runs = client.search_runs([exp.experiment_id], "attributes.run_name = 'first'")
    assert len(runs) == 1
    return {"stdout": stdout, "run": runs[0], "client": client, "bundle": built[0],
            "out": store / "bundle"}


# --- fast: what one run records ------------------------------------------------------------------

def test_run_logs_settings_epochs_and_test_metrics(first: dict[str, Any]) -> None:
    client: MlflowClient = first["client"]
    run = first["run"]
    params, metrics, tags = run.data.params, run.data.metrics, run.data.tags
    assert params["model.dim"] == "16" and params["model.encoder"] == "pooling"
    assert params["model.history_len"] == params["features.history_len"] == "200"
    assert int(params["model.n_items"]) > 1000
    assert params["train.epochs"] == "2" and params["train.valid_users"] == "2000"
    assert params["data.spec"] == "synthetic" and params["data.protocol"] == "temporal"
    assert len(params["data.hash"]) == 64 and tags["git.commit"]
    epochs = client.get_metric_history(run.info.run_id, "epoch/loss")
    assert [m.step for m in epochs] == [1, 2]
    assert len(client.get_metric_history(run.info.run_id, "epoch/valid_score")) == 2
    assert metrics["fit/epochs"] == 2 and metrics["fit/best_epoch"] in (1, 2)
    # the served ranking and the towers at every cut-off ...
    for method in ("tailor", "towers"):
        for key in ("ndcg_at_10", "recall_at_50", "hr_at_5", "coverage_at_20", "fit_seconds"):
            assert f"test/{method}/{key}" in metrics, (method, key)
    # ... and, on temporal data, every baseline (repeat included) at 10; the rest is in the table
    for method in BASELINES:
        for key in ("ndcg_at_10", "recall_at_10", "hr_at_10", "coverage_at_10"):
            assert f"test/baseline/{method}/{key}" in metrics, (method, key)
        assert f"test/baseline/{method}/recall_at_50" not in metrics
    assert 0 < metrics[SCORE] <= 1
    assert metrics["valid/tailor/ndcg_at_10"] == pytest.approx(
        max(m.value for m in client.get_metric_history(run.info.run_id, "epoch/valid_score")))
    files = {a.path for folder in (None, "results", "figures")
             for a in client.list_artifacts(run.info.run_id, folder)}
    assert {"results/test.md", "results/test_per_user.csv", "figures/learning_curves.png",
            "figures/test_comparison.png", "promotion.json"} <= files


def test_run_is_readable_by_a_reviewer(first: dict[str, Any]) -> None:
    client: MlflowClient = first["client"]
    run = client.get_run(first["run"].info.run_id)
    metrics, tags = run.data.metrics, run.data.tags
    # the headline: the served ranking over the best baseline, which a tag names
    best = tags["test.best_baseline"]
    assert best in BASELINES
    assert metrics["test/lift_vs_best_baseline/ndcg_at_10"] == pytest.approx(
        metrics[SCORE] / metrics[f"test/baseline/{best}/ndcg_at_10"])
    assert all(metrics[f"test/baseline/{m}/ndcg_at_10"] <=
               metrics[f"test/baseline/{best}/ndcg_at_10"] for m in BASELINES)
    # lineage: the train fold, the test targets and every event, under the data hash
    inputs = {i.tags[0].value: i.dataset for i in run.inputs.dataset_inputs}
    assert set(inputs) == {"train", "test", "serving"}
    assert {d.digest for d in inputs.values()} == {run.data.params["data.hash"][:32]}
    assert inputs["test"].name == "synthetic-small/test"
    assert json.loads(inputs["serving"].profile)["num_rows"] > \
        json.loads(inputs["train"].profile)["num_rows"]
    # system metrics while it ran; a description that states the result and the decision
    assert any(k.startswith("system/cpu") for k in metrics)
    note = tags["mlflow.note.content"]
    assert f"{metrics[SCORE]:.4f}" in note and "v1 is champion" in note
    # the served ranking's test metrics are the logged model's, on the test data set
    model = client.search_logged_models([run.info.experiment_id],
                                        filter_string=f"source_run_id = '{run.info.run_id}'")[0]
    linked = {m.key: m for m in model.metrics}
    assert linked[SCORE].value == pytest.approx(metrics[SCORE])
    assert linked[SCORE].dataset_name == "synthetic-small/test"
    assert not any(k.startswith("test/baseline") for k in linked)
    # the registered version says what it was compared with
    assert "no champion yet" in client.get_model_version("tailor", "1").description
    per_user = pd.read_csv(client.download_artifacts(run.info.run_id,
                                                     "results/test_per_user.csv"))
    assert per_user["ndcg_at_10"].mean() == pytest.approx(metrics[SCORE])
    assert len(per_user) == metrics["test/tailor/users"]


def test_stdout_compares_the_model_with_every_baseline(first: dict[str, Any]) -> None:
    lines = first["stdout"].splitlines()
    rows = {line.split()[0] for line in lines if line.split()}
    assert {"tailor", "towers", *BASELINES} <= rows
    header = next(line for line in lines if "recall@10" in line)
    assert "fit_seconds" in header
    assert any(line.startswith("time ") and "training" in line for line in lines)
    assert any("registry  tailor v1: champion (no champion yet)" in line for line in lines)


def test_first_version_is_candidate_and_champion(first: dict[str, Any]) -> None:
    client: MlflowClient = first["client"]
    assert aliases(client) == {"candidate": 1, "champion": 1}
    mv = client.get_model_version("tailor", "1")
    assert mv.run_id == first["run"].info.run_id
    assert mv.tags["data.protocol"] == "temporal"


def test_champion_pyfunc_recommends(first: dict[str, Any]) -> None:
    bundle: Bundle = first["bundle"]
    user = str(bundle.histories.user_ids[-1])
    model = mlflow.pyfunc.load_model("models:/tailor@champion")
    out = model.predict(pd.DataFrame({"user_id": [user, "nobody"], "k": [5, 5]}))
    mine, theirs = out[out.user_id == user], out[out.user_id == "nobody"]
    assert list(mine["rank"]) == [1, 2, 3, 4, 5] and list(theirs["rank"]) == [1, 2, 3, 4, 5]
    # the known shopper: the in-memory model's ranking of their stored history as of the end of
    # the data, their purchases left out (as /recommend and batch rank), arranged by the default
    # merchandising (diversity) as every path arranges it
    catalog = Catalog(bundle.item_vocab.ids, bundle.items, bundle.item_vectors)
    plan, pool = make_plan(Rules(), catalog), pool_size(5)

    def merchandised(rows: np.ndarray, scores: np.ndarray) -> list[str]:
        got = arrange(plan, catalog, rows, scores.astype(np.float32), 5)[0][0]
        return list(bundle.item_vocab.ids[got])

    history = bundle.histories.of([user])
    bought = history.item_idx[history.event_code == EVENT_TYPES.index("purchase")]
    rows, scores = bundle.recommender.recommend(history, pool, exclude=[bought],
                                                allowed=bundle.items.available.to_numpy(bool))
    assert list(mine.item_id) == merchandised(rows, scores)
    # the unknown one: the most popular available items
    popular, counts = popular_items(bundle)
    assert list(theirs.item_id) == merchandised(popular[None, :pool], counts[None, :pool])
    assert list(mine.item_id) != list(theirs.item_id)


def test_saved_bundle_round_trips(first: dict[str, Any], prepared: Prepared) -> None:
    memory: Bundle = first["bundle"]
    loaded = Bundle.load(first["out"])
    assert loaded.info["git"]["commit"] == first["run"].data.tags["git.commit"]
    assert loaded.info["data"]["data_hash"] == first["run"].data.params["data.hash"]
    assert loaded.info["metrics"]["test"]["tailor"]["ndcg@10"] == \
        pytest.approx(first["run"].data.metrics[SCORE])
    assert set(loaded.info["metrics"]["test"]) == {"tailor", "towers", *BASELINES}
    assert {"title", "price", "popularity", "available"} <= set(loaded.items.columns)
    # refitted for serving: every item of the data, not only the evaluation's training fold
    assert set(loaded.items.item_id) == set(prepared.events.item_id)
    assert list(loaded.items.item_id) == list(loaded.item_vocab.ids)
    # every shopper, test window included, with their last L events, as of the end of the data
    assert set(loaded.histories.user_ids) == set(prepared.events.user_id)
    per_shopper = prepared.events.groupby("user_id", observed=True).size()
    assert (loaded.histories.lengths == np.minimum(
        per_shopper.reindex(loaded.histories.user_ids).to_numpy(),
        loaded.model.cfg.history_len)).all()
    assert loaded.now == prepared.events.timestamp.max() + pd.Timedelta(milliseconds=1)
    users = sorted(loaded.histories.user_ids)[:200]
    for name in ("offsets", "item_idx", "event_code", "age_days", "steps_back", "ts_ms"):
        np.testing.assert_array_equal(getattr(loaded.histories.of(users), name),
                                      getattr(memory.histories.of(users), name))
    a = memory.recommender.recommend(memory.histories.of(users), 10)
    b = loaded.recommender.recommend(loaded.histories.of(users), 10)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_allclose(a[1], b[1], rtol=1e-5)
    # (that the evaluation's model reproduces the logged metric: tests/training/test_challenge.py)


def test_other_ranks_fit_but_neither_print_nor_log(store: Path, first: dict[str, Any],
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[TrainConfig] = []
    monkeypatch.setenv("RANK", "1")

    def fake_fit(prepared, model_cfg, cfg, validate, **kw) -> FitResult:
        calls.append(cfg)
        return FitResult(None, 1, 0.0, [{"epoch": 1, "examples": 100}], 1.0, 100)

    monkeypatch.setattr(train, "fit", fake_fit)
    monkeypatch.setattr(refit_module, "fit", fake_fit)
    client: MlflowClient = first["client"]
    exp = client.get_experiment_by_name("tailor-synthetic-small")
    before = len(client.search_runs([exp.experiment_id]))
    assert run_main([*TINY, "--out", str(store / "rank1")]) == ""
    # the evaluation fit, then the refit's (its planned epochs, never stopped early)
    assert len(calls) == 2 and calls[0].epochs == 2 and not calls[0].progress
    assert calls[1].patience > calls[1].epochs and not calls[1].progress
    assert len(client.search_runs([exp.experiment_id])) == before
    assert not (store / "rank1").exists()


# --- slow: promotion over several runs, no MLflow, make train ---------------------------------

@pytest.fixture(scope="module")
def worse_runs(first: dict[str, Any]) -> dict[str, Any]:
    """Run 2: the first run's settings, its test ndcg@10 halved; run 3: the same, forced."""
    real = train.evaluate_all_per_user

    def halved(*args: Any, **kwargs: Any) -> tuple[pd.DataFrame, dict[str, pd.Series]]:
        table, per_user = real(*args, **kwargs)
        table.loc["tailor", "ndcg@10"] *= 0.5
        return table, {**per_user, "tailor": per_user["tailor"] * 0.5}

    client: MlflowClient = first["client"]
    out: dict[str, Any] = {}
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(train, "evaluate_all_per_user", halved)
        run_main([*TINY, "--run-name", "worse"])
        out["after_worse"] = aliases(client)
        run_main([*TINY, "--run-name", "forced", "--force-promote", "--epochs", "1"])
        out["after_forced"] = aliases(client)
    exp = client.get_experiment_by_name("tailor-synthetic-small")
    for name in ("worse", "forced"):
        out[name] = client.search_runs([exp.experiment_id], f"attributes.run_name = '{name}'")[0]
    return out


@pytest.mark.slow
def test_worse_run_is_not_promoted_unless_forced(first: dict[str, Any],
                                                 worse_runs: dict[str, Any]) -> None:
    assert worse_runs["after_worse"] == {"candidate": 2, "champion": 1}
    tags = worse_runs["worse"].data.tags
    assert tags["promotion.decision"] == "candidate" and "<= margin" in tags["promotion.reason"]
    assert "paired bootstrap" in tags["promotion.reason"]
    assert worse_runs["after_forced"] == {"candidate": 3, "champion": 3}
    assert worse_runs["forced"].data.tags["promotion.reason"] == "forced"


@pytest.mark.slow
def test_same_settings_give_the_same_model(first: dict[str, Any],
                                           worse_runs: dict[str, Any]) -> None:
    a, b = first["run"].data.metrics, worse_runs["worse"].data.metrics
    for key in ("test/tailor/hr_at_10", "test/tailor/recall_at_50",
                "valid/tailor/ndcg_at_10", "test/baseline/item-knn/ndcg_at_10"):
        assert a[key] == b[key], key
    assert b[SCORE] == pytest.approx(a[SCORE] * 0.5)


@pytest.mark.slow
def test_no_mlflow_saves_the_bundle_and_logs_nothing(store: Path, first: dict[str, Any]) -> None:
    client: MlflowClient = first["client"]
    exp = client.get_experiment_by_name("tailor-synthetic-small")
    before = len(client.search_runs([exp.experiment_id]))
    versions = len(client.search_model_versions("name = 'tailor'"))
    stdout = run_main([*TINY, "--epochs", "1", "--no-mlflow", "--out", str(store / "quick")])
    assert "registry" not in stdout and "mlflow" not in stdout
    assert Bundle.load(store / "quick").info["fit"]["epochs"] == 1
    assert len(client.search_runs([exp.experiment_id])) == before
    assert len(client.search_model_versions("name = 'tailor'")) == versions


@pytest.mark.slow
def test_make_train_end_to_end(tmp_path: Path) -> None:
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path}/mlflow.db",
           "TAILOR_CACHE": str(tmp_path / "cache")}
    env.pop("RANK", None)
    done = subprocess.run(["make", "-s", "train", "DATA=synthetic", "EPOCHS=1",
                           "ARGS=--no-progress"], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "registry  tailor v1: champion" in done.stdout
    assert "item-knn" in done.stdout and "tailor" in done.stdout
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    run = client.get_run(client.get_model_version_by_alias("tailor", "champion").run_id)
    assert run.data.params["train.epochs"] == "1" and run.data.params["model.dim"] == "64"
    bad = subprocess.run(["make", "-s", "train", "DATA=events:/nonexistent.csv"], cwd=ROOT,
                         env=env, capture_output=True, text=True, timeout=300)
    assert bad.returncode != 0
    assert "error: " in bad.stderr and "Traceback" not in bad.stderr
