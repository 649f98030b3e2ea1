"""API keys (serving/auth.py): roles per route, hashed keys, loopback only without keys; the
middleware over an ASGI app, then a real server with keys configured."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import pytest

from features.infra import DataError
from serving.auth import (
    FILE_ENV,
    KEYS_ENV,
    ApiKeyMiddleware,
    key_hash,
    load_keys,
    new_key,
    required_role,
)
from serving.process import free_port, served


async def ok_app(scope, receive, send) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})


def call(middleware: ApiKeyMiddleware, path: str, key: str | None = None,
         server: tuple[str, int] = ("127.0.0.1", 3000), bearer: bool = True) -> tuple[int, bytes]:
    headers = []
    if key is not None:
        headers = [(b"authorization", f"Bearer {key}".encode())] if bearer else \
            [(b"x-api-key", key.encode())]
    scope = {"type": "http", "path": path, "headers": headers, "server": server,
             "method": "POST"}
    sent: list[dict] = []

    async def send(message: dict) -> None:
        sent.append(message)

    async def receive() -> dict:
        return {"type": "http.request", "body": b""}

    asyncio.run(middleware(scope, receive, send))
    return sent[0]["status"], sent[1]["body"]


KEYS = {key_hash("r-key"): "read", key_hash("w-key"): "write", key_hash("a-key"): "admin"}


def test_roles_per_route() -> None:
    assert required_role("/healthz") is None and required_role("/metrics") is None
    assert required_role("/recommend") == "read" and required_role("/model") == "read"
    assert required_role("/events") == "write"
    assert required_role("/admin/forget") == "admin"
    guard = ApiKeyMiddleware(ok_app, KEYS)
    assert call(guard, "/recommend", "r-key")[0] == 200
    assert call(guard, "/recommend", "w-key", bearer=False)[0] == 200   # X-API-Key works too
    assert call(guard, "/events", "r-key")[0] == 403
    assert call(guard, "/events", "w-key")[0] == 200
    assert call(guard, "/admin/forget", "w-key")[0] == 403
    assert call(guard, "/admin/forget", "a-key")[0] == 200
    assert call(guard, "/healthz")[0] == 200


def test_a_missing_and_a_wrong_key_get_the_same_401() -> None:
    guard = ApiKeyMiddleware(ok_app, KEYS)
    missing, wrong = call(guard, "/recommend"), call(guard, "/recommend", "guess")
    assert missing == wrong and missing[0] == 401


def test_without_keys_only_loopback_is_served() -> None:
    guard = ApiKeyMiddleware(ok_app, {})
    assert call(guard, "/recommend")[0] == 200
    status, body = call(guard, "/recommend", server=("10.1.2.3", 3000))
    assert status == 403 and b"loopback only" in body


def test_keys_are_kept_hashed_and_checked(tmp_path: Path, monkeypatch) -> None:
    path = tmp_path / "keys.toml"
    key = new_key("shop-backend", "write", path)
    assert key not in path.read_text() and key_hash(key) in path.read_text()
    monkeypatch.setenv(FILE_ENV, str(path))
    monkeypatch.setenv(KEYS_ENV, f"ops:admin:{key_hash('other')}")
    assert load_keys() == {key_hash(key): "write", key_hash("other"): "admin"}
    monkeypatch.setenv(KEYS_ENV, "ops:root:abc")
    with pytest.raises(DataError, match="role must be one of"):
        load_keys()
    monkeypatch.setenv(KEYS_ENV, "ops:admin:not-a-hash")
    with pytest.raises(DataError, match="never stored in clear"):
        load_keys()


@pytest.mark.slow
def test_a_real_server_with_keys(bundle_dir: Path, tmp_path: Path, monkeypatch) -> None:
    path = tmp_path / "keys.toml"
    reader, writer = new_key("site", "read", path), new_key("backend", "write", path)
    admin = new_key("ops", "admin", path)
    monkeypatch.setenv(FILE_ENV, str(path))
    event = {"events": [{"user_id": "u-auth", "item_id": "i000001", "event": "view"}]}
    with served(bundle_dir, free_port(), tmp_path / "serve.log") as server, \
            httpx.Client(base_url=server.url, timeout=30) as http:
        def post(route: str, body: dict, key: str | None) -> int:
            headers = {"Authorization": f"Bearer {key}"} if key else {}
            return http.post(route, json=body, headers=headers).status_code

        assert http.get("/healthz").status_code == 200
        assert http.get("/metrics").status_code == 200
        assert post("/recommend", {"user_id": "u1"}, None) == 401
        assert post("/recommend", {"user_id": "u1"}, "tlr_wrong") == 401
        assert post("/recommend", {"user_id": "u1"}, reader) == 200
        assert post("/events", event, reader) == 403
        assert post("/events", event, writer) == 200
        assert post("/admin/forget", {"user_id": "u-auth"}, writer) == 403
        assert post("/admin/forget", {"user_id": "u-auth"}, admin) == 200
