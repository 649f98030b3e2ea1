"""The service's front door (serving/guard.py): Host check, in-flight bound, content type, body
size and one-line logs of refused requests; over a stub ASGI app, then a real server."""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from pydantic import ValidationError

from features.event_store import URL_ENV
from features.infra import DataError
from serving.api import EventsRequest, RecommendRequest
from serving.guard import (
    DEFAULT_MAX_BODY_BYTES,
    HOSTS_ENV,
    INFLIGHT_ENV,
    SERVE_HOST_ENV,
    QuietRejections,
    RequestGuard,
    allowed_hosts,
    env_int,
    json_content_type,
)
from serving.process import Server, free_port, served

# --- over a stub app ---------------------------------------------------------------------------


class Stub:
    """An ASGI app that records the body it read; ``hold`` keeps POSTs in flight."""

    def __init__(self) -> None:
        self.bodies: list[bytes] = []
        self.hold: asyncio.Event | None = None

    async def __call__(self, scope, receive, send) -> None:
        body, more = b"", True
        while more:
            message = await receive()
            body += message.get("body", b"")
            more = message.get("more_body", False)
        self.bodies.append(body)
        if self.hold is not None and scope["method"] == "POST":
            await self.hold.wait()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})


async def call(guard: RequestGuard, path: str = "/recommend", method: str = "POST",
               headers: dict[str, str] | None = None, chunks: tuple[bytes, ...] = (b"{}",)
               ) -> tuple[int, dict[str, str], bytes]:
    heads = {"host": "127.0.0.1:3000", "content-type": "application/json", **(headers or {})}
    scope = {"type": "http", "method": method, "path": path,
             "headers": [(k.encode(), v.encode()) for k, v in heads.items() if v is not None]}
    pending = [{"type": "http.request", "body": c, "more_body": i < len(chunks) - 1}
               for i, c in enumerate(chunks)]
    sent: list[dict] = []

    async def receive() -> dict:
        return pending.pop(0) if pending else {"type": "http.disconnect"}

    async def send(message: dict) -> None:
        sent.append(message)

    await guard(scope, receive, send)
    out = {k.decode(): v.decode() for k, v in sent[0].get("headers", [])}
    return sent[0]["status"], out, sent[1]["body"]


def run(guard: RequestGuard, **kwargs) -> tuple[int, dict[str, str], bytes]:
    return asyncio.run(call(guard, **kwargs))


def field_of(body: bytes) -> str:
    detail = json.loads(body)["detail"]
    assert json.loads(body)["error"] and len(detail) == 1
    return detail[0]["loc"][0]


def test_hosts_ignore_ports_and_probes_answer_any_host(monkeypatch) -> None:
    monkeypatch.delenv(HOSTS_ENV, raising=False)
    monkeypatch.setenv(SERVE_HOST_ENV, "10.0.0.7")
    assert allowed_hosts() == {"localhost", "127.0.0.1", "[::1]", "::1", "10.0.0.7"}
    monkeypatch.setenv(HOSTS_ENV, "shop.example.com:443, API.example.com")
    assert allowed_hosts() == {"shop.example.com", "api.example.com", "10.0.0.7"}
    guard = RequestGuard(Stub(), hosts=["localhost", "[::1]"])
    assert run(guard, headers={"host": "localhost:3000"})[0] == 200
    assert run(guard, headers={"host": "[::1]:8080"})[0] == 200
    status, _, body = run(guard, headers={"host": "evil.example"})
    assert status == 400 and field_of(body) == "host"
    assert run(guard, headers={"host": "localhost.evil.example"})[0] == 400
    for probe in ("/healthz", "/readyz", "/livez", "/metrics"):
        assert run(guard, path=probe, method="GET", headers={"host": "10.1.2.3:3000"})[0] == 200
    assert run(RequestGuard(Stub(), hosts=["*"]), headers={"host": "any.example"})[0] == 200


def test_limits_come_from_the_environment(monkeypatch) -> None:
    monkeypatch.setenv(INFLIGHT_ENV, "7")
    assert RequestGuard(Stub(), hosts=["localhost"]).max_inflight == 7
    for bad in ("0", "-1", "many"):
        monkeypatch.setenv(INFLIGHT_ENV, bad)
        with pytest.raises(DataError, match=INFLIGHT_ENV):
            env_int(INFLIGHT_ENV, 4)


