"""The package as installed: its console commands, and the dependencies that pyproject.toml, the
requirements*.in files and the locks declare against what the code imports."""

from __future__ import annotations

import ast
import importlib
import inspect
import re
import subprocess
import sys
import tomllib
from importlib import metadata
from pathlib import Path

import pytest

from features.infra import ROOT

PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
SCRIPTS: dict[str, str] = PYPROJECT["project"]["scripts"]
PACKAGES = ("features", "models", "training", "serving")   # what the wheel holds
DEV_FOLDERS = ("benchmarks", "tests")                      # the repo's, with the extras installed
INPUTS = ("requirements.in", "requirements-nodeps.in", "requirements-bench.in")
LOCKS = ("requirements.lock", "requirements-nodeps.lock", "requirements-bench.lock")
PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;#\\]+)")


def canonical(name: str) -> str:
    """A distribution name as pip compares them (PEP 503): fbgemm_gpu-cpu == fbgemm-gpu-cpu."""
    return re.sub(r"[-_.]+", "-", name).lower()


def pins(lines: list[str]) -> dict[str, str]:
    """``name==version`` requirements of a requirements file's or pyproject's lines."""
    found = (PIN.match(line.strip()) for line in lines)
    return {canonical(m[1]): m[2] for m in found if m}


def declared(*extras: str) -> dict[str, str]:
    """pyproject.toml's pinned dependencies, with those of ``extras``."""
    optional = PYPROJECT["project"]["optional-dependencies"]
    return pins([*PYPROJECT["project"]["dependencies"], *(r for e in extras for r in optional[e])])


@pytest.mark.parametrize("name", sorted(SCRIPTS))
def test_every_command_is_a_callable_without_required_arguments(name: str) -> None:
    module, _, attr = SCRIPTS[name].partition(":")
    entry = getattr(importlib.import_module(module), attr)
    assert callable(entry), SCRIPTS[name]
    required = [p for p in inspect.signature(entry).parameters.values()
                if p.default is p.empty and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
    assert not required, f"{name}: the console script calls {SCRIPTS[name]}() without arguments"


def test_the_installed_commands_are_pyprojects() -> None:
    """The environment's scripts are the current ones (a stale install: `make install`)."""
    installed = {ep.name: ep.value for ep in metadata.distribution("tailor").entry_points
                 if ep.group == "console_scripts"}
    assert installed == SCRIPTS
    bin_dir = Path(sys.executable).parent
    assert all((bin_dir / name).exists() for name in SCRIPTS)


def test_tailor_train_help_runs_from_the_installed_script() -> None:
    done = subprocess.run([str(Path(sys.executable).parent / "tailor-train"), "--help"],
                          capture_output=True, text=True, timeout=120, cwd="/")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("usage: tailor-train")
    for flag in ("--data", "--epochs", "--dim", "--encoder", "--out", "--no-mlflow"):
        assert flag in done.stdout


def test_a_command_fails_in_one_line_like_make() -> None:
    """The console script runs ``main`` through ``run_cli``: a user's mistake is one line and
    exit 2, not a traceback."""
    done = subprocess.run([str(Path(sys.executable).parent / "tailor-serve"),
                           "--model", "/nonexistent/bundle"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert done.stderr.strip() == "error: model '/nonexistent/bundle': no such bundle folder"


def third_party_imports(folder: Path) -> dict[str, str]:
    """Top-level names of the absolute imports in ``folder``'s modules that are neither the
    standard library nor the project's own packages: name -> a file that imports it."""
    own = {*PACKAGES, *DEV_FOLDERS}
    found: dict[str, str] = {}
    for path in sorted(folder.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                top = name.partition(".")[0]
                if top not in sys.stdlib_module_names and top not in own:
                    found.setdefault(top, str(path.relative_to(ROOT)))
    return found


@pytest.mark.parametrize("folder", [*PACKAGES, *DEV_FOLDERS])
def test_every_import_is_declared(folder: str) -> None:
    """A package's imports are in pyproject's dependencies (the benchmarks' and the tests' may
    also be in its extras): an import that only works because something else pulls it in
    breaks when that something changes."""
    allowed = set(declared() if folder in PACKAGES else declared("dev", "bench"))
    distributions = metadata.packages_distributions()
    undeclared = {name: where for name, where in third_party_imports(ROOT / folder).items()
                  if not {canonical(d) for d in distributions.get(name, [name])} & allowed}
    assert not undeclared, f"imported but not declared in pyproject.toml: {undeclared}"


def test_the_inputs_pin_what_pyproject_declares() -> None:
    """requirements*.in (what `make lock` compiles) and pyproject.toml name the same direct
    dependencies at the same versions."""
    inputs: dict[str, str] = {}
    for name in INPUTS:
        inputs |= pins((ROOT / name).read_text().splitlines())
    as_lines = lambda found: {f"{dist}=={version}" for dist, version in found.items()}
    assert as_lines(inputs) == as_lines(declared("dev", "bench"))


def test_the_locks_hold_every_pin_with_hashes() -> None:
    """Each lock entry has a hash (pip installs them with --require-hashes), and every direct
    pin is in a lock at its version (torch's local label, +cpu, aside): the locks are current."""
    locked: dict[str, str] = {}
    for name in LOCKS:
        lines = (ROOT / name).read_text().splitlines()
        for line, after in zip(lines, [*lines[1:], ""], strict=True):
            if PIN.match(line):   # its hashes follow on continuation lines
                assert after.strip().startswith("--hash=sha256:"), f"{name}: {line} has no hash"
        locked |= pins(lines)
    for dist, version in declared("dev", "bench").items():
        assert locked.get(dist, "").split("+")[0] == version, f"{dist}: lock {locked.get(dist)}"
