"""MLflow tracking: what a run records, the pyfunc round trip, promotion and model resolution.

Everything runs against a throw-away SQLite store under a temporary folder (MLFLOW_TRACKING_URI),
never the project's ``mlflow/`` store. Creating the store and logging one real model take most
of the time, so one module-scoped run is shared by the tests that read it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import mlflow.pyfunc
import numpy as np
import pandas as pd
import pytest
from mlflow.entities.model_registry import ModelVersion
from mlflow.tracking import MlflowClient

from features.config import FeatureConfig
from features.infra import TailorError
from features.pipeline import Prepared, build
from features.rules import Rules
from features.spec import parse_spec
from features.synthetic import generate
from models.bundle import Bundle, build_bundle
from models.merchandising import Catalog, arrange, make_plan, pool_size
from models.registry import experiment_name, resolve_model, tracking_uri
from models.two_tower import TwoTower, TwoTowerConfig
from tests.helpers import aliases, isolated_store
from training.fit import TrainConfig
from training.promotion import ChampionSawTestData, promote
from training.tracking import (
    RunLogger,
    data_fingerprint,
    flatten,
    markdown_table,
    metric_key,
)

SCORE = "test/tailor/ndcg_at_10"
SHOPPERS = pd.Index([f"u{i:03d}" for i in range(200)], name="user_id")
ROOT = Path(__file__).resolve().parents[2]


# --- fast: naming --------------------------------------------------------------------------------

def test_metric_names_have_no_at_sign() -> None:
    assert metric_key("test", "tailor", "hr@10") == "test/tailor/hr_at_10"
    assert metric_key("epoch", "valid:score") == "epoch/valid_score"


def test_flatten_nests_sections_and_fingerprint_renames_hash() -> None:
    assert flatten({"a": 1, "b": {"c": None}}, "train") == {"train.a": "1", "train.b.c": "None"}
    fp = data_fingerprint({"data_hash": "abc", "events_by_type": {"view": 3}, "report": ["x"],
                           "cache_dir": "/tmp", "protocol": "temporal"})
    assert fp == {"data.hash": "abc", "data.events_by_type.view": "3",
                  "data.protocol": "temporal"}


def test_default_store_is_under_the_project(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert tracking_uri() == f"sqlite:///{ROOT / 'mlflow' / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:////somewhere/else.db")
    assert tracking_uri() == "sqlite:////somewhere/else.db"
    assert experiment_name("synthetic-small") == "tailor-synthetic-small"
    assert not (ROOT / "mlflow" / "__init__.py").exists()  # it would shadow the mlflow package


def test_markdown_table() -> None:
    table = pd.DataFrame({"hr@10": [0.5, 0.25]}, index=pd.Index(["tailor", "popular"],
                                                                 name="method"))
    assert markdown_table(table).splitlines() == [
        "| method | hr@10 |", "|---|---|", "| tailor | 0.5000 |", "| popular | 0.2500 |"]


# --- fixtures: a temporary store, a tiny real bundle, one logged run ------------------------------

@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    with isolated_store(tmp_path_factory.mktemp("mlflow")) as root:
        yield root


@pytest.fixture(scope="module")
def prepared() -> Prepared:
    return build(parse_spec("synthetic"), FeatureConfig(), generate("small"), "x")


@pytest.fixture(scope="module")
def bundle_dir(prepared: Prepared, tmp_path_factory: pytest.TempPathFactory) -> Path:
    p = prepared
    cfg = TwoTowerConfig(n_items=len(p.item_vocab),
                         n_categories=int(p.item_features.category_idx.max() + 1),
                         dim=16, n_layers=1)
    model = TwoTower(cfg)
    bundle = build_bundle(p, model, info={"data": {"data_hash": "x"}})
    # Make the most popular items and the first user's items unavailable, so "never returns an
    # unavailable item" is actually exercised by both the model path and the popular fallback.
    items = bundle.items   # one row per item row, in vocabulary order
    hidden = items.index.isin(bundle.histories.items_of(0)) | \
        items.index.isin(items.popularity.nlargest(3).index)
    items.loc[hidden, "available"] = False
    return bundle.save(tmp_path_factory.mktemp("bundle") / "bundle")


def shoppers_with_hits(hits: int) -> pd.Series:
    """Per-shopper ndcg@10 of 200 test shoppers: the first ``hits`` found their item at rank 1."""
    return pd.Series(np.arange(200) < hits, index=SHOPPERS, dtype=float, name="ndcg@10")


def results_table(two_tower: float) -> pd.DataFrame:
    table = pd.DataFrame({"hr@10": [0.3, 0.2, 0.1], "ndcg@10": [two_tower, 0.08, 0.05],
                          "recall@20": [0.4, 0.3, 0.2], "train_seconds": [12.5, 0.1, 0.0]},
                         index=["tailor", "popular", "repeat"])
    table.index.name = "method"
    return table


@pytest.fixture(scope="module")
def logged(store: Path, prepared: Prepared, bundle_dir: Path) -> dict[str, Any]:
    model_cfg = Bundle.load(bundle_dir).model.cfg
    history = [{"epoch": 1, "loss": 7.0, "examples": 100, "valid_score": 0.05},
               {"epoch": 2, "loss": 6.5, "examples": 100, "valid_score": 0.07}]
    example = pd.DataFrame({"user_id": list(prepared.events.user_id.iloc[:1]) + ["nobody"],
                            "k": [5, 5]})
    with RunLogger(prepared.meta["name"], run_name="first") as log:
        log.log_setup(prepared.meta, {"features": prepared.config.to_dict(),
                                      "model": model_cfg.to_dict(),
                                      "train": TrainConfig(epochs=2, progress=False).to_dict()})
        for record in history:
            log.log_epoch(record)
        log.log_results(results_table(0.10), main=("tailor",), headline="ndcg@10",
                        per_user=shoppers_with_hits(20))
        log.log_figures(history, results_table(0.10))
        version = log.log_bundle(bundle_dir, example)
        run_id = log.run_id
    client = MlflowClient(tracking_uri())
    decision = promote(client, version, score_key=SCORE, data_hash=prepared.meta["data_hash"],
                       protocol=prepared.meta["protocol"])
    return {"run_id": run_id, "version": version, "decision": decision, "client": client}


def other_version(logged: dict[str, Any], score: float | pd.Series | None, data_hash: str = "x",
                  protocol: str = "temporal", key: str = SCORE) -> ModelVersion:
    """A registry version with its own run and score (per shopper when a Series); it reuses the
    first model's artifacts."""
    client: MlflowClient = logged["client"]
    first = client.get_run(logged["run_id"])
    run = client.create_run(first.info.experiment_id,
                            tags={"data.hash": data_hash, "data.protocol": protocol})
    if isinstance(score, pd.Series):
        client.log_text(run.info.run_id, score.rename("ndcg_at_10").reset_index().to_csv(
            index=False), "results/test_per_user.csv")
        score = float(score.mean())
    if score is not None:
        client.log_metric(run.info.run_id, key, score)
    client.set_terminated(run.info.run_id)
    return client.create_model_version("tailor", logged["version"].source,
                                       run_id=run.info.run_id)


