"""Just enough HTTP/1.1 over asyncio streams for a proxy: requests in, responses out, and a small
keep-alive client for the engines. Bodies stream through in the chunks they arrive in, so an SSE
token stream reaches the client as the engine writes it.

Why not a framework: the router must add well under a millisecond per request, start instantly
in a bare container, and depend on nothing beyond the standard library.
"""

from __future__ import annotations

import asyncio
import dataclasses
import http
import time
import urllib.parse
from collections.abc import AsyncIterator, Iterable

MAX_HEAD_BYTES = 64 * 1024
MAX_BODY_BYTES = 64 * 1024 * 1024
READ_SIZE = 64 * 1024
# Per-connection headers a proxy must not forward (RFC 9110 §7.6.1), plus the framing it redoes.
# `expect` is answered here (100 Continue) and must not reach the engine, which would answer it again.
HOP_BY_HOP = frozenset({"connection", "keep-alive", "proxy-connection", "te", "trailer", "transfer-encoding",
                        "upgrade", "proxy-authenticate", "proxy-authorization", "content-length", "host", "expect"})


class ProtocolError(Exception):
    """The peer spoke broken HTTP; `status` is what to answer a client with."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


@dataclasses.dataclass
class Request:
    method: str
    target: str
    headers: dict[str, str]  # lower-case names
    body: bytes
    keep_alive: bool

    @property
    def path(self) -> str:
        return self.target.split("?", 1)[0]

    @property
    def query(self) -> dict[str, str]:
        return dict(urllib.parse.parse_qsl(self.target.partition("?")[2]))


@dataclasses.dataclass
class ResponseHead:
    status: int
    headers: list[tuple[str, str]]
    length: int | None  # Content-Length; None with chunked or close-delimited bodies
    chunked: bool
    keep_alive: bool

    def header(self, name: str) -> str | None:
        return next((v for k, v in self.headers if k.lower() == name), None)


def _parse_headers(lines: Iterable[bytes]) -> list[tuple[str, str]]:
    headers = []
    for line in lines:
        name, sep, value = line.decode("latin-1").partition(":")
        if not sep or not name or name != name.strip():
            raise ProtocolError(400, f"malformed header line {line[:80]!r}")
        headers.append((name, value.strip()))
    return headers


def _header_dict(pairs: list[tuple[str, str]]) -> dict[str, str]:
    out: dict[str, str] = {}
    for name, value in pairs:
        key = name.lower()
        out[key] = f"{out[key]}, {value}" if key in out else value
    return out


async def _read_head(reader: asyncio.StreamReader) -> list[bytes] | None:
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError as exc:
        if not exc.partial.strip():
            return None  # the peer closed between messages: the normal end of keep-alive
        raise ProtocolError(400, "the connection closed in the middle of the headers") from None
    except asyncio.LimitOverrunError:
        raise ProtocolError(431, "request headers are larger than 64 KiB") from None
    return head[:-4].split(b"\r\n")


async def read_request(reader: asyncio.StreamReader, writer: asyncio.StreamWriter | None = None) -> Request | None:
    """The next request on a connection, or None when the client closed it. Clients that wait for
    `100 Continue` before sending a body (curl does above 1 KiB) get it on `writer`."""
    lines = await _read_head(reader)
    if lines is None:
        return None
    parts = lines[0].decode("latin-1").split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
        raise ProtocolError(400, f"malformed request line {lines[0][:80]!r}")
    method, target, version = parts
    headers = _header_dict(_parse_headers(lines[1:]))
    connection = headers.get("connection", "").lower()
    keep_alive = "close" not in connection if version == "HTTP/1.1" else "keep-alive" in connection
    if writer is not None and headers.get("expect", "").lower() == "100-continue":
        writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
    body = await _read_body(reader, headers)
    return Request(method, target, headers, body, keep_alive)


async def _read_body(reader: asyncio.StreamReader, headers: dict[str, str]) -> bytes:
    if "chunked" in headers.get("transfer-encoding", "").lower():
        pieces = []
        async for piece in _chunks(reader):
            pieces.append(piece)
            if sum(map(len, pieces)) > MAX_BODY_BYTES:
                raise ProtocolError(413, "the request body is larger than 64 MiB")
        return b"".join(pieces)
    try:
        length = int(headers.get("content-length") or 0)
    except ValueError:
        raise ProtocolError(400, "Content-Length is not a number") from None
    if length > MAX_BODY_BYTES or length < 0:
        raise ProtocolError(413, "the request body is larger than 64 MiB")
    return await reader.readexactly(length) if length else b""


async def _chunks(reader: asyncio.StreamReader) -> AsyncIterator[bytes]:
    while True:
        size_line = await reader.readline()
        try:
            size = int(size_line.split(b";", 1)[0].strip() or b"x", 16)
        except ValueError:
            raise ProtocolError(502, f"malformed chunk size {size_line[:40]!r}") from None
        if size == 0:
            while (await reader.readline()) not in (b"\r\n", b"\n", b""):
                pass  # trailers: dropped
            return
        data = await reader.readexactly(size)
        await reader.readexactly(2)
        yield data


def response_head(status: int, headers: Iterable[tuple[str, str]]) -> bytes:
    try:
        phrase = http.HTTPStatus(status).phrase
    except ValueError:
        phrase = "Unknown"
    lines = [f"HTTP/1.1 {status} {phrase}"] + [f"{k}: {v}" for k, v in headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


LAST_CHUNK = b"0\r\n\r\n"


# -- the client side: talking to engines ----------------------------------------------------------


@dataclasses.dataclass(eq=False)
class Connection:
    address: tuple[str, int]
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    reused: bool = False
    idle_since: float = 0.0

    def close(self) -> None:
        self.writer.close()


# vLLM's uvicorn closes a keep-alive connection after 5 s idle (VLLM_HTTP_TIMEOUT_KEEP_ALIVE, measured:
# docs/vllm-behaviour.md). A request sent on one just as the engine closes it dies with no answer, so
# connections idle for nearly that long are dropped instead of reused.
MAX_IDLE_REUSE_S = 4.0


class Pool:
    """Idle keep-alive connections per engine address."""

    def __init__(self, connect_timeout: float = 2.0, max_idle: int = 64,
                 max_idle_reuse_s: float = MAX_IDLE_REUSE_S):
        self.connect_timeout = connect_timeout
        self.max_idle = max_idle
        self.max_idle_reuse_s = max_idle_reuse_s
        self._idle: dict[tuple[str, int], list[Connection]] = {}

    async def acquire(self, address: tuple[str, int]) -> Connection:
        idle = self._idle.get(address)
        now = time.monotonic()
        while idle:
            conn = idle.pop()
            fresh = now - conn.idle_since < self.max_idle_reuse_s
            if fresh and not conn.reader.at_eof() and not conn.writer.is_closing():
                conn.reused = True
                return conn
            conn.close()
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(*address, limit=MAX_HEAD_BYTES), self.connect_timeout)
        return Connection(address, reader, writer)

    def release(self, conn: Connection) -> None:
        idle = self._idle.setdefault(conn.address, [])
        if len(idle) < self.max_idle and not conn.writer.is_closing():
            conn.idle_since = time.monotonic()
            idle.append(conn)
        else:
            conn.close()

    def close(self) -> None:
        for idle in self._idle.values():
            for conn in idle:
                conn.close()
        self._idle.clear()


def address_of(url: str) -> tuple[str, int]:
    parts = urllib.parse.urlsplit(url)
    if parts.scheme != "http" or not parts.hostname:
        raise ValueError(f"{url} is not an http:// URL")
    return parts.hostname, parts.port or 80


def request_bytes(method: str, path: str, host: str, headers: Iterable[tuple[str, str]], body: bytes) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", f"Host: {host}", *(f"{k}: {v}" for k, v in headers),
             f"Content-Length: {len(body)}"]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


async def read_response_head(reader: asyncio.StreamReader) -> ResponseHead:
    while True:
        lines = await _read_head(reader)
        if lines is None:
            raise ConnectionResetError("the engine closed the connection before answering")
        parts = lines[0].decode("latin-1").split(" ", 2)
        if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not parts[1].isdigit():
            raise ProtocolError(502, f"the engine sent a malformed status line {lines[0][:80]!r}")
        if not parts[1].startswith("1"):
            break  # 1xx answers are interim: the real one follows
    pairs = _parse_headers(lines[1:])
    headers = _header_dict(pairs)
    chunked = "chunked" in headers.get("transfer-encoding", "").lower()
    length = None if chunked or "content-length" not in headers else int(headers["content-length"])
    keep_alive = "close" not in headers.get("connection", "").lower() and (chunked or length is not None)
    return ResponseHead(int(parts[1]), pairs, length, chunked, keep_alive)


async def response_body(reader: asyncio.StreamReader, head: ResponseHead) -> AsyncIterator[bytes]:
    """The body in the pieces it arrives in."""
    if head.chunked:
        async for piece in _chunks(reader):
            yield piece
        return
    remaining = head.length
    while remaining is None or remaining > 0:
        data = await reader.read(READ_SIZE if remaining is None else min(READ_SIZE, remaining))
        if not data:
            if remaining is not None:
                raise ConnectionResetError("the engine closed the connection in the middle of the body")
            return
        if remaining is not None:
            remaining -= len(data)
        yield data


async def fetch(pool: Pool, url: str, method: str, path: str, body: bytes = b"",
                headers: Iterable[tuple[str, str]] = (), timeout: float = 5.0) -> tuple[int, bytes]:
    """One whole request/response exchange (health checks, model lists, adapter loads)."""
    address = address_of(url)

    async def exchange() -> tuple[int, bytes]:
        conn = await pool.acquire(address)
        try:
            conn.writer.write(request_bytes(method, path, f"{address[0]}:{address[1]}", headers, body))
            await conn.writer.drain()
            head = await read_response_head(conn.reader)
            data = b"".join([piece async for piece in response_body(conn.reader, head)])
        except BaseException:
            conn.close()
            raise
        if head.keep_alive:
            pool.release(conn)
        else:
            conn.close()
        return head.status, data

    return await asyncio.wait_for(exchange(), timeout)