def test_past_the_limit_a_request_gets_503_at_once_and_probes_still_answer() -> None:
    stub = Stub()
    guard = RequestGuard(stub, max_inflight=2, hosts=["127.0.0.1"])

    async def scenario() -> list:
        stub.hold = asyncio.Event()
        held = [asyncio.create_task(call(guard)) for _ in range(2)]
        await asyncio.sleep(0.01)
        assert guard.inflight == 2
        refused = await call(guard)
        probe = await asyncio.wait_for(call(guard, path="/readyz", method="GET"), 1)
        stub.hold.set()
        return [refused, probe, *(await asyncio.gather(*held))]

    refused, probe, *held = asyncio.run(scenario())
    status, headers, body = refused
    assert status == 503 and headers["retry-after"] == "1"
    assert json.loads(body)["detail"][0] == {
        "loc": ["server"], "msg": json.loads(body)["error"], "type": "overloaded"}
    assert "overloaded" in json.loads(body)["error"]
    assert probe[0] == 200 and [h[0] for h in held] == [200, 200]
    assert guard.inflight == 0 and run(guard)[0] == 200   # the slots come back
    # a refused client is sent away from this busy worker: its next connection may land on
    # another one
    assert headers["connection"] == "close"


def test_answers_of_a_full_worker_close_the_connection() -> None:
    stub = Stub()
    guard = RequestGuard(stub, max_inflight=3, hosts=["127.0.0.1"])

    async def with_in_flight(n: int) -> dict[str, str]:
        """The headers of an answer given while ``n`` - 1 other requests are in flight."""
        stub.hold = asyncio.Event()
        held = [asyncio.create_task(call(guard)) for _ in range(n - 1)]
        await asyncio.sleep(0.01)
        stub.hold = None
        answer = await call(guard)
        for task in held:
            task.cancel()
        await asyncio.gather(*held, return_exceptions=True)
        return answer[1]

    assert "connection" not in run(guard)[1]   # alone: the connection stays open
    assert "connection" not in asyncio.run(with_in_flight(2))
    assert asyncio.run(with_in_flight(3))["connection"] == "close"   # 3 of 3 slots taken


@pytest.mark.parametrize(("content_type", "ok"), [
    ("application/json", True), ("application/json; charset=utf-8", True),
    ("Application/JSON;charset=\"UTF-8\"", True), (None, True),
    ("application/json; charset=latin-1", False), ("application/x-www-form-urlencoded", False),
    ("multipart/form-data; boundary=x", False), ("text/plain", False), ("", False),
    ("application/vnd.bentoml+pickle", False)])
def test_post_bodies_must_be_json(content_type: str | None, ok: bool) -> None:
    assert json_content_type(content_type) is ok
    status, _, body = run(RequestGuard(Stub(), hosts=["127.0.0.1"]),
                          headers={"content-type": content_type})
    assert status == (200 if ok else 415)
    if not ok:
        assert field_of(body) == "content-type"


def test_bodies_over_the_limit_get_413_before_or_while_read() -> None:
    stub = Stub()
    guard = RequestGuard(stub, max_body=100, hosts=["127.0.0.1"])
    status, _, body = run(guard, headers={"content-length": "101"}, chunks=(b"x" * 101,))
    assert status == 413 and field_of(body) == "body" and stub.bodies == []
    # chunked (no Content-Length): counted as it streams, refused once over
    assert run(guard, chunks=(b"x" * 60, b"x" * 60))[0] == 413 and stub.bodies == []
    # under the limit it reaches the app whole
    assert run(guard, chunks=(b'{"user_id":', b' "u1"}'))[0] == 200
    assert stub.bodies == [b'{"user_id": "u1"}']
    assert run(guard, headers={"content-length": "12"}, chunks=(b'{"user_id":1}',))[0] == 200
    assert run(guard, headers={"content-length": "ten"})[0] == 400