# --- slow: the real store -------------------------------------------------------------------------

@pytest.mark.slow
def test_run_records_settings_fingerprint_metrics_and_artifacts(logged: dict[str, Any]) -> None:
    client: MlflowClient = logged["client"]
    run = client.get_run(logged["run_id"])
    params, tags, metrics = run.data.params, run.data.tags, run.data.metrics
    assert params["features.history_len"] == "200"
    assert params["model.dim"] == "16" and params["train.epochs"] == "2"
    assert params["data.hash"] == "x" and params["data.spec"] == "synthetic"
    assert params["data.protocol"] == "temporal" and params["data.test_start"].startswith("20")
    assert params["data.events_by_type.purchase"].isdigit()
    assert tags["data.hash"] == "x" and tags["data.protocol"] == "temporal"
    assert tags["git.commit"] and tags["git.dirty"] in ("true", "false", "unknown")
    assert metrics["test/tailor/hr_at_10"] == pytest.approx(0.3)
    assert metrics["test/tailor/train_seconds"] == pytest.approx(12.5)
    # baselines at cut-off 10 only: the table artifact has the rest
    assert metrics["test/baseline/popular/ndcg_at_10"] == pytest.approx(0.08)
    assert "test/baseline/popular/recall_at_20" not in metrics
    assert "test/baseline/popular/train_seconds" not in metrics
    assert metrics["test/lift_vs_best_baseline/ndcg_at_10"] == pytest.approx(0.10 / 0.08)
    assert tags["test.best_baseline"] == "popular"
    curve = client.get_metric_history(logged["run_id"], "epoch/loss")
    assert [(m.step, m.value) for m in curve] == [(1, 7.0), (2, 6.5)]
    assert len(client.get_metric_history(logged["run_id"], "epoch/valid_score")) == 2

    exp = client.get_experiment(run.info.experiment_id)
    assert exp.name == "tailor-synthetic-small"
    assert exp.artifact_location.startswith(Path(os.environ["TAILOR_CACHE"]).parent.as_uri())
    files = {a.path for folder in ("", "results", "figures")
             for a in client.list_artifacts(logged["run_id"], folder or None)}
    assert {"data_meta.json", "configs.json", "promotion.json", "results/test.csv",
            "results/test_per_user.csv",
            "results/test.md", "figures/learning_curves.png",
            "figures/test_comparison.png"} <= files
    local = Path(client.download_artifacts(logged["run_id"], "figures/learning_curves.png"))
    assert local.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
