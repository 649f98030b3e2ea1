"""MLflow tracking for Tailor: one experiment per data set, one run per training, a registry.

Store: ``$MLFLOW_TRACKING_URI`` when set, else the local SQLite store ``mlflow/mlflow.db`` with
artifacts under ``mlflow/artifacts/`` in the project root (``make mlflow-ui`` browses it). Nothing
here needs a network.

Names in a run, so runs of one data set compare in a single MLflow table:

- params ``features.<k>``, ``model.<k>``, ``train.<k>`` (nested settings: ``train.a.b``) and the
  data fingerprint ``data.<k>`` (``data.spec``, ``data.hash``, ``data.users``, ``data.protocol``,
  ``data.valid_start``, ``data.test_start``, ...); tags ``data.spec``, ``data.name``,
  ``data.hash``, ``data.protocol``, ``git.commit``, ``git.dirty``
- metric names are grouped with ``/``, which MLflow's UI turns into chart sections:
  per-epoch ``epoch/<key>`` (``epoch/loss``, ``epoch/valid_score``) with step = epoch;
  results ``<fold>/<method>/<metric>`` with '@' spelled ``_at_`` (``test/tailor/hr_at_10``)
  for the served ranking and the towers alone, ``<fold>/baseline/<name>/<metric>`` at cut-off
  10 for each baseline (every cut-off is in the ``results/<fold>.csv|md`` tables), and the
  headline ``test/lift_vs_best_baseline/ndcg_at_10`` (the served ranking over the best baseline,
  a ratio; tag ``test.best_baseline`` names it)
- inputs (``mlflow.log_input``): the data set's train fold, test targets and, when the served
  bundle was refitted, every event (contexts ``train``, ``test``, ``serving``), digest = the
  data hash; system metrics (CPU, memory) while the run lasts
- the logged model's test metrics are linked to it (MLflow 3 ``model_id``), so the Models tab
  shows them
- artifacts ``data_meta.json``, ``configs.json``, ``results/<fold>.csv|md``,
  ``results/test_per_user.csv`` (the score metric per test shopper, for promotion's bootstrap),
  ``figures/learning_curves.png``, ``figures/<fold>_comparison.png``, ``promotion.json``

The store, the registry look-up and promotion live in ``models/registry.py``, below both
training and serving.
"""

from __future__ import annotations

import json
import math
import numbers
import re
import time
import warnings
from importlib import metadata
from pathlib import Path
from typing import Any

# Submodule imports on purpose: the project's `mlflow/` store folder makes ruff's isort take a
# bare `mlflow` for first-party code. `import mlflow.pyfunc` binds `mlflow` all the same.
import mlflow.artifacts
import mlflow.data
import mlflow.pyfunc
import numpy as np
import pandas as pd
from mlflow.entities import Metric, Param
from mlflow.entities.model_registry import ModelVersion
from mlflow.models import ModelSignature, infer_signature
from mlflow.tracking import MlflowClient
from mlflow.types.schema import ColSpec, Schema

from features.infra import git_state
from models.registry import (
    CANDIDATE,
    MODEL_NAME,
    ROOT,
    configure,
    ensure_experiment,
)
from training.plots import comparison_chart, learning_curves

CODE_PACKAGES = ("features", "models")  # shipped with the pyfunc so it loads anywhere
# Only what the pyfunc imports; pinned to what is installed (inferring them costs a subprocess).
RUNTIME_PACKAGES = ("mlflow", "torch", "torchrec", "fbgemm-gpu-cpu", "tensordict", "pandas",
                    "numpy", "pyarrow", "scipy")
# Meta keys that describe a cache or a timing, not the data: kept in data_meta.json only.
NOT_FINGERPRINT = {"config", "report", "cache", "cache_dir", "seconds", "read_seconds"}
DATA_TAGS = ("spec", "name", "hash", "protocol")
DIGEST_CHARS = 32  # MLflow stores at most 36 characters of a data set's digest


