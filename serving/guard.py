"""The service's front door at shop traffic: every request passes ``RequestGuard`` (an ASGI
middleware, ``Tailor.add_asgi_middleware``) before the API key check and BentoML's handlers.

In order, a request is refused with the project's error shape (``RequestError.body()``: the
``detail`` names the field) when
* its ``Host`` is not one this server answers to (400, ``host``): a DNS-rebinding page in a
  shopper's browser reaches a loopback server under its own name;
* the worker already has ``$TAILOR_MAX_INFLIGHT`` requests in flight (503 with ``Retry-After``):
  the APIs compute inline on the worker's event loop, so without a bound every request waits
  behind all the earlier ones and all of them miss their deadline; a fast 503 lets the load
  balancer or the client go to another replica at once;
* a POST's body is not JSON (415, ``content-type``): BentoML would parse a form instead;
* its body is larger than ``$TAILOR_MAX_BODY_BYTES`` (413, ``body``), by ``Content-Length``
  before it is read, or counted while a chunked body streams in.

A full worker (its 503s, and its answers given while ``max_inflight`` requests are in flight)
closes the connection after the answer (``Connection: close``): the client's next request opens
a new one, and the worker that accepts it is one waiting for work, not this busy one. Workers
share one listening socket and keep-alive connections stay where they were accepted; a worker
that happened to accept a burst of them (8 clients' connections on one of 2 workers, in `make
bench-serve`) would otherwise keep refusing them while the other core idled. Only a full worker
does it: closing whenever requests queue cost more in reconnects than it balanced (at 300
req/s, p50 7 -> 47 ms).

Probes (``/healthz``, ``/readyz``, ``/livez``) and ``/metrics`` are never counted nor refused,
whatever their ``Host``: Kubernetes and Prometheus call them with the pod's IP as ``Host``, and a
busy worker must still say it is alive.

Every refused request (these, the API key check's, and BentoML's 400s for invalid fields) logs
one WARNING line: method, path, status and field, never the body (it may be megabytes).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from typing import Any

from features.infra import DataError
from serving.api import RequestError

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

INFLIGHT_ENV, BODY_ENV = "TAILOR_MAX_INFLIGHT", "TAILOR_MAX_BODY_BYTES"
HOSTS_ENV, SERVE_HOST_ENV = "TAILOR_ALLOWED_HOSTS", "TAILOR_SERVE_HOST"
# The latency target is p99 <= 25 ms and one /recommend costs 5-8 ms of one core: a request
# admitted behind 3 others still answers in about 25 ms, a 5th would wait past the target, so
# it is better refused at once (another replica, or a retry a second later, does better).
DEFAULT_MAX_INFLIGHT = 4
CLOSE = (b"connection", b"close")
# The largest legitimate body is /events with 1000 events: with 64-character ids and full
# timestamps it is about 400 KB (tests/serving/test_guard.py checks it fits); only a batch whose
# every id is near the 256-character cap passes 1 MiB (such a client sends smaller batches).
DEFAULT_MAX_BODY_BYTES = 1 << 20
LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "[::1]", "::1")
PROBES = frozenset({"/healthz", "/readyz", "/livez", "/metrics"})
RETRY_AFTER_S = 1

log = logging.getLogger("tailor.http")


def env_int(name: str, default: int) -> int:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if value < 1:
        raise DataError(f"${name} must be a positive whole number", value=raw)
    return value


def allowed_hosts() -> frozenset[str]:
    """The ``Host`` names this server answers to: ``$TAILOR_ALLOWED_HOSTS`` (comma-separated;
    ``*``: any, for a proxy that checks it) or the loopback names, plus the address ``make
    serve`` binds to (``$TAILOR_SERVE_HOST``)."""
    configured = [h for h in os.environ.get(HOSTS_ENV, "").split(",") if h.strip()]
    names = {_host_name(h) for h in configured or LOOPBACK_HOSTS}
    if os.environ.get(SERVE_HOST_ENV, "").strip():
        names.add(_host_name(os.environ[SERVE_HOST_ENV]))
    return frozenset(names)


def _host_name(host: str) -> str:
    """``host`` without its port, lower case: ``[::1]:3000`` -> ``[::1]``, ``a.b:80`` -> ``a.b``;
    a bare IPv6 address (``::1``, more than one colon) has no port to strip."""
    host = host.strip().lower()
    if host.startswith("["):
        return host[:host.find("]") + 1] if "]" in host else host
    if host.count(":") == 1:
        host = host.partition(":")[0]
    return host.rstrip(".")


def json_content_type(value: str | None) -> bool:
    """``application/json``, with no charset or UTF-8 (JSON's only encoding, RFC 8259)."""
    if value is None:
        return True   # a JSON body without a type: BentoML reads it as JSON, and so do we
    media, *params = value.split(";")
    if media.strip().lower() != "application/json":
        return False
    for param in params:
        key, _, val = param.partition("=")
        if key.strip().lower() == "charset" and \
                val.strip().strip('"').lower() not in ("utf-8", "utf8"):
            return False
    return True


class RequestGuard:
    """One instance per worker process (BentoML builds the app once per worker), so the
    in-flight count is the worker's own; one event loop, so a plain counter is safe."""

    def __init__(self, app: ASGIApp, *, max_inflight: int | None = None,
                 max_body: int | None = None, hosts: Iterable[str] | None = None) -> None:
        self.app = app
        self.max_inflight = max_inflight or env_int(INFLIGHT_ENV, DEFAULT_MAX_INFLIGHT)
        self.max_body = max_body or env_int(BODY_ENV, DEFAULT_MAX_BODY_BYTES)
        self.hosts = frozenset(_host_name(h) for h in hosts) if hosts is not None else \
            allowed_hosts()
        self.inflight = 0
        quiet_rejections()   # here: after BentoML configured the worker's logging

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in PROBES:
            return await self.app(scope, receive, send)
        headers = _headers(scope)
        host = headers.get("host")
        # No Host at all (HTTP/1.0, a test transport) is no browser's, so no rebinding.
        if host is not None and "*" not in self.hosts and _host_name(host) not in self.hosts:
            return await reject(scope, send, RequestError(
                400, "host", f"this server does not answer to the host {host[:100]!r}; list "
                             f"it in ${HOSTS_ENV}", "host_not_allowed"))
        if self.inflight >= self.max_inflight:
            return await reject(scope, send, RequestError(
                503, "server", f"the server is overloaded ({self.inflight} requests in flight "
                               f"on this worker); retry after {RETRY_AFTER_S} s", "overloaded"),
                headers=[(b"retry-after", str(RETRY_AFTER_S).encode()), CLOSE])
        self.inflight += 1
        try:
            # Requests that arrived while the worker computed start as tasks together, and an
            # admitted request would compute to its answer without ever yielding, so each would
            # see the count back at 0. One yield first lets all of them count themselves (and
            # those past the limit be refused) before any of them computes.
            await asyncio.sleep(0)
            await self._admitted(scope, receive, self._rebalancing(send), headers)
        finally:
            self.inflight -= 1

    def _rebalancing(self, send: Send) -> Send:
        """``send`` that closes the connection after an answer given while the worker is full."""

        async def rebalancing(message: Message) -> None:
            if message["type"] == "http.response.start" and self.inflight >= self.max_inflight:
                message = {**message, "headers": [*message.get("headers", ()), CLOSE]}
            await send(message)

        return rebalancing

    async def _admitted(self, scope: Scope, receive: Receive, send: Send,
                        headers: dict[str, str]) -> None:
        if scope["method"] == "POST" and not json_content_type(headers.get("content-type")):
            return await reject(scope, send, RequestError(
                415, "content-type", "the body must be JSON (Content-Type: application/json), "
                                     f"not {headers['content-type'][:100]!r}",
                "unsupported_media_type"))
        length = headers.get("content-length")
        if length is not None:
            if not length.isdigit():
                return await reject(scope, send, RequestError(
                    400, "content-length", "Content-Length must be a number", "invalid"))
            if int(length) > self.max_body:
                return await reject(scope, send, self._too_large())
            return await self.app(scope, receive, send)
        if scope["method"] in ("GET", "HEAD", "OPTIONS"):
            return await self.app(scope, receive, send)
        # A chunked body has no length up front: read it here, counting, and hand it on whole
        # (BentoML reads the whole body before parsing anyway).
        try:
            body = await _read_capped(receive, self.max_body)
        except _ClientGone:
            return None   # nobody to answer
        if body is None:
            return await reject(scope, send, self._too_large())
        await self.app(scope, _replay(body, receive), send)

    def _too_large(self) -> RequestError:
        return RequestError(413, "body", f"the body is larger than {self.max_body:,} bytes "
                                         f"(${BODY_ENV})", "too_large")


def _headers(scope: Scope) -> dict[str, str]:
    return {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}


class _ClientGone(Exception):
    """The client disconnected before its body was complete."""


async def _read_capped(receive: Receive, limit: int) -> bytes | None:
    """The whole body, or None once it passes ``limit`` bytes."""
    chunks, size = [], 0
    while True:
        message = await receive()
        if message["type"] != "http.request":
            raise _ClientGone
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


def _replay(body: bytes, receive: Receive) -> Receive:
    """``receive`` that gives ``body`` first, then what the client sends (a disconnect)."""
    pending = [{"type": "http.request", "body": body, "more_body": False}]

    async def replay() -> Message:
        return pending.pop() if pending else await receive()

    return replay


async def reject(scope: Scope, send: Send, err: RequestError,
                 headers: list[tuple[bytes, bytes]] | None = None) -> None:
    """Answer ``err`` (the body unread) and log it in one line."""
    log_rejected(scope.get("method", "?"), scope.get("path", "?"), err.status, err.field)
    body = json.dumps(err.body()).encode()
    await send({"type": "http.response.start", "status": err.status, "headers": [
        (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
        *(headers or [])]})
    await send({"type": "http.response.body", "body": body})


def log_rejected(method: str, path: str, status: int, field: str) -> None:
    log.warning("rejected %s %s: %d (%s)", method, path[:200], status, field)


# --- BentoML's own 400s -------------------------------------------------------------------------

# BentoML's api_endpoint_wrapper (_bentoml_impl/server/app.py) logs every refused request body
# (pydantic's ValidationError) at ERROR with a traceback, whose last line echoes the input. The
# filter turns that record into our one WARNING line; real errors pass untouched.
BENTOML_LOGGER = "bentoml._internal.server.http_app"


class QuietRejections(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        rejected = _rejection(exc)
        if rejected is None:
            return True
        path, method = record.args if isinstance(record.args, tuple) and \
            len(record.args) == 2 else ("?", "?")
        log_rejected(str(method), str(path), *rejected)
        return False


def _rejection(exc: BaseException | None) -> tuple[int, str] | None:
    """(status, field) of an exception BentoML answers with a 4xx, else None."""
    from bentoml.exceptions import BentoMLException
    from pydantic import ValidationError

    if isinstance(exc, ValidationError):
        fields = dict.fromkeys(".".join(map(str, e["loc"])) or "body" for e in exc.errors())
        return 400, ", ".join(list(fields)[:3])
    if isinstance(exc, BentoMLException) and 400 <= int(exc.error_code) < 500:
        return int(exc.error_code), "request"
    return None


def quiet_rejections() -> None:
    logger = logging.getLogger(BENTOML_LOGGER)
    if not any(isinstance(f, QuietRejections) for f in logger.filters):
        logger.addFilter(QuietRejections())