def test_pyfunc_round_trip(logged: dict[str, Any], prepared: Prepared, bundle_dir: Path) -> None:
    bundle = Bundle.load(bundle_dir)
    user = str(bundle.histories.user_ids[0])
    model = mlflow.pyfunc.load_model("models:/tailor@candidate")
    out = model.predict(pd.DataFrame({"user_id": [user, "nobody"], "k": [5, 5]}))
    assert list(out.columns) == ["user_id", "item_id", "rank", "score"]
    assert out.groupby("user_id").size().to_dict() == {user: 5, "nobody": 5}
    assert (out.groupby("user_id")["rank"].apply(list) == [[1, 2, 3, 4, 5]] * 2).all()
    unavailable = set(bundle.items.loc[~bundle.items.available, "item_id"])
    assert unavailable and not unavailable & set(out.item_id)
    # the unknown shopper: the popular items, arranged by the default merchandising (diversity)
    # as every path arranges them
    popular = bundle.items[bundle.items.available].sort_values("popularity", ascending=False,
                                                                kind="stable")
    catalog = Catalog(bundle.item_vocab.ids, bundle.items, bundle.item_vectors)
    pool = popular.index.to_numpy()[:pool_size(5)]
    rows = arrange(make_plan(Rules(), catalog), catalog, pool[None, :],
                   popular["popularity"].to_numpy(np.float32)[None, :pool_size(5)], 5)[0][0]
    assert list(out[out.user_id == "nobody"].item_id) == list(bundle.item_vocab.ids[rows])
    assert set(out[out.user_id == "nobody"].item_id) <= set(popular.item_id[:pool_size(5)])
    # k is optional (default 10) and per row
    out = model.predict(pd.DataFrame({"user_id": [user, "nobody"]}))
    assert out.groupby("user_id").size().to_dict() == {user: 10, "nobody": 10}
    out = model.predict(pd.DataFrame({"user_id": [user, "nobody"], "k": [2, 3]}))
    assert out.groupby("user_id").size().to_dict() == {user: 2, "nobody": 3}


