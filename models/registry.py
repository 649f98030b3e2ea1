"""The MLflow store, the model registry and promotion: what training and serving both use.

Store: ``$MLFLOW_TRACKING_URI`` when set, else the local SQLite store ``mlflow/mlflow.db`` with
artifacts under ``mlflow/artifacts/`` in the project root (``make mlflow-ui`` browses it).
Training registers versions and promotes them (``training/promotion.py``); serving and batch
scoring resolve a reference (alias, version, run id, folder) to a local bundle
(``resolve_model``).
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path
from urllib.parse import unquote, urlparse

# Submodule imports on purpose: the project's `mlflow/` store folder makes ruff's isort take a
# bare `mlflow` for first-party code. `import mlflow.artifacts` binds `mlflow` all the same.
import mlflow.artifacts
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
