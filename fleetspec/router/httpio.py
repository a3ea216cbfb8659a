"""HTTP/1.1 over the router's streams (`streams.Stream`) for a proxy: requests in (strictly parsed, bounded in time and
size), responses out, and a small keep-alive client for the engines. Response bodies stream
through in the pieces they arrive in, so an SSE token stream reaches the client as the engine
writes it.

Why not a framework: the router must add well under a millisecond per request, start instantly
in a bare container, and depend on nothing beyond the standard library. The syntax rules live in
`httpwire`; the bounds in `httplimits`.
"""

from __future__ import annotations

import asyncio
import dataclasses
import http
import time
import urllib.parse
from collections.abc import AsyncIterator, Iterable

from fleetspec.router import httplimits, httpwire, streams
from fleetspec.router.httpwire import ProtocolError

__all__ = ["ProtocolError"]

MAX_HEAD_BYTES = httplimits.Limits.max_head_bytes
MAX_BODY_BYTES = httplimits.Limits.max_body_bytes
READ_SIZE = 64 * 1024
# Per-connection headers a proxy must not forward (RFC 9110 §7.6.1), plus the framing it redoes.
# `expect` is answered here (100 Continue) and must not reach the engine, which would answer it again.
HOP_BY_HOP = frozenset({"connection", "keep-alive", "proxy-connection", "te", "trailer", "transfer-encoding",
                        "upgrade", "proxy-authenticate", "proxy-authorization", "content-length", "host", "expect"})
IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE"})


@dataclasses.dataclass
class Request:
    method: str
    target: str
    headers: dict[str, str]  # lower-case names
    body: bytes
    keep_alive: bool
    version: tuple[int, int] = (1, 1)
    held: int = 0  # body bytes reserved from the router's in-flight budget, given back once answered
    connection: frozenset[str] | None = None  # the Connection field's options, once parsed

    @property
    def path(self) -> str:
        return self.target.split("?", 1)[0]

    @property
    def query(self) -> dict[str, str]:
        return dict(urllib.parse.parse_qsl(self.target.partition("?")[2]))

    def forwardable(self) -> list[tuple[str, str]]:
        """Headers an engine may see: neither hop-by-hop nor named by the Connection field."""
        named = httpwire.connection_tokens(self.headers) if self.connection is None else self.connection
        return [(k, v) for k, v in self.headers.items() if k not in HOP_BY_HOP and k not in named]


@dataclasses.dataclass
class ResponseHead:
    status: int
    headers: list[tuple[str, str]]
    length: int | None  # Content-Length (0 for HEAD, 204, 304); None with chunked or close-delimited bodies
    chunked: bool
    keep_alive: bool
    connection: frozenset[str] = frozenset()  # the Connection field's options

    def header(self, name: str) -> str | None:
        return next((v for k, v in self.headers if k.lower() == name), None)


# -- the server side: reading client requests -----------------------------------------------------


def parse_request_head(head: bytes) -> tuple[Request, httpwire.Framing]:
    """A request head (without the blank line that ends it) as a Request with no body yet, and how
    its body is framed. ProtocolError with the status to answer when it is malformed."""
    first, rest = httpwire.split_start(head)
    line = httpwire.parse_request_line(first)
    fields = httpwire.head_fields(rest)
    headers = httpwire.field_dict(fields)
    if line.version == (1, 1) and sum(1 for name, _ in fields if name.lower() == "host") != 1:
        raise ProtocolError(400, "An HTTP/1.1 request must carry exactly one Host header.")
    tokens = httpwire.connection_tokens(headers)
    keep_alive = "close" not in tokens if line.version == (1, 1) else "keep-alive" in tokens
    framing = httpwire.request_framing(headers, line.version)
    return Request(line.method, line.target, headers, b"", keep_alive, line.version, connection=tokens), framing


