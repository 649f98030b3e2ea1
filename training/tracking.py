"""MLflow tracking for Tailor: one experiment per data set, one run per training, a registry.

Store: ``$MLFLOW_TRACKING_URI`` when set, else the local SQLite store ``mlflow/mlflow.db`` with
artifacts under ``mlflow/artifacts/`` in the project root (``make mlflow-ui`` browses it). Nothing
here needs a network.

Names in a run, so runs of one data set compare in a single MLflow table:

- params ``features.<k>``, ``model.<k>``, ``train.<k>`` (nested settings: ``train.a.b``) and the
  data fingerprint ``data.<k>`` (``data.spec``, ``data.hash``, ``data.users``, ``data.protocol``,
  ``data.valid_start``, ``data.test_start``, ...); tags ``data.spec``, ``data.name``,
  ``data.hash``, ``data.protocol``, ``git.commit``, ``git.dirty``
- per-epoch metrics ``epoch.<key>`` (``epoch.loss``, ``epoch.valid_score``) with step = epoch
- results ``<fold>.<method>.<metric>`` with '@' spelled ``_at_`` (``test.two_tower.hr_at_10``)
- artifacts ``data_meta.json``, ``configs.json``, ``results/<fold>.csv|md``,
  ``figures/learning_curves.png``, ``figures/<fold>_comparison.png``, ``promotion.json``

Promotion rule (``promote``): every new version gets the alias ``candidate``. ``champion``
moves to it when there is no champion yet, or when it scores strictly higher on ``score_key``
than the champion on the same data under the same protocol. When the champion was trained on
the same data (``data.hash``) under the same protocol, its logged score is that comparison.
Otherwise (a log that has grown since, another file) the logged scores come from different test
sets and say nothing about which model is better, so the champion is scored again on the new
version's own test data (``training/challenge.py``, passed in as ``score_champion``) and the two
are compared there; without that score the champion is kept and the decision says so.
``force=True`` (after a human looked) promotes regardless.
"""

from __future__ import annotations

import json
import math
import numbers
import os
import re
import shutil
import subprocess
import time
import warnings
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

# Submodule imports on purpose: the project's `mlflow/` store folder makes ruff's isort take a
# bare `mlflow` for first-party code. `import mlflow.pyfunc` binds `mlflow` all the same.
import mlflow.artifacts
import mlflow.pyfunc
import numpy as np
import pandas as pd
from mlflow.entities import Metric, Param
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from mlflow.models import Model, ModelSignature, infer_signature
from mlflow.tracking import MlflowClient
from mlflow.types.schema import ColSpec, Schema

from features.schema import DataError

ROOT = Path(__file__).resolve().parent.parent
STORE_DIR = ROOT / "mlflow"  # never a Python package: it would shadow the `mlflow` library
DEFAULT_URI = f"sqlite:///{STORE_DIR / 'mlflow.db'}"
MODEL_NAME = "tailor"
CANDIDATE, CHAMPION = "candidate", "champion"
CODE_PACKAGES = ("features", "models")  # shipped with the pyfunc so it loads anywhere
# Only what the pyfunc imports; pinned to what is installed (inferring them costs a subprocess).
RUNTIME_PACKAGES = ("mlflow", "torch", "torchrec", "fbgemm-gpu-cpu", "tensordict", "pandas",
                    "numpy", "pyarrow", "scipy")
# Meta keys that describe a cache or a timing, not the data: kept in data_meta.json only.
NOT_FINGERPRINT = {"config", "report", "cache", "cache_dir", "seconds", "read_seconds"}
DATA_TAGS = ("spec", "name", "hash", "protocol")


# --- store -------------------------------------------------------------------------------------

def tracking_uri() -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_URI


def artifact_root(uri: str | None = None) -> Path | None:
    """Where new experiments keep artifacts: beside a SQLite store; the server decides otherwise.

    Without this, a SQLite store would put artifacts in ``./mlruns`` of whatever the working
    directory happens to be.
    """
    uri = uri or tracking_uri()
    if uri == DEFAULT_URI:
        return STORE_DIR / "artifacts"
    if uri.startswith("sqlite:///"):
        return Path(uri.removeprefix("sqlite:///")).parent / "artifacts"
    return None


