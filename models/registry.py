"""The MLflow store, the model registry and promotion: what training and serving both use.

Store: ``$MLFLOW_TRACKING_URI`` when set, else the local SQLite store ``mlflow/mlflow.db`` with
artifacts under ``mlflow/artifacts/`` in the project root (``make mlflow-ui`` browses it).
Training registers versions and promotes them (``promote``); serving and batch scoring resolve a
reference (alias, version, run id, folder) to a local bundle (``resolve_model``).

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

import math
import os
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

# Submodule imports on purpose: the project's `mlflow/` store folder makes ruff's isort take a
# bare `mlflow` for first-party code. `import mlflow.artifacts` binds `mlflow` all the same.
import mlflow.artifacts
import pandas as pd
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from mlflow.models import Model
from mlflow.tracking import MlflowClient

from features.infra import ROOT, TailorError

STORE_DIR = ROOT / "mlflow"  # never a Python package: it would shadow the `mlflow` library
DEFAULT_URI = f"sqlite:///{STORE_DIR / 'mlflow.db'}"
MODEL_NAME = "tailor"
CANDIDATE, CHAMPION = "candidate", "champion"
ALIAS = r"[A-Za-z_][\w-]*"   # how a registry alias is spelled (champion, candidate, ...)


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
    metrics = dict(run.data.metrics) if run else {}
    for key, value in list(metrics.items()):  # runs logged before the served ranking was renamed
        metrics.setdefault(key.replace(".two_tower.", ".tailor."), value)
    return tags.get("data.hash"), tags.get("data.protocol"), metrics


class ChampionSawTestData(Exception):
    """The champion was refitted on data that covers this run's test window: scoring it there
    would grade it on what it trained on."""


def promote(client: MlflowClient, version: ModelVersion | str | int, *, score_key: str,
            data_hash: str, protocol: str, force: bool = False, name: str = MODEL_NAME,
            score_champion: Callable[[ModelVersion], float] | None = None) -> dict[str, Any]:
    """Mark ``version`` candidate; make it champion by the rule in the module docstring.

    ``score_key`` is a run metric, higher is better (e.g. ``valid.tailor.ndcg_at_10``).
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
        raise TailorError(f"model '{ref}': folder is not a Tailor bundle (no bundle.json)")
    if "/" in ref and not ref.startswith(("models:/", "runs:/")):
        raise TailorError(f"model '{ref}': no such bundle folder")
    client = MlflowClient(configure())
    source = _registry_source(client, ref, name) or _run_source(client, ref)
    if source is None:
        raise TailorError(f"model '{ref}': not a bundle folder, an alias or version of registered "
                        f"model '{name}', or a run id with a logged model")
    return _bundle_of_source(client, source, ref)


def registered_version(ref: str, *, name: str = MODEL_NAME) -> int | None:
    """The version of registered model ``name`` that ``ref`` names when it is an alias
    (``champion``) or a version number; None for anything else (a bundle folder, a run id, an
    alias or version the registry does not have)."""
    ref = str(ref)
    if Path(ref).expanduser().is_dir() or not (ref.isdigit() or re.fullmatch(ALIAS, ref)):
        return None
    client = MlflowClient(configure())
    try:
        mv = client.get_model_version(name, ref) if ref.isdigit() else \
            client.get_model_version_by_alias(name, ref)
    except MlflowException:
        return None
    return int(mv.version)


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
        if re.fullmatch(ALIAS, ref):
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
    from features.infra import cache_root  # the same cache root as the processed data

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
            raise TailorError(f"model '{ref}': cannot download {location}: {exc}") from exc
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
        raise TailorError(f"{model_dir}: MLflow model without a Tailor bundle") from exc
    return model_dir / rel
