"""A minimal keep-alive HTTP/1.1 client for the load generator: one connection, one request at a
time, request heads built once per body.

httpx cost the load generator about 1 ms of CPU per request (its request and response models,
header normalization, the connection pool's bookkeeping), a sixth of what one /recommend costs
the server, and the generator shares the server's 2 cores: a benchmark of the server was partly
a benchmark of its client. Load tools of record (wrk, vegeta) write pre-built requests to a
socket and read answers back with little more than the framing; so does this. It speaks only
what the benchmarks need: POST and GET with a body of known length, answers framed by
``Content-Length`` or chunked, to loopback servers.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field

MAX_HEAD_BYTES = 64 * 1024


class HTTPError(Exception):
    """A transport failure: the connection refused, dropped or answered something that is not
    HTTP/1.1; or the request timed out."""


@dataclass
class Response:
    status: int
    headers: dict[str, str]   # lower-case names
    body: bytes

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", "replace")


@dataclass
class Connection:
    """One keep-alive connection to ``host:port``, opened on first use and again after the
    server closed it."""

    host: str
    port: int
    timeout: float = 30.0
    _reader: asyncio.StreamReader | None = field(default=None, repr=False)
    _writer: asyncio.StreamWriter | None = field(default=None, repr=False)

    def message(self, method: str, path: str, body: bytes = b"",
                content_type: str = "application/json") -> bytes:
        """A whole request to this connection's server: build it once, send it many times."""
        lines = [f"{method} {path} HTTP/1.1", f"Host: {self.host}:{self.port}",
                 f"Content-Length: {len(body)}"]
        if body:
            lines.append(f"Content-Type: {content_type}")
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body

    async def request(self, message: bytes) -> Response:
        """Send ``message`` (from ``message()``) and read the whole answer."""
        try:
            async with asyncio.timeout(self.timeout):
                if self._writer is None:
                    self._reader, self._writer = await asyncio.open_connection(
                        self.host, self.port)
                self._writer.write(message)
                return await self._read()
        except (OSError, EOFError, asyncio.IncompleteReadError, asyncio.LimitOverrunError,
                TimeoutError, ValueError) as exc:
            await self.close()
            raise HTTPError(f"{type(exc).__name__}: {exc}") from exc

    async def _read(self) -> Response:
        raw = await self._reader.readuntil(b"\r\n\r\n")
        if len(raw) > MAX_HEAD_BYTES:
            raise ValueError("response head too large")
        status_line, *lines = raw[:-4].decode("latin-1").split("\r\n")
        version, status, *_ = status_line.split(" ", 2)
        if not version.startswith("HTTP/1."):
            raise ValueError(f"not an HTTP/1.x answer: {status_line[:80]!r}")
        headers = {}
        for line in lines:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        if headers.get("transfer-encoding", "").lower() == "chunked":
            body = await self._read_chunked()
        else:
            body = await self._reader.readexactly(int(headers.get("content-length", "0")))
        if headers.get("connection", "").lower() == "close":
            await self.close()
        return Response(int(status), headers, body)

    async def _read_chunked(self) -> bytes:
        chunks = []
        while True:
            size = int((await self._reader.readuntil(b"\r\n")).split(b";")[0], 16)
            if size == 0:
                await self._reader.readuntil(b"\r\n")   # no trailers from these servers
                return b"".join(chunks)
            chunks.append(await self._reader.readexactly(size))
            await self._reader.readexactly(2)

    async def close(self) -> None:
        writer, self._reader, self._writer = self._writer, None, None
        if writer is not None:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
