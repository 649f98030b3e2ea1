"""API keys: who may read recommendations, post events, or administer the service.

Keys have a role: ``read`` (recommendations, segments, the model card), ``write`` (also
``POST /events``) or ``admin`` (also ``/admin/*``). They are kept hashed (sha256), never in clear:

* a TOML file, ``$TAILOR_API_KEYS_FILE`` or ``api_keys.toml`` at the project's root:

      [[key]]
      name = "shop-backend"
      role = "write"
      sha256 = "9f86d0..."

* and/or ``$TAILOR_API_KEYS``: ``name:role:sha256`` entries, comma-separated.

``tailor-api-key new --name shop-backend --role write`` (``make api-key``) makes a key,
prints it once and appends its hash to the file. A request sends its key as
``Authorization: Bearer <key>`` or ``X-API-Key: <key>``. With keys configured, every route but
health, readiness, metrics and the OpenAPI page needs one; a missing and a wrong key get the same
401, so an answer never tells whether a key exists; a key whose role is too low gets a 403.
Without keys the service answers on loopback only: a request that reaches it on another address
gets a 403 saying to configure keys (``make serve`` refuses a non-loopback ``HOST`` first).
"""

from __future__ import annotations

import argparse
import hashlib
import ipaddress
import os
import secrets
from pathlib import Path
from typing import Any

from features.infra import ROOT, DataError, add_traceback_arg, command, read_toml
from serving.api import RequestError
from serving.guard import reject

KEYS_ENV, FILE_ENV = "TAILOR_API_KEYS", "TAILOR_API_KEYS_FILE"
DEFAULT_FILE = ROOT / "api_keys.toml"
ROLES = {"read": 1, "write": 2, "admin": 3}
OPEN_PATHS = ("/healthz", "/readyz", "/livez", "/metrics", "/docs.json", "/")
OPEN_PREFIXES = ("/static_content/",)


def key_hash(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def keys_file() -> Path | None:
    named = os.environ.get(FILE_ENV, "").strip()
    if named:
        return Path(named).expanduser()
    return DEFAULT_FILE if DEFAULT_FILE.exists() else None


def load_keys() -> dict[str, str]:
    """sha256 -> role of every configured key; a malformed entry is a ``DataError``."""
    keys: dict[str, str] = {}
    path = keys_file()
    if path is not None:
        doc, _ = read_toml(path, "the API keys")
        for i, entry in enumerate(doc.get("key", [])):
            keys[_check(entry.get("sha256"), entry.get("role"), f"{path} [[key]] {i + 1}")] = \
                entry["role"]
    for i, entry in enumerate(filter(None, os.environ.get(KEYS_ENV, "").split(","))):
        name, _, rest = entry.strip().partition(":")
        role, _, digest = rest.partition(":")
        keys[_check(digest, role, f"${KEYS_ENV} entry {i + 1} ({name})")] = role
    return keys


def _check(digest: Any, role: Any, where: str) -> str:
    if role not in ROLES:
        raise DataError(f"{where}: role must be one of {', '.join(ROLES)}", value=role)
    if not isinstance(digest, str) or len(digest) != 64 or \
            any(c not in "0123456789abcdef" for c in digest):
        raise DataError(f"{where}: sha256 must be the 64 hex digits of the key's hash (keys are "
                        "never stored in clear)")
    return digest


def required_role(path: str) -> str | None:
    """The role a route needs (None: open to all)."""
    if path in OPEN_PATHS or path.startswith(OPEN_PREFIXES):
        return None
    if path.startswith("/admin/"):
        return "admin"
    if path == "/events":
        return "write"
    return "read"


def is_loopback(host: str | None) -> bool:
    if not host:
        return True   # a Unix socket or a test transport
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class ApiKeyMiddleware:
    """ASGI middleware in front of every route (``Tailor.add_asgi_middleware``)."""

    def __init__(self, app, keys: dict[str, str] | None = None) -> None:
        self.app = app
        self.keys = load_keys() if keys is None else keys

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        need = required_role(scope["path"])
        if not self.keys:
            server = scope.get("server") or (None, None)
            if is_loopback(server[0]):
                return await self.app(scope, receive, send)
            return await _deny(scope, send, 403, "this server has no API keys, so it answers "
                                                 "on loopback only; configure keys (make "
                                                 "api-key) to serve other hosts")
        if need is None:
            return await self.app(scope, receive, send)
        role = self.keys.get(key_hash(_key_of(scope))) if _key_of(scope) else None
        if role is None:
            return await _deny(scope, send, 401, "a valid API key is required "
                                                 "(Authorization: Bearer <key> or X-API-Key)")
        if ROLES[role] < ROLES[need]:
            return await _deny(scope, send, 403, f"this key's role ({role}) may not call "
                                                 f"{scope['path']} (it needs {need})")
        return await self.app(scope, receive, send)


def _key_of(scope) -> str:
    headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
    auth = headers.get("authorization", "")
    if auth.lower().startswith("bearer "):
        return auth[7:].strip()
    return headers.get("x-api-key", "").strip()


async def _deny(scope, send, status: int, message: str) -> None:
    headers = [(b"www-authenticate", b"Bearer")] if status == 401 else None
    await reject(scope, send, RequestError(status, "api_key", message, "unauthorized"), headers)


# --- making keys ------------------------------------------------------------------------------

def new_key(name: str, role: str, path: Path) -> str:
    """A new random key of ``role``: its hash appended to ``path``; the key returned once."""
    if role not in ROLES:
        raise DataError(f"role must be one of {', '.join(ROLES)}", value=role)
    if not name.strip() or '"' in name:
        raise DataError("a key needs a name (no quotes)", value=name)
    key = f"tlr_{secrets.token_urlsafe(32)}"
    entry = f'\n[[key]]\nname = "{name.strip()}"\nrole = "{role}"\nsha256 = "{key_hash(key)}"\n'
    with path.open("a", encoding="utf-8") as fh:
        fh.write(entry)
    os.chmod(path, 0o600)
    return key


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tailor-api-key",
                                     description="Make an API key for the service.")
    commands = parser.add_subparsers(dest="command", required=True)
    new = commands.add_parser("new", help="make a key, print it once, store its hash")
    new.add_argument("--name", required=True, help="who holds it (e.g. shop-backend)")
    new.add_argument("--role", required=True, choices=list(ROLES),
                     help="read: recommendations; write: also POST /events; admin: also /admin/*")
    new.add_argument("--file", help=f"keys file (default: ${FILE_ENV} or api_keys.toml)")
    for each in (parser, new):   # before or after the command
        add_traceback_arg(each)
    args = parser.parse_args(argv)
    path = Path(args.file) if args.file else (keys_file() or DEFAULT_FILE)
    key = new_key(args.name, args.role, path)
    print(f"{key}\n(role {args.role}; its hash is in {path}; this key is not shown again)")
    return 0


cli = command(main)  # `tailor-api-key` (pyproject.toml [project.scripts])

if __name__ == "__main__":
    cli()
