"""`make serve` / `tailor-serve`: the model check, then ``bentoml serve`` in its place."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

import serving.serve as serve
from features.infra import TailorError
from serving.auth import FILE_ENV, KEYS_ENV


def test_checks_the_model_then_becomes_bentoml_serve(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "bundle.json").write_text("{}")   # what makes a folder a bundle to the check
    execs: list[tuple[str, list[str], dict[str, str]]] = []
    monkeypatch.setattr(serve.os, "execve", lambda path, cmd, env: execs.append((path, cmd, env)))
    serve.main(["--model", str(tmp_path), "--port", "3999", "--api-workers", "1"])
    [(path, cmd, env)] = execs
    assert path == str(Path(sys.executable).parent / "bentoml") == cmd[0]
    # flags of its own become bentoml's --host / --port; any other goes to bentoml serve as is
    assert cmd[1:] == ["serve", "serving.service:Tailor", "--host", "127.0.0.1", "--port", "3999",
                       "--api-workers", "1"]
    assert env["TAILOR_MODEL"] == str(tmp_path) and env["TAILOR_SERVE_HOST"] == "127.0.0.1"


def test_refuses_another_host_without_api_keys(tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "keys.toml").write_text("")   # a keys file without a key
    monkeypatch.setenv(FILE_ENV, str(tmp_path / "keys.toml"))
    monkeypatch.delenv(KEYS_ENV, raising=False)
    monkeypatch.setattr(serve.os, "execve", lambda *a: pytest.fail("served without keys"))
    with pytest.raises(TailorError, match="without API keys"):
        serve.main(["--model", str(tmp_path), "--host", "0.0.0.0"])
