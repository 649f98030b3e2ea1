"""benchmarks.http_client against a real socket server: both framings, keep-alive, the server
closing the connection, and transport errors as HTTPError."""

from __future__ import annotations

import asyncio
import socket

import pytest

from benchmarks.http_client import Connection, HTTPError


async def _serve(answers: list[bytes], seen: list[bytes]) -> tuple[asyncio.Server, int]:
    """A server that reads one request at a time, keeps it in ``seen`` and writes the next
    canned answer; it closes the connection after an answer that says so."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while answers:
            try:
                head = await reader.readuntil(b"\r\n\r\n")
            except asyncio.IncompleteReadError:
                break
            length = [int(line.split(b":")[1]) for line in head.split(b"\r\n")
                      if line.lower().startswith(b"content-length")][0]
            seen.append(head + await reader.readexactly(length))
            answer = answers.pop(0)
            writer.write(answer)
            await writer.drain()
            if b"Connection: close" in answer:
                break
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


def test_framings_keep_alive_and_reconnect() -> None:
    answers = [
        b"HTTP/1.1 200 OK\r\nContent-Length: 7\r\nX-A: b\r\n\r\n{\"a\":1}",
        b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: 1\r\nTransfer-Encoding: chunked\r\n"
        b"\r\n3\r\nbus\r\n2\r\ny!\r\n0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok",
        b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n",
    ]
    seen: list[bytes] = []

    async def go() -> list:
        server, port = await _serve(answers, seen)
        conn = Connection("127.0.0.1", port)
        message = conn.message("POST", "/recommend", b'{"k": 10}')
        out = [await conn.request(message) for _ in range(4)]
        await conn.close()
        server.close()
        return out

    first, shed, closing, missing = asyncio.run(go())
    assert (first.status, first.body, first.headers["x-a"]) == (200, b'{"a":1}', "b")
    assert (shed.status, shed.body, shed.headers["retry-after"]) == (503, b"busy!", "1")
    assert (closing.status, closing.text) == (200, "ok")
    assert (missing.status, missing.body) == (404, b"")   # on a new connection after the close
    assert all(s.startswith(b"POST /recommend HTTP/1.1\r\n") and s.endswith(b'{"k": 10}')
               for s in seen)
    assert b"Content-Type: application/json" in seen[0] and len(seen) == 4


def test_transport_errors_are_http_errors() -> None:
    with socket.socket() as s:   # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]

    async def refused() -> None:
        conn = Connection("127.0.0.1", port, timeout=2)
        await conn.request(conn.message("GET", "/"))

    with pytest.raises(HTTPError, match="Error"):
        asyncio.run(refused())

    async def garbage() -> None:
        server, live = await _serve([b"SMTP ready\r\n\r\n"], [])
        conn = Connection("127.0.0.1", live, timeout=2)
        try:
            await conn.request(conn.message("GET", "/"))
        finally:
            server.close()

    with pytest.raises(HTTPError, match="not an HTTP"):
        asyncio.run(garbage())