class RequestReader:
    """Reads the requests of one client connection, each within the limits: the wait for its first
    byte (idle keep-alive), the rest of its head, and its body, in time and in bytes."""

    def __init__(self, stream: streams.Stream, limits: httplimits.Limits, budget: httplimits.BodyBudget):
        self.stream, self.limits, self.budget = stream, limits, budget
        self.started = False  # True once bytes of a request arrived that were not answered yet

    async def next(self) -> Request | None:
        """The next request, or None when the client closed the connection or left it idle too long.
        Raises ProtocolError with the status to answer (and then close)."""
        self.started = False
        head = await self._head()
        if head is None:
            return None
        request, framing = parse_request_head(head)
        request.body, request.held = await self._body(framing, request.headers, request.version)
        return request

    async def _head(self) -> bytes | None:
        stream, clock = self.stream, asyncio.get_running_loop().time
        try:
            if not await stream.fill(clock() + self.limits.idle_timeout_s):
                return None  # the peer closed between messages: the normal end of keep-alive
        except TimeoutError:
            return None  # idle keep-alive connection: closed without a word, as servers do
        self.started = True
        try:
            head = await stream.read_until(b"\r\n\r\n", clock() + self.limits.header_timeout_s)
        except TimeoutError:
            raise ProtocolError(408, f"The request head did not arrive within {self.limits.header_timeout_s:g} s.") from None
        except asyncio.IncompleteReadError as exc:
            if not exc.partial.strip():
                return None  # the peer closed between messages: the normal end of keep-alive
            raise ProtocolError(400, "The connection closed in the middle of the request head.") from None
        except asyncio.LimitOverrunError:
            raise ProtocolError(431, f"The request head is larger than {self.limits.max_head_bytes} bytes.") from None
        while head.startswith(b"\r\n"):  # RFC 9112 §2.2: empty lines before a request are ignored
            head = head[2:]
        if len(head) <= 4:
            raise ProtocolError(400, "The request has no request line.")
        return head[:-4]

    def _continue(self, headers: dict[str, str], version: tuple[int, int], send: bool = True) -> None:
        """Clients that wait for `100 Continue` before sending a body (curl does above 1 KiB) get
        it once the router has decided to read the body (and not at all without one)."""
        expect = headers.get("expect")
        if expect is None or version < (1, 1):
            return  # HTTP/1.0 servers must ignore Expect (RFC 9110 §10.1.1)
        if expect.lower() != "100-continue":
            raise ProtocolError(417, f"Expectation {expect[:40]!r} is not supported; only 100-continue is.")
        if send:
            self.stream.write(b"HTTP/1.1 100 Continue\r\n\r\n")

    def _busy(self) -> ProtocolError:
        return ProtocolError(503, "The router is holding as many request bodies as it may; retry shortly.",
                             (("Retry-After", str(self.limits.retry_after_s)),))

    async def _body(self, framing: httpwire.Framing, headers: dict[str, str],
                    version: tuple[int, int]) -> tuple[bytes, int]:
        cap = self.limits.max_body_bytes
        if framing.length == 0:
            if "expect" in headers:
                self._continue(headers, version, send=False)
            return b"", 0
        if framing.length is not None and framing.length > cap:
            raise ProtocolError(413, f"The request body is larger than {cap} bytes.")
        reserve = framing.length if framing.length is not None else 0
        if not self.budget.reserve(reserve):
            raise self._busy()
        held = reserve
        try:
            self._continue(headers, version)
            stream = self.stream
            deadline = asyncio.get_running_loop().time() + self.limits.body_timeout_s
            if framing.length is not None:
                return await stream.read_exactly(framing.length, deadline), held
            pieces: list[bytes] = []
            async for size in _chunk_sizes(stream, cap, deadline):
                if not self.budget.reserve(size):
                    raise self._busy()
                held += size
                pieces.append(await stream.read_exactly(size, deadline))
                if await stream.read_exactly(2, deadline) != b"\r\n":
                    raise ProtocolError(400, "Chunk data is not followed by CRLF.")
            return b"".join(pieces), held
        except TimeoutError:
            self.budget.release(held)
            raise ProtocolError(408, f"The request body did not arrive within {self.limits.body_timeout_s:g} s.") from None
        except asyncio.IncompleteReadError:
            self.budget.release(held)
            raise ProtocolError(400, "The connection closed in the middle of the request body.") from None
        except BaseException:
            self.budget.release(held)
            raise


async def _line(stream: streams.Stream, deadline: float) -> bytes:
    """One CRLF-terminated line of chunked framing, without the CRLF."""
    try:
        line = await stream.read_until(b"\r\n", deadline, limit=httpwire.MAX_CHUNK_LINE + 2)
    except asyncio.LimitOverrunError:
        raise ProtocolError(400, f"A chunk-size or trailer line is longer than {httpwire.MAX_CHUNK_LINE} bytes.") from None
    return line[:-2]