# --- naming ------------------------------------------------------------------------------------

def metric_key(*parts: str) -> str:
    """``test``, ``tailor``, ``hr@10`` -> ``test/tailor/hr_at_10`` (MLflow forbids '@')."""
    text = "/".join(parts).replace("@", "_at_")
    return re.sub(r"[^\w.\- /]", "_", text)


def flatten(values: dict[str, Any], prefix: str) -> dict[str, str]:
    """Nested settings -> ``{"prefix.a.b": "value"}`` with values as MLflow stores them."""
    out: dict[str, str] = {}
    for key, value in values.items():
        name = f"{prefix}.{key}"
        if isinstance(value, dict):
            out.update(flatten(value, name))
        else:
            out[name] = str(value)[:6000]  # MLflow's limit on a param value
    return out


def data_fingerprint(meta: dict[str, Any]) -> dict[str, str]:
    """``Prepared.meta`` as ``data.*`` params: what makes two runs' numbers comparable."""
    kept = {("hash" if k == "data_hash" else k): v for k, v in meta.items()
            if k not in NOT_FINGERPRINT}
    return flatten(kept, "data")


# --- the run -----------------------------------------------------------------------------------

class RunLogger:
    """One training run: ``with RunLogger("synthetic-small") as log: log.log_setup(...)``."""

    def __init__(self, spec_name: str, run_name: str | None = None, *,
                 model_name: str = MODEL_NAME, tags: dict[str, str] | None = None,
                 description: str | None = None, system_metrics: bool = False) -> None:
        self.spec_name, self.run_name, self.model_name = spec_name, run_name, model_name
        self.tags = dict(tags or {})
        self.description, self.system_metrics = description, system_metrics
        self.run: mlflow.ActiveRun | None = None
        self.client: MlflowClient | None = None
        self.data_meta: dict[str, Any] = {}
        self.model_id: str | None = None       # the logged model's, once log_bundle ran
        self.test_dataset: Any = None           # the test fold's mlflow.data dataset

    def __enter__(self) -> RunLogger:
        self.client = MlflowClient(configure())
        experiment_id = ensure_experiment(self.spec_name, self.client)
        self.run = mlflow.start_run(experiment_id=experiment_id, run_name=self.run_name,
                                    tags=self.tags or None, description=self.description,
                                    log_system_metrics=self.system_metrics)
        return self

    def __exit__(self, exc_type: type | None, exc: BaseException | None, tb: Any) -> None:
        mlflow.end_run(status="FAILED" if exc_type else "FINISHED")

    @property
    def run_id(self) -> str:
        if self.run is None:
            raise RuntimeError("RunLogger used outside its `with` block")
        return self.run.info.run_id

    def _log_params(self, params: dict[str, str]) -> None:
        items = [Param(k, v) for k, v in params.items()]
        for start in range(0, len(items), 100):  # MLflow takes at most 100 per batch
            self.client.log_batch(self.run_id, params=items[start:start + 100])

    def _set_tags(self, tags: dict[str, str]) -> None:
        for key, value in tags.items():
            self.client.set_tag(self.run_id, key, value)

    def log_setup(self, data_meta: dict[str, Any], configs: dict[str, dict[str, Any]]) -> None:
        """Settings (``features``/``model``/``train`` sections), data fingerprint, git commit."""
        self.data_meta = dict(data_meta)
        params: dict[str, str] = {}
        for section, values in configs.items():
            params.update(flatten(values, section))
        fingerprint = data_fingerprint(data_meta)
        params.update(fingerprint)
        self._log_params(params)
        tags = {f"data.{k}": fingerprint[f"data.{k}"] for k in DATA_TAGS
                if f"data.{k}" in fingerprint}
        self._set_tags({**tags, **git_state()})
        self.client.log_dict(self.run_id, json.loads(json.dumps(data_meta, default=str)),
                             "data_meta.json")
        self.client.log_dict(self.run_id, json.loads(json.dumps(configs, default=str)),
                             "configs.json")

    def describe(self, text: str) -> None:
        """The run's description (markdown), shown at the top of its page in the UI."""
        self.client.set_tag(self.run_id, "mlflow.note.content", text)

    def log_datasets(self, frames: dict[str, pd.DataFrame], source: str) -> None:
        """Each frame as an input of the run (lineage), its key as the context (``train``,
        ``test``, ``serving``). The digest is the data hash, so runs on the same data show the
        same data set; the schema and row count come from the frame."""
        digest = str(self.data_meta.get("data_hash") or "")[:DIGEST_CHARS] or None
        for context, frame in frames.items():
            dataset = mlflow.data.from_pandas(frame, source=source, digest=digest,
                                              name=f"{self.data_meta.get('name', self.spec_name)}"
                                                   f"/{context}")
            mlflow.log_input(dataset, context=context)
            if context == "test":
                self.test_dataset = dataset

    def log_epoch(self, record: dict[str, Any], prefix: str = "epoch") -> None:
        """One epoch of ``FitResult.history``: every numeric value as ``<prefix>.<key>``."""
        step = int(record["epoch"])
        now = int(time.time() * 1000)
        metrics = [Metric(metric_key(prefix, k), float(v), now, step)
                   for k, v in record.items() if k != "epoch" and _is_number(v)]
        self.client.log_batch(self.run_id, metrics=metrics)

    def log_refit_epoch(self, record: dict[str, Any]) -> None:
        """One epoch of the refit for serving (``training/refit.py``) as ``refit_epoch.<key>``."""
        self.log_epoch({k: v for k, v in record.items() if k != "valid_score"}, "refit_epoch")

    def log_results(self, table: pd.DataFrame, fold: str = "test", *,
                    main: tuple[str, ...] = (), headline: str | None = None,
                    per_user: pd.Series | None = None) -> None:
        """The table as CSV and markdown, and as metrics: every column of the ``main`` methods
        (``<fold>/<method>/<metric>``), the other methods (baselines) at cut-off 10
        (``<fold>/baseline/<method>/<metric>``), and ``<fold>/lift_vs_best_baseline/<headline>``
        of ``main[0]``. On the test fold ``main[0]``'s metrics are linked to the logged model
        (``log_bundle`` first) and the test data set. ``per_user``: ``main[0]``'s values per
        shopper."""
        now = int(time.time() * 1000)
        metrics = []
        for method, row in table.iterrows():
            linked = self.model_id if main and method == main[0] and fold == "test" else None
            dataset = self.test_dataset if linked else None
            for col, v in row.items():
                if not _is_number(v) or (method not in main and not col.endswith("@10")):
                    continue
                key = metric_key(fold, *((str(method),) if method in main else
                                         ("baseline", str(method))), str(col))
                metrics.append(Metric(key, float(v), now, 0, model_id=linked,
                                      dataset_name=dataset.name if dataset else None,
                                      dataset_digest=dataset.digest if dataset else None))
        lift = lift_vs_best(table, main, headline)
        if lift is not None:
            best, ratio = lift
            metrics.append(Metric(metric_key(fold, "lift_vs_best_baseline", headline), ratio,
                                  now, 0))
            self.client.set_tag(self.run_id, f"{fold}.best_baseline", best)
        for start in range(0, len(metrics), 1000):  # MLflow's batch limit for metrics
            self.client.log_batch(self.run_id, metrics=metrics[start:start + 1000])
        self.client.log_text(self.run_id, table.to_csv(), f"results/{fold}.csv")
        self.client.log_text(self.run_id, markdown_table(table), f"results/{fold}.md")
        if per_user is not None:
            frame = per_user.rename(metric_key(per_user.name or "value")).reset_index()
            self.client.log_text(self.run_id, frame.to_csv(index=False),
                                 f"results/{fold}_per_user.csv")

    def log_figures(self, history: list[dict[str, Any]], table: pd.DataFrame | None,
                    fold: str = "test") -> None:
        """Learning curves and the model-vs-baselines chart as PNG artifacts."""
        if history:
            self.client.log_figure(self.run_id, learning_curves(history),
                                   "figures/learning_curves.png")
        if table is not None and len(table):
            self.client.log_figure(self.run_id,
                                   comparison_chart(table, title=f"{self.spec_name}: {fold}"),
                                   f"figures/{fold}_comparison.png")

    def log_bundle(self, bundle_dir: Path, input_example: pd.DataFrame) -> ModelVersion:
        """Log the bundle as a pyfunc (signature from the example), register it as candidate."""
        from models.pyfunc import TailorPyfunc, load_ranker, recommend_frame

        output = recommend_frame(load_ranker(str(bundle_dir)), input_example)
        info = mlflow.pyfunc.log_model(
            name="model", python_model=TailorPyfunc(), artifacts={"bundle": str(bundle_dir)},
            code_paths=[str(ROOT / p) for p in CODE_PACKAGES],
            signature=pyfunc_signature(input_example, output), input_example=input_example,
            registered_model_name=self.model_name, pip_requirements=runtime_requirements())
        self.model_id = info.model_id
        # log_model makes the model "active", which would link every later metric to it, the
        # system metrics included; only the test metrics are the model's (log_results).
        mlflow.clear_active_model()
        version = str(info.registered_model_version)
        for key in ("hash", "protocol", "spec"):
            value = self.data_meta.get("data_hash" if key == "hash" else key)
            if value is not None:
                self.client.set_model_version_tag(self.model_name, version, f"data.{key}", value)
        self.client.set_registered_model_alias(self.model_name, CANDIDATE, version)
        return self.client.get_model_version(self.model_name, version)