def configure() -> str:
    """Point MLflow at the store (and create the local folders); returns the URI."""
    uri = tracking_uri()
    root = artifact_root(uri)
    if root is not None:
        root.mkdir(parents=True, exist_ok=True)
    mlflow.set_tracking_uri(uri)
    return uri


def experiment_name(spec_name: str) -> str:
    return f"tailor-{spec_name}"


def ensure_experiment(spec_name: str, client: MlflowClient | None = None) -> str:
    """Id of the data set's experiment, created (or restored) as needed."""
    client = client or MlflowClient(configure())
    name = experiment_name(spec_name)
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        if exp.lifecycle_stage == "deleted":
            client.restore_experiment(exp.experiment_id)
        return exp.experiment_id
    root = artifact_root()
    location = (root / re.sub(r"[^\w.-]", "_", name)).as_uri() if root else None
    try:
        return client.create_experiment(name, artifact_location=location)
    except MlflowException:  # another process created it first
        exp = client.get_experiment_by_name(name)
        if exp is None:
            raise
        return exp.experiment_id


# --- naming ------------------------------------------------------------------------------------

def metric_key(*parts: str) -> str:
    """``test``, ``two_tower``, ``hr@10`` -> ``test.two_tower.hr_at_10`` (MLflow forbids '@')."""
    text = ".".join(parts).replace("@", "_at_")
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


def git_state(cwd: Path = ROOT) -> dict[str, str]:
    """Commit and dirty flag of the checkout, 'unknown' outside git (e.g. an unpacked copy)."""
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True,
                              timeout=10, check=True).stdout.strip()
    try:
        commit = git("rev-parse", "HEAD")
        dirty = bool(git("status", "--porcelain", "--untracked-files=no"))
    except (OSError, subprocess.SubprocessError):
        return {"git.commit": "unknown", "git.dirty": "unknown"}
    return {"git.commit": commit, "git.dirty": str(dirty).lower(),
            "mlflow.source.git.commit": commit}


# --- the run -----------------------------------------------------------------------------------

class RunLogger:
    """One training run: ``with RunLogger("synthetic-small") as log: log.log_setup(...)``."""

    def __init__(self, spec_name: str, run_name: str | None = None, *,
                 model_name: str = MODEL_NAME, tags: dict[str, str] | None = None) -> None:
        self.spec_name, self.run_name, self.model_name = spec_name, run_name, model_name
        self.tags = dict(tags or {})
        self.run: mlflow.ActiveRun | None = None
        self.client: MlflowClient | None = None
        self.data_meta: dict[str, Any] = {}

    def __enter__(self) -> RunLogger:
        self.client = MlflowClient(configure())
        experiment_id = ensure_experiment(self.spec_name, self.client)
        self.run = mlflow.start_run(experiment_id=experiment_id, run_name=self.run_name,
                                    tags=self.tags or None)
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

    def log_results(self, table: pd.DataFrame, fold: str = "test") -> None:
        """One row per method -> ``<fold>.<method>.<metric>`` metrics, plus CSV and markdown."""
        now = int(time.time() * 1000)
        metrics = [Metric(metric_key(fold, str(method), str(col)), float(v), now, 0)
                   for method, row in table.iterrows() for col, v in row.items()
                   if _is_number(v)]
        for start in range(0, len(metrics), 1000):  # MLflow's batch limit for metrics
            self.client.log_batch(self.run_id, metrics=metrics[start:start + 1000])
        self.client.log_text(self.run_id, table.to_csv(), f"results/{fold}.csv")
        self.client.log_text(self.run_id, markdown_table(table), f"results/{fold}.md")

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
        from models.bundle import Bundle  # local: torch/torchrec load only when logging a model
        from models.pyfunc import TailorPyfunc, recommend_frame

        output = recommend_frame(Bundle.load(bundle_dir), input_example)
        info = mlflow.pyfunc.log_model(
            name="model", python_model=TailorPyfunc(), artifacts={"bundle": str(bundle_dir)},
            code_paths=[str(ROOT / p) for p in CODE_PACKAGES],
            signature=pyfunc_signature(input_example, output), input_example=input_example,
            registered_model_name=self.model_name, pip_requirements=runtime_requirements())
        version = str(info.registered_model_version)
        for key in ("hash", "protocol", "spec"):
            value = self.data_meta.get("data_hash" if key == "hash" else key)
            if value is not None:
                self.client.set_model_version_tag(self.model_name, version, f"data.{key}", value)
        self.client.set_registered_model_alias(self.model_name, CANDIDATE, version)
        return self.client.get_model_version(self.model_name, version)


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