async def _chunk_sizes(stream: streams.Stream, cap: int, deadline: float) -> AsyncIterator[int]:
    """The size of each chunk, checked against `cap` before a byte of it is read; the caller reads
    the data and its CRLF. The trailer section is read (bounded) and dropped."""
    total = 0
    while True:
        size = httpwire.chunk_size(await _line(stream, deadline))
        if size == 0:
            trailer = 0
            while line := await _line(stream, deadline):
                trailer += len(line)
                if trailer > MAX_HEAD_BYTES:
                    raise ProtocolError(431, "The chunked trailer section is larger than 64 KiB.")
                httpwire.parse_fields(httpwire.split_head(line))
            return
        total += size
        if total > cap:
            raise ProtocolError(413, f"The request body is larger than {cap} bytes.")
        yield size


_STATUS_LINES = {int(s): f"HTTP/1.1 {int(s)} {s.phrase}" for s in http.HTTPStatus}


def response_head(status: int, headers: Iterable[tuple[str, str]]) -> bytes:
    first = _STATUS_LINES.get(status) or f"HTTP/1.1 {status} Unknown"
    return "\r\n".join([first, *(f"{k}: {v}" for k, v in headers), "", ""]).encode("latin-1")


def chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


LAST_CHUNK = b"0\r\n\r\n"


# -- the client side: talking to engines ----------------------------------------------------------


class Stalled(TimeoutError):
    """The engine stopped sending in the middle of an answer for longer than the idle limit."""


@dataclasses.dataclass(eq=False)
class Connection:
    address: tuple[str, int]
    stream: streams.Stream
    reused: bool = False
    idle_since: float = 0.0

    def close(self) -> None:
        self.stream.close()

    def clean(self) -> bool:
        """Open, and holding no byte the engine sent beyond its last answer. Bytes there would be
        read as the next request's answer (an engine that over-sends desynchronises the connection,
        which is response smuggling), so such a connection is closed, never reused."""
        return not self.stream.is_closing() and not self.stream.buffer


# vLLM's uvicorn closes a keep-alive connection after 5 s idle (VLLM_HTTP_TIMEOUT_KEEP_ALIVE, measured:
# docs/vllm-behaviour.md). A request sent on one just as the engine closes it dies with no answer, so
# connections idle for nearly that long are dropped instead of reused.
MAX_IDLE_REUSE_S = 4.0


class Pool:
    """Idle keep-alive connections per engine address."""

    def __init__(self, connect_timeout: float = httplimits.Limits.upstream_connect_s, max_idle: int = 64,
                 max_idle_reuse_s: float = MAX_IDLE_REUSE_S):
        self.connect_timeout = connect_timeout
        self.max_idle = max_idle
        self.max_idle_reuse_s = max_idle_reuse_s
        self._idle: dict[tuple[str, int], list[Connection]] = {}

    async def acquire(self, address: tuple[str, int], fresh_only: bool = False) -> Connection:
        """A connection to `address`: an idle one the engine has not closed, else a new one.
        Raises OSError or TimeoutError when the engine cannot be reached: nothing was sent."""
        conn = None if fresh_only else self.idle(address)
        if conn is not None:
            return conn
        stream = await streams.open_connection(*address, limit=MAX_HEAD_BYTES, timeout=self.connect_timeout)
        return Connection(address, stream)

    def idle(self, address: tuple[str, int]) -> Connection | None:
        """An idle connection to `address` the engine has not closed, or None."""
        idle = self._idle.get(address)
        now = time.monotonic()
        while idle:
            conn = idle.pop()
            fresh = now - conn.idle_since < self.max_idle_reuse_s
            if fresh and conn.clean() and not conn.stream.at_eof():
                conn.reused = True
                return conn
            conn.close()
        return None

    def release(self, conn: Connection) -> None:
        idle = self._idle.setdefault(conn.address, [])
        if len(idle) < self.max_idle and conn.clean():
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


def request_head(method: str, path: str, host: str, headers: Iterable[tuple[str, str]], length: int) -> bytes:
    """The head of a request rebuilt from parsed fields, for a body of `length` bytes. Every name and
    value came through httpwire (or from the router itself); a CR, LF or NUL in one would still split
    the line, so the head is checked whole."""
    lines = [f"{method} {path} HTTP/1.1", f"Host: {host}", *(f"{k}: {v}" for k, v in headers),
             f"Content-Length: {length}"]
    head = "\r\n".join(lines)
    if head.count("\n") != len(lines) - 1 or head.count("\r") != len(lines) - 1 or "\0" in head:
        raise ValueError("a header to forward contains CR, LF or NUL")
    return (head + "\r\n\r\n").encode("latin-1")


def request_bytes(method: str, path: str, host: str, headers: Iterable[tuple[str, str]], body: bytes) -> bytes:
    return request_head(method, path, host, headers, len(body)) + body