def test_the_largest_legitimate_body_fits() -> None:
    """1000 events (the /events cap) with 64-character ids, UUIDs and full timestamps."""
    event = {"user_id": "u" * 64, "item_id": "i" * 64, "event": "addtocart",
             "timestamp": "2026-07-01T10:00:00.123456+00:00",
             "event_id": "3f2b9c1e-8a4d-4c1b-9f0e-1d2c3b4a5f60", "request_id": "r" * 64}
    body = json.dumps({"events": [event] * 1000}).encode()
    assert len(EventsRequest.model_validate_json(body).events) == 1000
    assert len(body) < DEFAULT_MAX_BODY_BYTES / 2


def test_bentoml_validation_errors_become_one_warning_line(caplog) -> None:
    secret = "s3cr3t-" * 50
    try:
        RecommendRequest.model_validate({"user_id": secret})
    except ValidationError as exc:
        record = logging.LogRecord("bentoml._internal.server.http_app", logging.ERROR, __file__,
                                   1, "Exception on %s [%s]", ("/recommend", "POST"),
                                   (type(exc), exc, exc.__traceback__))
    other = logging.LogRecord("x", logging.ERROR, __file__, 1, "boom", (),
                              (RuntimeError, RuntimeError("boom"), None))
    with caplog.at_level(logging.WARNING, logger="tailor.http"):
        assert QuietRejections().filter(record) is False
        assert QuietRejections().filter(other) is True   # real errors keep their traceback
    assert [r.getMessage() for r in caplog.records] == [
        "rejected POST /recommend: 400 (user_id)"]
    assert caplog.records[0].levelno == logging.WARNING and secret not in caplog.text


# --- a real server ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def server(bundle_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A real server whose workers each admit one request at a time."""
    tmp = tmp_path_factory.mktemp("guard")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(INFLIGHT_ENV, "1")
        mp.setenv(URL_ENV, f"sqlite:///{tmp / 'events.db'}")   # its own events
        with served(bundle_dir, free_port(), tmp / "server.log") as running:
            yield running


@pytest.fixture(scope="module")
def http(server: Server) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=30) as client:
        yield client


@pytest.mark.slow
def test_overload_gets_fast_503s_while_readyz_answers(server: Server, engine) -> None:
    body = {"user_id": sorted(engine.known_users)[0], "k": 100, "diversity": 0.3}
    probes: list[tuple[int, float]] = []
    done = threading.Event()

    def poll_readyz() -> None:
        with httpx.Client(base_url=server.url, timeout=10) as client:
            while not done.is_set():
                started = time.perf_counter()
                probes.append((client.get("/readyz").status_code, time.perf_counter() - started))
                time.sleep(0.02)

    async def burst() -> list[httpx.Response]:
        limits = httpx.Limits(max_connections=64, max_keepalive_connections=0)
        async with httpx.AsyncClient(base_url=server.url, timeout=30, limits=limits) as client:
            return await asyncio.gather(*(client.post("/recommend", json=body)
                                          for _ in range(64)))

    poller = threading.Thread(target=poll_readyz)
    poller.start()
    try:
        answers: list[httpx.Response] = []
        for _ in range(5):   # one burst is enough on any machine seen; five to be sure
            answers += asyncio.run(burst())
            if any(a.status_code == 503 for a in answers):
                break
        time.sleep(0.2)
    finally:
        done.set()
        poller.join()
    statuses = {a.status_code for a in answers}
    assert statuses <= {200, 503}, statuses
    assert 200 in statuses and 503 in statuses
    for refused in (a for a in answers if a.status_code == 503):
        assert refused.headers["retry-after"] == "1"
        detail = refused.json()["detail"]
        assert detail[0]["loc"] == ["server"] and detail[0]["type"] == "overloaded"
        assert "overloaded" in detail[0]["msg"]
    assert len(probes) >= 2 and all(status == 200 for status, _ in probes), probes
    assert max(seconds for _, seconds in probes) < 2.0