@pytest.mark.slow
def test_pyfunc_loads_in_a_fresh_process_from_its_own_code(logged: dict[str, Any],
                                                            tmp_path: Path) -> None:
    # -S skips site-packages' .pth files, so the project's editable install is not on the
    # path: the model must bring features/ and models/ itself (code_paths).
    script = (
        "import sys; sys.path.append(sys.argv[1])\n"
        "import importlib.util as u; assert u.find_spec('models') is None\n"
        "import mlflow.pyfunc, pandas as pd\n"
        "m = mlflow.pyfunc.load_model('models:/tailor@candidate')\n"
        "print(len(m.predict(pd.DataFrame({'user_id': ['nobody'], 'k': [3]}))))\n")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run([sys.executable, "-S", "-c", script, sysconfig.get_path("purelib")],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == "3"


@pytest.mark.slow
def test_promotion_needs_a_lift_beyond_the_bootstrap_margin(logged: dict[str, Any]) -> None:
    client: MlflowClient = logged["client"]
    first = logged["decision"]     # v1: 20 of the 200 test shoppers hit, ndcg@10 0.10
    assert first["promoted"] and first["reason"] == "no champion yet"
    assert aliases(client) == {"candidate": 1, "champion": 1}

    worse = other_version(logged, shoppers_with_hits(15))
    d = promote(client, worse, score_key=SCORE, data_hash="x", protocol="temporal")
    assert not d["promoted"] and d["comparable"] and d["champion_score"] == pytest.approx(0.10)
    assert d["lift"]["lift"] == pytest.approx(-0.025)
    assert aliases(client) == {"candidate": worse.version, "champion": 1}
    assert client.get_run(worse.run_id).data.tags["promotion.decision"] == "candidate"
    saved = json.loads(Path(client.download_artifacts(worse.run_id, "promotion.json"))
                       .read_text())
    assert saved["score"] == pytest.approx(0.075) and saved["promoted"] is False

    # Higher, but two more hits among 200 shoppers is noise: the paired differences are 2 ones
    # in 200, a standard error of sqrt(0.01 * 0.99 / 200) = 0.0070, a margin of 1.96 x that.
    noise = other_version(logged, shoppers_with_hits(22))
    d = promote(client, noise, score_key=SCORE, data_hash="x", protocol="temporal")
    assert d["score"] > d["champion_score"] and not d["promoted"], d["reason"]
    lift = d["lift"]
    assert lift["lift"] == pytest.approx(0.01)
    assert lift["margin"] == pytest.approx(1.96 * (0.01 * 0.99 / 200) ** 0.5, rel=0.15)
    assert lift["interval"][0] <= 0 < lift["interval"][1]
    assert "paired bootstrap over 200 test shoppers" in d["reason"]
    assert "<= margin" in d["reason"]
    described = client.get_model_version("tailor", noise.version).description
    assert "95% bootstrap interval" in described and "Candidate" in described

    better = other_version(logged, shoppers_with_hits(35))
    d = promote(client, better, score_key=SCORE, data_hash="x", protocol="temporal")
    assert d["promoted"] and d["lift"]["lift"] > d["lift"]["margin"] > 0, d["reason"]
    assert aliases(client) == {"candidate": better.version, "champion": better.version}
    assert "Champion" in client.get_model_version("tailor", better.version).description

    # Other data (or protocol): scores are not comparable, so the champion stays ...
    elsewhere = other_version(logged, 0.90, data_hash="y")
    d = promote(client, elsewhere, score_key=SCORE, data_hash="y", protocol="temporal")
    assert not d["promoted"] and d["comparable"] is False and "not comparable" in d["reason"]
    other_protocol = other_version(logged, 0.90, protocol="leave-one-out")
    d = promote(client, other_protocol, score_key=SCORE, data_hash="x",
                protocol="leave-one-out")
    assert not d["promoted"] and d["comparable"] is False
    assert aliases(client)["champion"] == better.version
    # ... unless forced; a forced version beats nothing, it just takes over.
    d = promote(client, elsewhere, score_key=SCORE, data_hash="y", protocol="temporal",
                force=True)
    assert d["promoted"] and d["reason"] == "forced"
    assert aliases(client) == {"candidate": elsewhere.version, "champion": elsewhere.version}
    assert client.get_run(elsewhere.run_id).data.tags["promotion.decision"] == "champion"

    unscored = other_version(logged, None, data_hash="y")
    d = promote(client, unscored, score_key=SCORE, data_hash="y", protocol="temporal")
    assert not d["promoted"] and "no metric" in d["reason"]

    # A champion trained on other data is scored again, per shopper, on the newcomer's test
    # shoppers (a grown log, another file), and the two compared there, paired.
    asked = []

    def scorer(hits: int):
        def score(champion: ModelVersion) -> pd.Series:
            asked.append(int(champion.version))
            return shoppers_with_hits(hits)
        return score

    newer = other_version(logged, shoppers_with_hits(30), data_hash="z")
    for champion_hits, promoted in ((40, False), (29, False), (10, True)):
        d = promote(client, newer, score_key=SCORE, data_hash="z", protocol="temporal",
                    score_champion=scorer(champion_hits))
        assert d["promoted"] is promoted, d["reason"]
        assert d["champion_score_here"] == pytest.approx(champion_hits / 200)
        assert "this run's test data" in d["reason"] and "paired" in d["reason"]
    assert asked == [int(elsewhere.version)] * 3 and aliases(client)["champion"] == newer.version
    same_data = other_version(logged, shoppers_with_hits(10), data_hash="z")
    d = promote(client, same_data, score_key=SCORE, data_hash="z", protocol="temporal",
                score_champion=scorer(0))
    assert not d["promoted"] and d["comparable"] and len(asked) == 3   # its own values compared

    def broken(champion: ModelVersion) -> pd.Series:
        raise OSError("bundle gone")

    stranger = other_version(logged, 0.99, data_hash="w")
    d = promote(client, stranger, score_key=SCORE, data_hash="w", protocol="temporal",
                score_champion=broken)
    assert not d["promoted"] and "bundle gone" in d["champion_error"]

    # A champion refitted on data that covers the newcomer's test window would be graded on what
    # it trained on: then each one's values on its own test fold, unpaired (a wider margin).
    def saw(champion: ModelVersion) -> pd.Series:
        raise ChampionSawTestData("its data ends after this test window starts")

    for hits, promoted in ((34, False), (60, True)):   # the champion: 30 hits of 200
        fresh = other_version(logged, shoppers_with_hits(hits), data_hash="v")
        d = promote(client, fresh, score_key=SCORE, data_hash="v", protocol="temporal",
                    score_champion=saw)
        assert d["promoted"] is promoted, d["reason"]
        assert "own test fold" in d["reason"] and "ends after" in d["reason"]
        assert "unpaired" in d["reason"] and d["champion_score_here"] is None

    # Runs logged before per-shopper values (and metric names with '/') still compare, by their
    # means alone, and the reason says there was no margin.
    old = other_version(logged, 0.31, data_hash="v", key=SCORE.replace("/", "."))
    d = promote(client, old, score_key=SCORE, data_hash="v", protocol="temporal")
    assert d["score"] == pytest.approx(0.31) and d["lift"]["method"].startswith(
        "bootstrap of the champion")   # the champion's values alone give a margin
    assert not d["promoted"]


@pytest.mark.slow
def test_resolve_model(logged: dict[str, Any], bundle_dir: Path) -> None:
    expected = json.loads((bundle_dir / "bundle.json").read_text())
    refs = ["champion", "candidate", "1", logged["run_id"], str(bundle_dir),
            "models:/tailor@champion", "models:/tailor/1", f"runs:/{logged['run_id']}/model"]
    for ref in refs:
        folder = resolve_model(ref)
        assert (folder / "bundle.json").exists(), ref
        assert json.loads((folder / "bundle.json").read_text()) == expected, ref
        assert Bundle.load(folder).item_vocab == Bundle.load(bundle_dir).item_vocab
    for bad in ["nope", "999", "0123456789abcdef0123456789abcdef", "./no/such/bundle"]:
        with pytest.raises(TailorError, match=f"model '{bad}'"):
            resolve_model(bad)
    with pytest.raises(TailorError, match="not a Tailor bundle"):
        resolve_model(str(bundle_dir.parent.parent))


@pytest.mark.slow
def test_resolve_model_downloads_remote_artifacts(logged: dict[str, Any],
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    # A non-local artifact store is downloaded once into $TAILOR_CACHE/models.
    import models.registry as registry

    calls: list[str] = []
    real = registry.mlflow.artifacts.download_artifacts

    def fake(artifact_uri: str, dst_path: str) -> str:
        calls.append(artifact_uri)
        return real(artifact_uri=artifact_uri, dst_path=dst_path)

    monkeypatch.setattr(registry, "urlparse", lambda uri: type("U", (), {
        "scheme": "s3", "path": ""})())
    monkeypatch.setattr(registry.mlflow.artifacts, "download_artifacts", fake)
    folder = resolve_model("1")
    assert folder.is_relative_to(Path(os.environ["TAILOR_CACHE"]) / "models")
    assert (folder / "bundle.json").exists() and len(calls) == 1
    assert resolve_model("1") == folder and len(calls) == 1  # cached
    np.testing.assert_array_equal(Bundle.load(folder).item_vectors,
                                  np.load(folder / "item_vectors.npy"))