# A body larger than this is written to an engine slice by slice, each handed to the kernel before
# the next is queued, so that the router never holds a second whole copy of it in its write buffer.
WRITE_SLICE = 1024 * 1024


async def write_request(stream: streams.Stream, head: bytes, body: bytes, deadline: float) -> None:
    """Send a request; TimeoutError when the engine has not taken all of it by `deadline` (loop time),
    OSError when the connection is gone. A small request goes out in one write and, when the kernel
    took it all at once (nearly always), without arming a timer."""
    clock = asyncio.get_running_loop().time
    if len(body) <= WRITE_SLICE:
        stream.write(head + body)
        await stream.drain(deadline - clock())
        return
    view = memoryview(body)
    stream.write(head)
    for start in range(0, len(view), WRITE_SLICE):
        stream.write(view[start:start + WRITE_SLICE])
        await stream.drain(deadline - clock())


async def read_response_head(stream: streams.Stream, method: str = "GET", deadline: float | None = None
                             ) -> ResponseHead:
    """The engine's answer head (1xx interim answers skipped), by `deadline` (loop time; TimeoutError
    after it). Malformed answers are ProtocolError 502."""
    while True:
        try:
            head = await stream.read_until(b"\r\n\r\n", deadline)
        except asyncio.IncompleteReadError as exc:
            if not exc.partial:
                raise ConnectionResetError("the engine closed the connection before answering") from None
            raise ConnectionResetError("the engine closed the connection in the middle of its answer head") from None
        except asyncio.LimitOverrunError:
            raise ProtocolError(502, "The engine's answer head is larger than 64 KiB.") from None
        parsed = parse_response_head(head[:-4], method)
        if parsed is not None:
            return parsed


def parse_response_head(head: bytes, method: str) -> ResponseHead | None:
    """An answer head (without the blank line that ends it); None for a 1xx interim answer, which
    the real answer follows. Malformed answers are ProtocolError 502."""
    try:
        first, rest = httpwire.split_start(head)
        version, status = httpwire.parse_status_line(first)
        if status == 101:  # the router never forwards Upgrade, so no engine may switch protocols
            raise ProtocolError(502, "The engine switched protocols (101) though nothing asked it to.")
        if status < 200:
            return None
        pairs = httpwire.head_fields(rest)
    except ProtocolError as exc:
        raise ProtocolError(502, f"The engine sent a malformed answer: {exc}") from None
    headers = httpwire.field_dict(pairs)
    framing = httpwire.response_framing(headers, status, method)
    tokens = httpwire.connection_tokens(headers)
    persistent = "close" not in tokens if version == (1, 1) else "keep-alive" in tokens
    # Transfer-Encoding and Content-Length together: chunked wins, but the connection is not to be
    # trusted with another message (RFC 9112 §6.3 item 3).
    ambiguous = "transfer-encoding" in headers and "content-length" in headers
    keep_alive = persistent and not ambiguous and (framing.chunked or framing.length is not None)
    return ResponseHead(status, pairs, framing.length, framing.chunked, keep_alive, tokens)


async def _read(stream: streams.Stream, n: int, idle_s: float) -> bytes:
    try:
        return await stream.read(n, asyncio.get_running_loop().time() + idle_s)
    except TimeoutError:
        raise Stalled(f"the engine sent nothing for {idle_s:g} s in the middle of its answer") from None