def _figure(size: tuple[float, float]) -> Any:
    # A bare Figure renders PNG with the Agg canvas: no pyplot, no display, no global state.
    from matplotlib.figure import Figure

    return Figure(figsize=size, layout="constrained")


def learning_curves(history: list[dict[str, Any]]) -> Any:
    """Loss and validation score per epoch, side by side."""
    epochs = [r["epoch"] for r in history]
    valid_keys = [k for k in history[0] if k.startswith("valid")]
    fig = _figure((10, 3.6))
    axes = fig.subplots(1, 2)
    axes[0].plot(epochs, [r.get("loss", math.nan) for r in history], marker="o")
    axes[0].set(title="training loss", xlabel="epoch", ylabel="loss")
    for key in valid_keys:
        axes[1].plot(epochs, [r.get(key, math.nan) for r in history], marker="o", label=key)
    axes[1].set(title="validation", xlabel="epoch", ylabel="score")
    if valid_keys:
        axes[1].legend()
    for ax in axes:
        ax.grid(alpha=0.3)
    return fig


def comparison_chart(table: pd.DataFrame, title: str = "") -> Any:
    """Grouped bars: each ranking metric (columns with '@'), one bar per method."""
    cols = [c for c in table.columns if "@" in str(c)] or \
        [c for c in table.columns if pd.api.types.is_numeric_dtype(table[c])]
    x = np.arange(len(cols))
    width = 0.8 / max(len(table), 1)
    fig = _figure((max(6.0, 0.9 * len(cols) + 2), 4))
    ax = fig.subplots()
    for i, (method, row) in enumerate(table[cols].iterrows()):
        ax.bar(x + (i - (len(table) - 1) / 2) * width, row.to_numpy(dtype=float), width,
               label=str(method))
    ax.set_xticks(x, [str(c) for c in cols], rotation=45, ha="right")
    ax.set(title=title, ylabel="score")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize="small")
    return fig


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


# --- registry: promotion -----------------------------------------------------------------------

def _alias(client: MlflowClient, name: str, alias: str) -> ModelVersion | None:
    try:
        return client.get_model_version_by_alias(name, alias)
    except MlflowException:
        return None


def _data_of(client: MlflowClient, mv: ModelVersion) -> tuple[str | None, str | None, dict]:
    """(data hash, protocol, run metrics) of a version: its own tags first, then its run's."""
    run = client.get_run(mv.run_id) if mv.run_id else None
    tags = {**(run.data.tags if run else {}), **(mv.tags or {})}
    return tags.get("data.hash"), tags.get("data.protocol"), (run.data.metrics if run else {})


class ChampionSawTestData(Exception):
    """The champion was refitted on data that covers this run's test window: scoring it there
    would grade it on what it trained on."""


