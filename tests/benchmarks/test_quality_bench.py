"""`make bench-quality` end to end on the embedded shop, with a short training run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

import benchmarks.quality as quality
from benchmarks.common import PARTS
from benchmarks.served import SERVED

pytestmark = pytest.mark.slow
TRAIN_ARGS = ("--epochs 1 --dim 16 --batch-tokens 8192 --valid-users 300 --stack-users 500")


def test_quality_bench_compares_every_method_on_one_split(
        isolated_outputs: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TAILOR_CACHE", str(isolated_outputs / "cache"))
    assert quality.main(["--data", "synthetic", "--train-args", TRAIN_ARGS,
                         "--als-alphas", "1", "10", "--als-iterations", "5"]) == 0

    payload = json.loads((isolated_outputs / "results" / "quality.json").read_text())
    (run,) = payload["results"]["runs"]
    methods = run["methods"]
    assert set(methods) == {"tailor", "towers", "most-popular", "repeat", "item-knn",
                            "seq-item-knn", "als"}
    for name, values in methods.items():
        for key in ("recall@10", "ndcg@10", "hr@10", "coverage@10", "recall@50"):
            assert 0.0 <= values[key] <= 1.0, (name, key)
        assert values["recall@10"] <= values["recall@50"], name
    # The planted shop rewards personal signals: every personal method beats the popular list.
    assert methods["als"]["ndcg@10"] > 2 * methods["most-popular"]["ndcg@10"]
    assert run["als"]["alpha"] in (1.0, 10.0) and set(run["als"]["valid_ndcg@10"]) == {"1.0",
                                                                                       "10.0"}
    assert run["protocol"] == "temporal" and run["test_users"] > 100

    text = (isolated_outputs / "BENCHMARKS.md").read_text()
    body = text.split("<!-- bench:quality -->")[1].split("<!-- /bench:quality -->")[0]
    assert "| tailor |" in body and "| als |" in body and "python -m benchmarks.quality" in body
    assert all(f"<!-- bench:{part} -->" in text for part in PARTS)
    # The served (refitted) model, scored from outside on the days after its data, beside the
    # baselines fitted on the same data
    served = run["served"]
    assert served["protocol"] == "temporal" and served["target_users"] > 100
    assert set(served["methods"]) == {SERVED, "most-popular", "repeat", "item-knn",
                                      "seq-item-knn"}
    assert all(0.0 <= v["ndcg@10"] <= v["hr@10"] <= 1.0 for v in served["methods"].values())
    assert "**Served (refit)" in body and f"| {SERVED} |" in body
    assert run["refit"]["epochs"] >= 1 and run["refit"]["items"] > run["items"]

    # The run is in MLflow's tailor-benchmarks experiment with the figures as metrics.
    client = MlflowClient()
    exp = client.get_experiment_by_name("tailor-benchmarks")
    (logged,) = client.search_runs([exp.experiment_id])
    assert logged.data.tags["bench.part"] == "quality"
    key = "quality/synthetic/als/ndcg_at_10"
    assert logged.data.metrics[key] == pytest.approx(methods["als"]["ndcg@10"])


def test_unknown_data_set_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="unknown data set"):
        quality.data_sets(quality.QualityBenchConfig(data="Nowhere"))


def test_a_partial_run_keeps_the_other_data_sets(isolated_outputs: Path) -> None:
    results = isolated_outputs / "results"
    results.mkdir()
    (results / "quality.json").write_text(json.dumps({"date": "2026-11-30 10:00 UTC", "results": {
        "runs": [{"name": "Toys", "methods": {}},
                 {"name": "Tmall", "measured": "2026-11-29 09:00 UTC", "methods": {}},
                 {"name": "synthetic", "methods": {}}]}}))
    kept = quality.earlier_runs([{"name": "synthetic", "methods": {"tailor": {}}}])
    assert [(r["name"], r["measured"]) for r in kept] == [
        ("Toys", "2026-11-30 10:00 UTC"), ("Tmall", "2026-11-29 09:00 UTC")]