class Dechunker:
    """Chunked framing (RFC 9112 §7.1) decoded as the bytes arrive: `feed` takes whatever one read
    returned and gives back the data of every chunk that read completed or continued. A burst of
    small chunks (an SSE token stream) then costs one read and one write, not several awaits each.
    Only a partial size line or CRLF is kept between reads; chunk data is passed on as it comes."""

    __slots__ = ("pending", "remaining", "state", "trailer", "extra")
    SIZE, DATA, CRLF, TRAILER, DONE = range(5)

    def __init__(self) -> None:
        self.pending = b""
        self.remaining = 0  # data bytes of the current chunk still to come
        self.state = self.SIZE
        self.trailer = 0  # bytes of trailer lines seen (dropped; bounded like a head)
        self.extra = b""  # bytes after the last chunk's trailer section: the sender over-sent

    @property
    def done(self) -> bool:
        return self.state == self.DONE

    def feed(self, data: bytes) -> list[bytes]:
        """Raises ProtocolError (status 400) when the framing is broken."""
        buf = self.pending + data if self.pending else data
        out: list[bytes] = []
        pos, end = 0, len(buf)
        while pos < end:
            state = self.state
            if state == self.DATA:
                take = min(self.remaining, end - pos)
                out.append(buf if take == end else buf[pos:pos + take])
                pos += take
                self.remaining -= take
                if not self.remaining:
                    self.state = self.CRLF
            elif state == self.CRLF:
                if end - pos < 2:
                    break
                if buf[pos:pos + 2] != b"\r\n":
                    raise ProtocolError(400, "Chunk data is not followed by CRLF.")
                pos += 2
                self.state = self.SIZE
            elif state == self.DONE:
                self.extra = buf[pos:]
                pos = end
            else:  # a size line or a trailer line
                eol = buf.find(b"\r\n", pos)
                if eol < 0:
                    if end - pos > httpwire.MAX_CHUNK_LINE:
                        raise ProtocolError(400, f"A chunk-size or trailer line is longer than {httpwire.MAX_CHUNK_LINE} bytes.")
                    break
                line, pos = buf[pos:eol], eol + 2
                if state == self.SIZE:
                    self.remaining = httpwire.chunk_size(line)
                    self.state = self.DATA if self.remaining else self.TRAILER
                elif line:
                    self.trailer += len(line)
                    if self.trailer > MAX_HEAD_BYTES:
                        raise ProtocolError(400, "The chunked trailer section is larger than 64 KiB.")
                else:
                    self.state = self.DONE
        self.pending = buf[pos:] if pos < end else b""
        return out


async def response_body(stream: streams.Stream, head: ResponseHead,
                        idle_s: float = httplimits.Limits.upstream_idle_s) -> AsyncIterator[bytes]:
    """The body in the pieces it arrives in. Raises Stalled when the engine goes silent for idle_s,
    ConnectionResetError when it closes too early, ProtocolError (502) when it breaks the framing."""
    if head.chunked:
        chunks = Dechunker()
        try:
            while not chunks.done:
                # Each read has its own idle deadline, so the clock stops while the caller hands the
                # data to its client: a slow client is the write timeout's business, not the engine's.
                data = await _read(stream, READ_SIZE, idle_s)
                if not data:
                    raise ConnectionResetError("the engine closed the connection in the middle of its answer")
                pieces = chunks.feed(data)
                if pieces:
                    yield pieces[0] if len(pieces) == 1 else b"".join(pieces)
        except ProtocolError as exc:
            raise ProtocolError(502, f"The engine broke its chunked framing: {exc}") from None
        if chunks.extra:
            head.keep_alive = False  # bytes past the last chunk: the connection is out of step, not reused
        return
    remaining = head.length
    while remaining is None or remaining > 0:
        data = await _read(stream, READ_SIZE if remaining is None else min(READ_SIZE, remaining), idle_s)
        if not data:
            if remaining is not None:
                raise ConnectionResetError("the engine closed the connection in the middle of the body")
            return
        if remaining is not None:
            remaining -= len(data)
        yield data


async def fetch(pool: Pool, url: str, method: str, path: str, body: bytes = b"",
                headers: Iterable[tuple[str, str]] = (), timeout: float = 5.0,
                max_bytes: int | None = None) -> tuple[int, bytes]:
    """One whole request/response exchange (health checks, model lists, adapter loads). A request
    that may be repeated (GET...) is sent again on a new connection when a reused one turns out to be
    closed; a POST is never sent twice, since the engine may have acted on it. With `max_bytes`, a
    longer answer is ProtocolError (502) and its connection is closed, not read to the end."""
    address = address_of(url)
    data = request_bytes(method, path, f"{address[0]}:{address[1]}", headers, body)

    async def exchange(fresh_only: bool) -> tuple[int, bytes]:
        conn = await pool.acquire(address, fresh_only)
        try:
            conn.stream.write(data)
            await conn.stream.drain()
            head = await read_response_head(conn.stream, method)
            if max_bytes is not None and head.length is not None and head.length > max_bytes:
                raise ProtocolError(502, f"the answer is {head.length} bytes, more than the {max_bytes} allowed")
            pieces, size = [], 0
            async for piece in response_body(conn.stream, head, timeout):
                size += len(piece)
                if max_bytes is not None and size > max_bytes:
                    raise ProtocolError(502, f"the answer is longer than the {max_bytes} bytes allowed")
                pieces.append(piece)
            answer = b"".join(pieces)
        except BaseException as exc:
            conn.close()
            if conn.reused and method in IDEMPOTENT and isinstance(exc, ConnectionError | asyncio.IncompleteReadError):
                return await exchange(True)
            raise
        if head.keep_alive:
            pool.release(conn)
        else:
            conn.close()
        return head.status, answer

    return await asyncio.wait_for(exchange(False), timeout)