def promote(client: MlflowClient, version: ModelVersion | str | int, *, score_key: str,
            data_hash: str, protocol: str, force: bool = False, name: str = MODEL_NAME,
            score_champion: Callable[[ModelVersion], float] | None = None) -> dict[str, Any]:
    """Mark ``version`` candidate; make it champion by the rule in the module docstring.

    ``score_key`` is a run metric, higher is better (e.g. ``valid.two_tower.ndcg_at_10``).
    ``score_champion``: the champion's value of that metric on this version's own test data
    (``training/challenge.py``), asked for only when the champion's logged score is not
    comparable (other data or protocol); None keeps such a champion.
    The decision is logged to the version's run (tags ``promotion.*`` and ``promotion.json``).
    """
    mv = version if isinstance(version, ModelVersion) else \
        client.get_model_version(name, str(version))
    name, ver = mv.name, str(mv.version)
    client.set_model_version_tag(name, ver, "data.hash", data_hash)
    client.set_model_version_tag(name, ver, "data.protocol", protocol)
    client.set_registered_model_alias(name, CANDIDATE, ver)
    score = _data_of(client, mv)[2].get(score_key)
    decision: dict[str, Any] = {
        "model": name, "version": int(ver), "run_id": mv.run_id, "score_key": score_key,
        "score": score, "data_hash": data_hash, "protocol": protocol, "force": force,
        "champion_version": None, "champion_score": None, "champion_data_hash": None,
        "champion_protocol": None, "comparable": None, "champion_score_here": None,
    }
    champion = _alias(client, name, CHAMPION)
    if champion is not None:
        c_hash, c_protocol, c_metrics = _data_of(client, champion)
        decision.update(champion_version=int(champion.version), champion_data_hash=c_hash,
                        champion_protocol=c_protocol, champion_score=c_metrics.get(score_key),
                        comparable=(c_hash == data_hash and c_protocol == protocol
                                    and c_metrics.get(score_key) is not None))
        if not decision["comparable"] and score_champion is not None and \
                champion.version != mv.version:
            try:
                here = float(score_champion(champion))
            except ChampionSawTestData as exc:
                decision["champion_saw_test"] = str(exc)
            except Exception as exc:  # an old or broken bundle: keep the champion, say why
                decision["champion_error"] = f"{type(exc).__name__}: {exc}"[:300]
            else:
                decision["champion_score_here"] = here if math.isfinite(here) else None
    promoted, reason = _decide(decision, champion is not None and champion.version == mv.version)
    if promoted:
        client.set_registered_model_alias(name, CHAMPION, ver)
    decision.update(promoted=promoted, reason=reason,
                    decided_at=pd.Timestamp.now(tz="UTC").isoformat())
    _log_decision(client, mv, decision)
    return decision


def _decide(d: dict[str, Any], already: bool) -> tuple[bool, str]:
    if already:
        return True, "already champion"
    if d["force"]:
        return True, "forced"
    if d["champion_version"] is None:
        return True, "no champion yet"
    if d["score"] is None:
        return False, f"run has no metric {d['score_key']}"
    if d.get("champion_saw_test") and d["champion_score"] is not None:
        # Scored here it would be graded on what it trained on: each on its own test fold.
        verdict = ">" if d["score"] > d["champion_score"] else "<="
        return d["score"] > d["champion_score"], (
            f"{d['score']:.6g} {verdict} champion v{d['champion_version']}'s "
            f"{d['champion_score']:.6g}, each on its own test fold (the champion was refitted "
            f"on data that covers this run's test window: {d['champion_saw_test']})")
    if d["champion_data_hash"] != d["data_hash"] or d["champion_protocol"] != d["protocol"]:
        here = d.get("champion_score_here")
        if here is None:
            return False, (f"champion v{d['champion_version']} was evaluated on other data or "
                           "protocol: scores are not comparable, champion kept (use force)")
        if d["score"] > here:
            return True, (f"{d['score']:.6g} > champion v{d['champion_version']}'s {here:.6g} "
                          "on this run's test data")
        return False, (f"{d['score']:.6g} <= champion v{d['champion_version']}'s {here:.6g} "
                       "on this run's test data")
    if d["champion_score"] is None:
        return False, f"champion has no metric {d['score_key']}: kept (use force)"
    if d["score"] > d["champion_score"]:
        return True, f"{d['score']:.6g} > champion's {d['champion_score']:.6g}"
    return False, f"{d['score']:.6g} <= champion's {d['champion_score']:.6g}"


def _log_decision(client: MlflowClient, mv: ModelVersion, decision: dict[str, Any]) -> None:
    # Tags, not params: a later forced promotion of the same run must be able to overwrite them.
    summary = {"promotion.decision": "champion" if decision["promoted"] else "candidate",
               "promotion.reason": decision["reason"],
               "promotion.score_key": decision["score_key"],
               "promotion.score": str(decision["score"]),
               "promotion.champion_version": str(decision["champion_version"]),
               "promotion.champion_score": str(decision["champion_score"]),
               "promotion.champion_score_here": str(decision["champion_score_here"])}
    client.set_model_version_tag(mv.name, str(mv.version), "promotion.decision",
                                 summary["promotion.decision"])
    if not mv.run_id:
        return
    for key, value in summary.items():
        client.set_tag(mv.run_id, key, value)
    client.log_dict(mv.run_id, decision, "promotion.json")


# --- registry: resolving a model reference -----------------------------------------------------

