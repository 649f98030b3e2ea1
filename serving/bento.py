"""`make bento`: the model ``make serve`` would serve, packed with the service into a Bento.

    python -m serving.bento --model champion          # what `make bento MODEL=champion` runs
    bentoml serve tailor:latest                       # serves it as `make serve` would

1. ``--model`` resolves exactly as ``make serve``'s MODEL (``models.registry.resolve_model``): an
   alias of the registered model, a version, a run id or a bundle folder.
2. The bundle folder is copied into BentoML's model store (``$BENTOML_HOME``, default
   ``~/bentoml``) as ``tailor:<version>``: ``v<registered version>-<content hash>``, or
   ``bundle-<content hash>`` for a bundle the registry does not know, so one bundle is imported
   once whichever reference names it. Labels: ``registered_version``, ``data_hash``,
   ``git_commit`` (the training run's); metadata: what was resolved, when and on what it was
   trained, the content hash.
3. ``bentoml build`` (``bentofile.yaml``: the code, and an image with CPU torch and torchrec as
   ``make install`` installs them) runs with ``$TAILOR_BENTO_MODEL`` naming that model. The
   service (``serving/service.py``) then declares it as a ``bentoml.models.BentoModel`` class
   attribute: that is what makes BentoML pack the model with the Bento, and what a running Bento
   loads its bundle from (``bento_model_tag``), so a Bento never reads MLflow.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import bentoml
import yaml
from bentoml.exceptions import NotFound

from features.infra import ROOT, TailorError, add_traceback_arg, command, git_state
from models.registry import MODEL_NAME, registered_version, resolve_model

BENTO_MODEL_ENV = "TAILOR_BENTO_MODEL"
BENTOFILE = ROOT / "bentofile.yaml"
HASH_CHARS = 12
BUILD_TIMEOUT_S = 1800


# --- when the service starts ------------------------------------------------------------------

def bento_model_tag(root: Path = ROOT) -> str | None:
    """The BentoML model the service serves: ``$TAILOR_BENTO_MODEL`` (set by ``make bento`` while
    ``bentoml build`` imports the service, or by whoever serves a stored model from a checkout),
    else, when this code runs from a Bento, the ``tailor`` model its ``bento.yaml`` lists;
    None otherwise (``make serve``: the service serves ``$TAILOR_MODEL``).

    A Bento keeps the project's code in ``<bento>/src`` (``root``) beside its ``bento.yaml``,
    both locally (``bentoml serve tailor:latest``) and in its container. The environment
    variable cannot carry the tag there: the service module is imported again, by BentoML,
    before any worker starts."""
    named = os.environ.get(BENTO_MODEL_ENV, "").strip()
    if named:
        return named
    manifest = root.parent / "bento.yaml"
    if not manifest.is_file():
        return None
    info = yaml.safe_load(manifest.read_text(encoding="utf-8")) or {}
    listed = [*info.get("models", []),
              *(m for service in info.get("services", []) for m in service.get("models", []))]
    tags = [str(m["tag"]) for m in listed if str(m.get("tag", "")).partition(":")[0] == MODEL_NAME]
    return tags[0] if tags else None


# --- make bento -------------------------------------------------------------------------------

def bundle_digest(folder: Path) -> str:
    """sha256 of every file's relative path and bytes: the same bundle gets the same tag."""
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        digest.update(path.relative_to(folder).as_posix().encode() + b"\0")
        with path.open("rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def model_tag(registered: int | None, digest: str) -> str:
    stem = "bundle" if registered is None else f"v{registered}"
    return f"{MODEL_NAME}:{stem}-{digest[:HASH_CHARS]}"


def import_bundle(ref: str) -> tuple[bentoml.Model, bool]:
    """The BentoML model of MODEL ``ref``, imported now (True) or found in the store (False)."""
    folder = resolve_model(ref)   # a TailorError naming ref when it resolves to nothing
    registered = registered_version(ref)
    digest = bundle_digest(folder)
    tag = model_tag(registered, digest)
    try:
        return bentoml.models.get(tag), False
    except NotFound:
        pass
    info = json.loads((folder / "bundle.json").read_text(encoding="utf-8"))
    data, git = info.get("data", {}), info.get("git", {})
    labels = {"registered_version": "none" if registered is None else str(registered),
              "data_hash": str(data.get("data_hash") or "unknown"),
              "git_commit": str(git.get("commit") or "unknown")}
    metadata = {"source_ref": ref,
                "registered_model": None if registered is None else f"{MODEL_NAME}/{registered}",
                "data_spec": data.get("spec"), "data_protocol": data.get("protocol"),
                "trained_at": info.get("created_at"), "git_dirty": git.get("dirty"),
                "bundle_sha256": digest}
    with bentoml.models.create(tag, labels=labels, metadata={   # BentoML refuses None values
            key: value for key, value in metadata.items() if value is not None}) as model:
        # The model's folder holds BentoML's model.yaml too; Bundle.load reads its own files.
        shutil.copytree(folder, model.path, dirs_exist_ok=True)
    return bentoml.models.get(tag), True


def build_bento(model: bentoml.Model, version: str | None) -> str:
    """``bentoml build`` of bentofile.yaml serving ``model``; the new Bento's tag."""
    code = git_state()
    labels = {**model.info.labels, "model": str(model.tag),
              "code_commit": code["git.commit"], "code_dirty": code["git.dirty"]}
    cmd = [str(Path(sys.executable).parent / "bentoml"), "build", str(ROOT),
           "--bentofile", str(BENTOFILE), "--output", "tag",
           *(f"--label={key}={value}" for key, value in labels.items()),
           *(["--version", version] if version else [])]
    env = {**os.environ, BENTO_MODEL_ENV: str(model.tag)}
    try:
        done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True,
                              timeout=BUILD_TIMEOUT_S)
    except subprocess.TimeoutExpired as exc:
        raise TailorError(f"bentoml build did not finish in {BUILD_TIMEOUT_S} s") from exc
    out = f"{done.stdout}\n{done.stderr}"
    # `--output tag` prints `__tag__:<name>:<version>` once the Bento is saved.
    tags = [line.split("__tag__:", 1)[1].strip() for line in out.splitlines()
            if "__tag__:" in line]
    if done.returncode != 0 or not tags:
        tail = "\n".join(out.strip().splitlines()[-20:])
        raise TailorError(f"bentoml build failed (exit {done.returncode}):\n{tail}")
    bento = bentoml.bentos.get(tags[-1])
    if model.tag not in {m.tag for m in bento.info.all_models}:   # the service did not declare it
        raise TailorError(f"bento {bento.tag} does not hold model {model.tag}; the service "
                          f"declares its BentoModel from ${BENTO_MODEL_ENV}")
    return str(bento.tag)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tailor-bento",
        description="Import a Tailor model's bundle into the BentoML model store ($BENTOML_HOME, "
                    "default ~/bentoml) and build a Bento (bentofile.yaml) whose service serves "
                    "it: `bentoml serve tailor:latest` then answers as `make serve` does, and "
                    "`make containerize` makes an OCI image of it.")
    parser.add_argument("--model", default="champion", metavar="REF",
                        help="the model, as `make serve` takes it: an alias of the registered "
                             "model (champion, candidate), a version number, an MLflow run id "
                             "or a bundle folder (default: %(default)s)")
    parser.add_argument("--version", metavar="VERSION",
                        help="the Bento's version (letters, digits, '.', '-', '_'); default: "
                             "one BentoML generates, unique to this build")
    add_traceback_arg(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    model, created = import_bundle(args.model)
    labels = ", ".join(f"{k}={v}" for k, v in model.info.labels.items())
    print(f"model     {args.model}: {model.tag} "
          f"({'imported' if created else 'already in the store'}; {labels})")
    tag = build_bento(model, args.version)
    print(f"bento     {tag}: serve it with `bentoml serve {tag}` (or tailor:latest); "
          "`make containerize` builds its image")
    return 0


cli = command(main)  # `tailor-bento` (pyproject.toml [project.scripts])

if __name__ == "__main__":
    cli()