@pytest.mark.slow
def test_a_real_server_refuses_big_bodies_and_non_json(http: httpx.Client) -> None:
    big = json.dumps({"user_id": "u1", "exclude_items": ["x" * 200] * 10_000}).encode()
    assert len(big) > DEFAULT_MAX_BODY_BYTES
    answer = http.post("/recommend", content=big, headers={"content-type": "application/json"})
    assert answer.status_code == 413 and answer.json()["detail"][0]["loc"] == ["body"]

    def chunked():   # no Content-Length: httpx sends a generator chunked
        for _ in range(64):
            yield b" " * 32_768
    answer = http.post("/recommend", content=chunked(),
                       headers={"content-type": "application/json"})
    assert answer.status_code == 413 and answer.json()["detail"][0]["loc"] == ["body"]
    small = http.post("/recommend", content=iter([b'{"user_id": ', b'"u1", "k": 3}']),
                      headers={"content-type": "application/json"})
    assert small.status_code == 200 and len(small.json()["items"]) == 3
    events = [{"user_id": f"u{i:063d}", "item_id": "i" * 64, "event": "view",
               "event_id": f"guard-{i:058d}"} for i in range(1000)]
    assert http.post("/events", json={"events": events}).json()["stored"] == 1000

    for refused in (http.post("/recommend", data={"user_id": "u1"}),
                    http.post("/recommend", files={"user_id": b"u1"}),
                    http.post("/recommend", content=b'{"user_id": "u1"}',
                              headers={"content-type": "text/plain"})):
        assert refused.status_code == 415, refused.text
        assert refused.json()["detail"][0]["loc"] == ["content-type"]
    for accepted in ({"content-type": "application/json; charset=utf-8"}, {}):
        answer = http.post("/recommend", content=b'{"user_id": "u1", "k": 2}',
                           headers=accepted)   # no type at all: read as JSON
        assert answer.status_code == 200 and len(answer.json()["items"]) == 2
    assert http.post("/model").status_code == 200   # no body, no type
    assert http.get("/docs.json").status_code == 200 and http.get("/healthz").status_code == 200


@pytest.mark.slow
@pytest.mark.parametrize(("body", "field"), [
    ({"user_id": "u" * 257}, "user_id"),
    ({"user_id": "u1", "exclude_items": ["i"] * 10_001}, "exclude_items"),
    ({"user_id": "u1", "same": ["brand"] * 17}, "same"),
    ({"user_id": "u1", "recent_events": [{"item_id": "i" * 300, "event": "view"}]},
     "recent_events")])
def test_over_long_fields_get_a_400_naming_them(http: httpx.Client, body: dict,
                                               field: str) -> None:
    answer = http.post("/recommend", json=body)
    assert answer.status_code == 400 and answer.json()["detail"][0]["loc"][0] == field


@pytest.mark.slow
def test_a_foreign_host_is_refused_but_probes_answer(http: httpx.Client) -> None:
    evil = {"host": "evil.example"}
    answer = http.post("/recommend", json={"user_id": "u1"}, headers=evil)
    assert answer.status_code == 400 and answer.json()["detail"][0]["loc"] == ["host"]
    assert http.post("/model", headers={"host": "evil.example:3000"}).status_code == 400
    assert http.get("/readyz", headers=evil).status_code == 200
    assert http.get("/metrics", headers=evil).status_code == 200
    assert http.post("/recommend", json={"user_id": "u1"},
                     headers={"host": "localhost"}).status_code == 200


@pytest.mark.slow
def test_refused_requests_log_one_line_without_the_body(server: Server,
                                                        http: httpx.Client) -> None:
    marker = "zqxj" * 65   # over user_id's 256 characters
    bad_json = http.post("/recommend", content=b'{"user_id": "' + marker.encode() + b'", "k": ',
                         headers={"content-type": "application/json"})
    too_long = http.post("/recommend", json={"user_id": marker})
    big = http.post("/recommend", json={"user_id": "u1", "exclude_items": [marker] * 8000})
    assert (bad_json.status_code, too_long.status_code, big.status_code) == (400, 400, 413)
    expected = ["rejected POST /recommend: 400 (body)", "rejected POST /recommend: 400 (user_id)",
                "rejected POST /recommend: 413 (body)"]
    deadline = time.monotonic() + 10   # the workers write their log lines asynchronously
    while time.monotonic() < deadline:
        text = server.log.read_text(errors="replace")
        if all(line in text for line in expected):
            break
        time.sleep(0.2)
    assert all(line in text for line in expected), text[-3000:]
    assert "Traceback" not in text and marker not in text
    rejected = [line for line in text.splitlines() if "rejected POST" in line]
    assert rejected and all("[WARNING]" in line for line in rejected)
    assert "[ERROR]" not in text