def resolve_model(ref: str, *, name: str = MODEL_NAME) -> Path:
    """A local bundle folder for ``ref``.

    ``ref``: a bundle folder (or a downloaded MLflow model folder), an alias of the registered
    model (``champion``, ``candidate``), a version number, an MLflow run id, or a ``models:/``
    or ``runs:/`` URI. Registry look-ups read the artifacts in place when the store is local,
    else download them once into the cache (``$TAILOR_CACHE/models``).
    """
    ref = str(ref)
    path = Path(ref).expanduser()
    if path.is_dir():
        if (path / "bundle.json").exists():
            return path
        if (path / "MLmodel").exists():
            return _bundle_in(path)
        raise DataError(f"model '{ref}': folder is not a Tailor bundle (no bundle.json)")
    if "/" in ref and not ref.startswith(("models:/", "runs:/")):
        raise DataError(f"model '{ref}': no such bundle folder")
    client = MlflowClient(configure())
    source = _registry_source(client, ref, name) or _run_source(client, ref)
    if source is None:
        raise DataError(f"model '{ref}': not a bundle folder, an alias or version of registered "
                        f"model '{name}', or a run id with a logged model")
    return _bundle_of_source(client, source, ref)


def _registry_source(client: MlflowClient, ref: str, name: str) -> str | None:
    """``models:/...`` source of ``ref`` read as 3, champion, models:/tailor/3, models:/tailor@x."""
    if ref.startswith("models:/"):
        body = ref.removeprefix("models:/")
        if body.startswith("m-"):  # already a logged model id
            return ref
        name, sep, ref = body.partition("@")
        if not sep:
            name, _, ref = body.partition("/")
    try:
        if ref.isdigit():
            return client.get_model_version(name, ref).source
        if re.fullmatch(r"[A-Za-z_][\w-]*", ref):
            return client.get_model_version_by_alias(name, ref).source
    except MlflowException:  # no such model, version or alias
        return None
    return None


def _run_source(client: MlflowClient, ref: str) -> str | None:
    """``models:/<id>`` of the latest model logged by run ``ref`` (or ``runs:/<id>``)."""
    run_id = ref.removeprefix("runs:/").split("/")[0]
    if not re.fullmatch(r"[0-9a-f]{32}", run_id):
        return None
    try:
        run = client.get_run(run_id)
    except MlflowException:
        return None
    found = client.search_logged_models([run.info.experiment_id],
                                        filter_string=f"source_run_id = '{run_id}'")
    models = sorted(found, key=lambda m: m.creation_timestamp, reverse=True)
    return f"models:/{models[0].model_id}" if models else None


def _bundle_of_source(client: MlflowClient, source: str, ref: str) -> Path:
    """The bundle inside a logged model: read in place when local, else downloaded once."""
    if source.startswith("models:/m-"):
        key = source.removeprefix("models:/")
        location = client.get_logged_model(key).artifact_location
    else:  # an older-style source: a runs:/ or artifact URI
        key, location = re.sub(r"\W", "_", source), source
    parsed = urlparse(location)
    if parsed.scheme in ("", "file") and Path(unquote(parsed.path)).is_dir():
        return _bundle_in(Path(unquote(parsed.path)))
    from features.pipeline import cache_root  # the same cache root as the processed data

    target = cache_root() / "models" / key
    if not (target / "MLmodel").exists():
        shutil.rmtree(target, ignore_errors=True)  # a partial copy from an interrupted run
        tmp = target.with_name(f"{target.name}.tmp-{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        try:
            # The download lands in a sub-folder of tmp named after the artifact folder.
            local = mlflow.artifacts.download_artifacts(artifact_uri=location, dst_path=str(tmp))
            os.replace(local, target)
        except MlflowException as exc:
            raise DataError(f"model '{ref}': cannot download {location}: {exc}") from exc
        except OSError:  # another process finished the same download first: keep theirs
            pass
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return _bundle_in(target)


def _bundle_in(model_dir: Path) -> Path:
    """Bundle folder of a pyfunc model directory (its ``bundle`` artifact)."""
    try:
        flavor = Model.load(model_dir / "MLmodel").flavors["python_function"]
        rel = flavor["artifacts"]["bundle"]["path"]
    except (KeyError, TypeError, OSError) as exc:
        raise DataError(f"{model_dir}: MLflow model without a Tailor bundle") from exc
    return model_dir / rel