def lift_vs_best(table: pd.DataFrame, main: tuple[str, ...], metric: str | None
                 ) -> tuple[str, float] | None:
    """(best baseline, ``main[0]`` / best baseline) on ``metric``; None when not defined."""
    if not main or metric is None or metric not in table.columns or main[0] not in table.index:
        return None
    baselines = table.loc[[m for m in table.index if m not in main], metric].dropna()
    if baselines.empty or not baselines.max() > 0:
        return None
    best = str(baselines.idxmax())
    return best, float(table.loc[main[0], metric]) / float(baselines.max())


def _is_number(value: Any) -> bool:
    """A finite real (numpy scalars included; booleans and NaN are not metrics)."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool | np.bool_) and \
        math.isfinite(float(value))


def markdown_table(table: pd.DataFrame, digits: int = 4) -> str:
    """A GitHub markdown table (pandas' to_markdown would need `tabulate`)."""
    cols = [str(table.index.name or "method"), *map(str, table.columns)]
    fmt = lambda v: f"{v:.{digits}f}" if _is_number(v) and not float(v).is_integer() else str(v)
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join([str(i), *map(fmt, row)]) + " |"
              for i, row in zip(table.index, table.itertuples(index=False), strict=True)]
    return "\n".join(lines) + "\n"


def pyfunc_signature(example: pd.DataFrame, output: pd.DataFrame) -> ModelSignature:
    """Inferred from the example, with ``k`` optional (default 10) as the pyfunc treats it."""
    with warnings.catch_warnings():  # the hint that int columns cannot hold NaN: k has a default
        warnings.filterwarnings("ignore", message=".*integer column", category=UserWarning)
        sig = infer_signature(example, output)
    inputs = Schema([ColSpec(c.type, c.name, required=c.name != "k") for c in sig.inputs.inputs])
    return ModelSignature(inputs=inputs, outputs=sig.outputs)


def runtime_requirements() -> list[str]:
    reqs = []
    for name in RUNTIME_PACKAGES:
        try:
            reqs.append(f"{name}=={metadata.version(name)}")
        except metadata.PackageNotFoundError:
            continue
    return reqs
