"""The router's HTTP/1.1 front, driven with raw sockets: malformed and hostile requests, slow and
idle clients, oversized bodies, a full router, and engines that misbehave (204/304, HEAD, closing
or stalling mid-stream, never answering, garbled heads).

Every case checks three things: the status (or the close) the client gets, that nothing reached
the engine that should not have, and — after each test, in `router_stays_up` — that the router is
still running, serves a normal request within 1 s, and never logged a traceback.

The router runs as a real process with small limits (ROUTER_LIMITS) so that the timeouts take a
second, not a minute; the engine is tests/scripted_engine.py, which records every byte it gets.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import socket
import subprocess
import sys
import time

import pytest
from netkit import free_port, get
from scripted_engine import MODEL, ScriptedEngine

from fleetspec.router import httpio
from fleetspec.routing import config
from fleetspec.spec import models

ROUTER_LIMITS = [
    "--header-timeout-s",
    "1",
    "--idle-timeout-s",
    "2",
    "--body-timeout-s",
    "1",
    "--write-timeout-s",
    "2",
    "--max-body-bytes",
    str(1024 * 1024),
    "--max-inflight-body-bytes",
    str(3 * 1024 * 1024),
    "--max-connections",
    "64",
    "--upstream-first-byte-s",
    "1",
    "--upstream-idle-s",
    "1",
    "--max-json-depth",
    "32",
]
BODY = json.dumps({"model": "auto", "prompt": "hello", "max_tokens": 2}).encode()


def request(*head: bytes, body: bytes = b"") -> bytes:
    return b"\r\n".join(head) + b"\r\n\r\n" + body


def post(
    body: bytes = BODY, *extra: bytes, target: bytes = b"/v1/completions", version: bytes = b"HTTP/1.1"
) -> bytes:
    return request(
        b"POST " + target + b" " + version,
        b"Host: router",
        b"Content-Type: application/json",
        *extra,
        b"Content-Length: %d" % len(body),
        body=body,
    )


def prompt(text: str) -> bytes:
    return json.dumps({"model": "auto", "prompt": text, "max_tokens": 2}).encode()


class Answer:
    def __init__(self, status: int, headers: dict[str, str], body: bytes, raw_head: bytes):
        self.status, self.headers, self.body, self.raw_head = status, headers, body, raw_head


class Client:
    """One raw connection to the router, reading answers the way a strict client would."""

    def __init__(self, port: int, timeout: float = 5.0):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.buffer = b""

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc) -> None:
        self.sock.close()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _fill(self) -> bool:
        data = self.sock.recv(65536)
        self.buffer += data
        return bool(data)

    def _take(self, n: int) -> bytes:
        while len(self.buffer) < n:
            if not self._fill():
                raise EOFError(f"closed after {len(self.buffer)} of {n} bytes")
        data, self.buffer = self.buffer[:n], self.buffer[n:]
        return data

    def _line(self) -> bytes:
        while b"\r\n" not in self.buffer:
            if not self._fill():
                raise EOFError("closed in the middle of a line")
        line, self.buffer = self.buffer.split(b"\r\n", 1)
        return line

    def answer(self, head_request: bool = False) -> Answer:
        while b"\r\n\r\n" not in self.buffer:
            if not self._fill():
                raise EOFError(f"closed before an answer head: {self.buffer[:200]!r}")
        raw, self.buffer = self.buffer.split(b"\r\n\r\n", 1)
        lines = raw.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ")[1])
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            assert name.lower() not in headers, f"repeated header {name} in {raw!r}"
            headers[name.lower()] = value.strip()
        if status == 100:
            return self.answer(head_request)
        if head_request or status in (204, 304):
            return Answer(status, headers, b"", raw)
        if headers.get("transfer-encoding") == "chunked":
            body = b""
            while size := int(self._line(), 16):
                body += self._take(size)
                assert self._take(2) == b"\r\n"
            assert self._line() == b""
            return Answer(status, headers, body, raw)
        if "content-length" in headers:
            return Answer(status, headers, self._take(int(headers["content-length"])), raw)
        while self._fill():
            pass
        body, self.buffer = self.buffer, b""
        return Answer(status, headers, body, raw)

    def closed_within(self, seconds: float) -> bool:
        """True when the router closes the connection (EOF or reset) within `seconds`."""
        self.sock.settimeout(seconds)
        try:
            while self._fill():
                pass
        except TimeoutError:
            return False
        except ConnectionResetError:
            return True
        return True


@pytest.fixture(scope="module")
def engine():
    scripted = ScriptedEngine()
    yield scripted
    scripted.close()


@pytest.fixture(scope="module")
def router(engine, tmp_path_factory):
    with running_router(engine, tmp_path_factory.mktemp("protocol"), ROUTER_LIMITS) as started:
        yield started


@contextlib.contextmanager
def running_router(engine, work, limits: list[str]):
    spec = models.FleetSpec.model_validate(
        {
            "name": "protocol",
            "base_model": {"id": MODEL},
            "gpus": [{"type": "sim", "count": 1}],
            "servers": [{"name": "main", "lora": {"max_loras": 2, "max_lora_rank": 8}}],
            "routing": {"fallback": "base"},
        }
    )
    path = work / "router.json"
    path.write_text(
        config.dumps(config.document(spec, [config.Upstream("main", 0, engine.url)], refresh_seconds=0.5))
    )
    port = free_port()
    log = work / "router.log"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "fleetspec.router",
            "serve",
            "--config",
            str(path),
            "--port",
            str(port),
            *limits,
        ],
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            status, body = get(f"http://127.0.0.1:{port}/health", timeout_s=1)
        except OSError:
            status, body = None, b""  # not listening yet
        if status == 200 and json.loads(body)["healthy_upstreams"] == 1:
            break
        time.sleep(0.05)
    else:
        proc.terminate()
        raise AssertionError(f"the router did not come up: {log.read_text()}")
    try:
        yield type("Router", (), {"port": port, "proc": proc, "log": log})
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def metric(router, name: str) -> float:
    status, body = get(f"http://127.0.0.1:{router.port}/metrics")
    assert status == 200
    found = re.search(rf"^{re.escape(name)} (\S+)$", body.decode(), re.M)
    return float(found.group(1)) if found else 0.0


def wait_until(condition, seconds: float, what: str):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if value := condition():
            return value
        time.sleep(0.02)
    raise AssertionError(f"waited {seconds} s for {what}")


@pytest.fixture(autouse=True)
def router_stays_up(router, engine):
    engine.forget()
    yield
    assert router.proc.poll() is None, router.log.read_text()
    started = time.monotonic()
    with Client(router.port, timeout=1.0) as client:
        client.send(post())
        answer = client.answer()
    assert answer.status == 200 and json.loads(answer.body)["choices"][0]["text"] == "ok"
    assert time.monotonic() - started < 1.0
    log = router.log.read_text()
    assert "Traceback" not in log
    assert "answering a client failed" not in log  # the catch-all for a bug: no case may reach it


def refused(router, engine, raw: bytes) -> Answer:
    """Send `raw`; the router must answer an error, close, and forward nothing."""
    with Client(router.port) as client:
        client.send(raw)
        answer = client.answer()
        assert answer.headers.get("connection") == "close"
        assert client.closed_within(3)
    assert json.loads(answer.body)["error"]["message"]
    assert engine.proxied() == []
    return answer


# -- request smuggling and strict framing ----------------------------------------------------------

HIDDEN = (
    b'POST /v1/unload_lora_adapter HTTP/1.1\r\nHost: e\r\nContent-Length: 22\r\n\r\n{"lora_name": "python"}'
)

MALFORMED = {
    "bare LF inside a header value": (post(BODY, b"X-A: b\nContent-Length: 0") + HIDDEN, 400),
    "bare CR inside a header value": (post(BODY, b"X-A: b\rContent-Length: 0"), 400),
    "NUL inside a header value": (post(BODY, b"X-A: b\0c"), 400),
    "bare LF ending the request line": (
        b"POST /v1/completions HTTP/1.1\nHost: r\r\nContent-Length: 0\r\n\r\n",
        400,
    ),
    "obsolete line folding": (post(BODY, b"X-A: b", b" folded"), 400),
    "space before the colon": (post(BODY, b"X-A : b"), 400),
    "header name with a separator": (post(BODY, b"X(A): b"), 400),
    "Content-Length with a plus sign": (
        request(b"POST /v1/completions HTTP/1.1", b"Host: r", b"Content-Length: +3", body=b"abc"),
        400,
    ),
    "Content-Length with an underscore": (
        request(b"POST /v1/completions HTTP/1.1", b"Host: r", b"Content-Length: 1_0", body=b"0123456789"),
        400,
    ),
    "negative Content-Length": (
        request(b"POST /v1/completions HTTP/1.1", b"Host: r", b"Content-Length: -1"),
        400,
    ),
    "hexadecimal Content-Length": (
        request(b"POST /v1/completions HTTP/1.1", b"Host: r", b"Content-Length: 0x10"),
        400,
    ),
    "conflicting Content-Length list": (
        request(b"POST /v1/completions HTTP/1.1", b"Host: r", b"Content-Length: 5, 6", body=b"hello!"),
        400,
    ),
    "two different Content-Length fields": (
        request(
            b"POST /v1/completions HTTP/1.1",
            b"Host: r",
            b"Content-Length: 5",
            b"Content-Length: 6",
            body=b"hello!",
        ),
        400,
    ),
    "Content-Length and Transfer-Encoding": (
        request(
            b"POST /v1/completions HTTP/1.1",
            b"Host: r",
            b"Content-Length: 5",
            b"Transfer-Encoding: chunked",
            body=b"0\r\n\r\n",
        ),
        400,
    ),
    "Transfer-Encoding notchunked": (
        request(
            b"POST /v1/completions HTTP/1.1", b"Host: r", b"Transfer-Encoding: notchunked", body=b"0\r\n\r\n"
        ),
        400,
    ),
    "Transfer-Encoding xchunked": (
        request(
            b"POST /v1/completions HTTP/1.1", b"Host: r", b"Transfer-Encoding: xchunked", body=b"0\r\n\r\n"
        ),
        400,
    ),
    "chunked not last": (
        request(
            b"POST /v1/completions HTTP/1.1",
            b"Host: r",
            b"Transfer-Encoding: chunked, identity",
            body=b"0\r\n\r\n",
        ),
        400,
    ),
    "chunked twice": (
        request(
            b"POST /v1/completions HTTP/1.1",
            b"Host: r",
            b"Transfer-Encoding: chunked",
            b"Transfer-Encoding: chunked",
            body=b"0\r\n\r\n",
        ),
        400,
    ),
    "a coding the router cannot undo": (
        request(
            b"POST /v1/completions HTTP/1.1",
            b"Host: r",
            b"Transfer-Encoding: gzip, chunked",
            body=b"0\r\n\r\n",
        ),
        501,
    ),
    "Transfer-Encoding in HTTP/1.0": (
        request(b"POST /v1/completions HTTP/1.0", b"Transfer-Encoding: chunked", body=b"0\r\n\r\n"),
        400,
    ),
    "HTTP/1.2": (post(BODY, version=b"HTTP/1.2"), 505),
    "HTTP/2.0 in an HTTP/1 request line": (post(BODY, version=b"HTTP/2.0"), 505),
    "lower-case version": (post(BODY, version=b"http/1.1"), 400),
    "version with trailing garbage": (post(BODY, version=b"HTTP/1.1x"), 400),
    "target that is not a path": (post(BODY, target=b"v1/completions"), 400),
    "raw non-ASCII byte in the target": (post(BODY, target=b"/v1/completions?q=\xff"), 400),
    "two spaces in the request line": (b"POST  /v1/completions HTTP/1.1\r\nHost: r\r\n\r\n", 400),
    "no Host in HTTP/1.1": (request(b"POST /v1/completions HTTP/1.1", b"Content-Length: 0"), 400),
    "two Host fields": (
        request(b"POST /v1/completions HTTP/1.1", b"Host: a", b"Host: b", b"Content-Length: 0"),
        400,
    ),
    "an expectation other than 100-continue": (post(BODY, b"Expect: 200-ok"), 417),
    "too many header fields": (post(BODY, *(b"X-%d: y" % n for n in range(120))), 431),
    "a head over the limit": (post(BODY, b"X-Big: " + b"y" * 70_000), 431),
}


def chunked(*pieces: bytes) -> bytes:
    return request(
        b"POST /v1/completions HTTP/1.1",
        b"Host: r",
        b"Content-Type: application/json",
        b"Transfer-Encoding: chunked",
        body=b"".join(pieces),
    )


CHUNKED = {
    "chunk size 0x5": (chunked(b"0x5\r\nhello\r\n0\r\n\r\n"), 400),
    "chunk size 0_5": (chunked(b"0_5\r\nhello\r\n0\r\n\r\n"), 400),
    "negative chunk size": (chunked(b"-5\r\nhello\r\n0\r\n\r\n"), 400),
    "chunk size with a plus sign": (chunked(b"+5\r\nhello\r\n0\r\n\r\n"), 400),
    "non-hex chunk size": (chunked(b"zz\r\nhello\r\n0\r\n\r\n"), 400),
    "empty chunk size": (chunked(b"\r\nhello\r\n0\r\n\r\n"), 400),
    "chunk size line of 100 KB": (chunked(b"5;" + b"x" * 100_000 + b"\r\nhello\r\n0\r\n\r\n"), 400),
    "chunk size ended by a bare LF": (chunked(b"5\nhello\r\n0\r\n\r\n"), 400),
    "no CRLF after chunk data": (chunked(b"5\r\nhelloXX0\r\n\r\n"), 400),
    "a chunk larger than the body cap": (chunked(b"200000\r\n" + b"x" * 1000), 413),
    "chunks adding up past the body cap": (
        chunked(*(b"80000\r\n" + b"x" * 0x80000 + b"\r\n" for _ in range(3))),
        413,
    ),
    "bare LF in a trailer": (chunked(b"2\r\n{}\r\n0\r\nX-T: a\nb\r\n\r\n"), 400),
}


@pytest.mark.parametrize("case", list(MALFORMED) + list(CHUNKED))
def test_malformed_requests_are_refused_and_never_forwarded(router, engine, case):
    raw, status = {**MALFORMED, **CHUNKED}[case]
    assert refused(router, engine, raw).status == status


def test_the_smuggled_unload_of_the_issue_reaches_no_engine(router, engine):
    answer = refused(router, engine, post(BODY, b"X-A: b\nContent-Length: 0") + HIDDEN)
    assert answer.status == 400
    assert not any(s.path == "/v1/unload_lora_adapter" for s in engine.seen)


def expecting(length: int) -> bytes:
    """A request head that waits for 100 Continue before sending `length` bytes of body."""
    return request(
        b"POST /v1/completions HTTP/1.1", b"Host: r", b"Expect: 100-continue", b"Content-Length: %d" % length
    )


def test_body_over_the_cap_is_413_before_it_is_read(router, engine):
    with Client(router.port) as client:
        client.send(expecting(2 * 1024 * 1024))
        answer = client.answer()  # no 100 Continue first: the body is not wanted
        assert answer.status == 413 and b"100 Continue" not in answer.raw_head
        assert client.closed_within(3)
    assert engine.proxied() == []


def test_json_nested_100000_deep_is_400(router, engine):
    body = b'{"model": "auto", "prompt": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    assert refused_json(router, engine, body) == 400
    body = json.dumps(
        {"model": "auto", "prompt": "x", "extra": _nested(40)}
    ).encode()  # over --max-json-depth 32
    assert refused_json(router, engine, body) == 400


def _nested(depth: int):
    value: list = []
    for _ in range(depth):
        value = [value]
    return value


def refused_json(router, engine, body: bytes) -> int:
    """A body the router reads whole and then refuses: the connection may stay open."""
    with Client(router.port) as client:
        client.send(post(body))
        answer = client.answer()
    assert "deeper than 32" in json.loads(answer.body)["error"]["message"]
    assert engine.proxied() == []
    return answer.status


# -- what is forwarded -------------------------------------------------------------------------------


def test_forwarded_request_is_rebuilt_from_parsed_fields(router, engine):
    body = prompt("hello")
    with Client(router.port) as client:
        client.send(
            request(
                b"POST http://router.example/v1/completions HTTP/1.1",
                b"Host: router.example",
                b"Content-Type: application/json",
                b"Transfer-Encoding: chunked",
                b"Connection: keep-alive, X-Secret",
                b"X-Secret: do-not-forward",
                b"X-Kept:   padded   ",
                b"Authorization: Bearer client-key",
                b"Keep-Alive: timeout=5",
                body=b"%x\r\n%s\r\n0\r\nX-Trailer: t\r\n\r\n" % (len(body), body),
            )
        )
        assert client.answer().status == 200
    (seen,) = engine.proxied()
    assert seen.method == "POST" and seen.path == "/v1/completions"
    names = [k.lower() for k, _ in seen.headers]
    assert names.count("content-length") == 1 and names.count("host") == 1
    assert not {
        "transfer-encoding",
        "x-secret",
        "connection",
        "keep-alive",
        "authorization",
        "x-trailer",
    } & set(names)
    assert seen.header("x-kept") == ["padded"]
    assert seen.header("host") == [f"127.0.0.1:{engine.port}"]
    assert int(seen.header("content-length")[0]) == len(seen.body)
    assert json.loads(seen.body)["model"] == MODEL
    assert b"\n" not in seen.head.replace(b"\r\n", b"")


def test_pipelined_requests_are_answered_in_order(router, engine):
    with Client(router.port) as client:
        client.send(
            post(prompt("first")) + post(prompt("second")) + request(b"GET /health HTTP/1.1", b"Host: r")
        )
        answers = [client.answer() for _ in range(3)]
    assert [a.status for a in answers] == [200, 200, 200]
    assert "fleet" in json.loads(answers[2].body)
    assert [json.loads(s.body)["prompt"] for s in engine.proxied()] == ["first", "second"]


def test_nothing_pipelined_after_connection_close_is_read(router, engine):
    with Client(router.port) as client:
        client.send(post(prompt("first"), b"Connection: close") + post(prompt("second")))
        answer = client.answer()
        assert answer.status == 200 and answer.headers.get("connection") == "close"
        assert client.closed_within(3) and client.buffer == b""  # no second answer
    assert [json.loads(s.body)["prompt"] for s in engine.proxied()] == ["first"]


def test_expect_100_continue_then_body(router, engine):
    body = prompt("continue " * 300)
    with Client(router.port) as client:
        client.send(expecting(len(body)))
        client.sock.settimeout(3)
        assert client._line() == b"HTTP/1.1 100 Continue"
        assert client._line() == b""
        client.send(body)
        assert client.answer().status == 200
    assert len(engine.proxied()) == 1 and not engine.proxied()[0].header("expect")


# -- HTTP/1.0 and HEAD -------------------------------------------------------------------------------


def test_http10_keep_alive_says_so_and_stays_open(router, engine):
    with Client(router.port) as client:
        for _ in range(2):
            client.send(
                post(BODY, b"Connection: keep-alive", version=b"HTTP/1.0").replace(b"Host: router\r\n", b"")
            )
            answer = client.answer()
            assert answer.status == 200 and answer.headers.get("connection") == "keep-alive"
    assert len(engine.proxied()) == 2


def test_http10_without_keep_alive_is_closed_after_the_answer(router, engine):
    with Client(router.port) as client:
        client.send(post(BODY, version=b"HTTP/1.0"))
        answer = client.answer()
        assert answer.status == 200 and answer.headers.get("connection") == "close"
        assert client.closed_within(2)


def test_http10_client_gets_a_stream_without_chunked_framing(router, engine):
    with Client(router.port) as client:
        client.send(post(prompt("mode:stream"), b"Connection: keep-alive", version=b"HTTP/1.0"))
        answer = client.answer()  # no length, no chunked: read to the close
    assert answer.status == 200 and "transfer-encoding" not in answer.headers
    assert answer.headers.get("connection") == "close"
    assert answer.body == b"data: 0\n\ndata: 1\n\ndata: 2\n\n"


def test_head_of_the_routers_own_endpoints_has_no_body(router, engine):
    with Client(router.port) as client:
        client.send(
            request(b"HEAD /health HTTP/1.1", b"Host: r") + request(b"GET /health HTTP/1.1", b"Host: r")
        )
        head = client.answer(head_request=True)
        full = client.answer()
    assert head.status == 200 and int(head.headers["content-length"]) > 0
    assert full.status == 200 and json.loads(full.body)["fleet"] == "protocol"


# -- engines that misbehave --------------------------------------------------------------------------


@pytest.mark.parametrize("status", [204, 304])
def test_bodiless_engine_answers_keep_the_connection(router, engine, status):
    with Client(router.port) as client:
        client.send(post(prompt(f"mode:{status}")))
        answer = client.answer()
        assert answer.status == status
        assert "content-length" not in answer.headers and "transfer-encoding" not in answer.headers
        client.send(post())  # the same connection serves on: the answer was not read as close-delimited
        assert client.answer().status == 200


def test_engine_head_answer_is_not_waited_on_for_a_body(engine):
    async def run():
        pool = httpio.Pool()
        try:
            started = time.monotonic()
            status, body = await httpio.fetch(pool, engine.url, "HEAD", "/v1/anything", timeout=3)
            assert (status, body) == (200, b"")
            assert time.monotonic() - started < 1.0
            (conn,) = pool._idle[("127.0.0.1", engine.port)]  # kept: a HEAD answer ends at its head
            assert not conn.stream.is_closing()
        finally:
            pool.close()

    asyncio.run(run())


def test_engine_closing_mid_stream_cuts_the_client_stream(router, engine):
    before = metric(
        router, 'fleetspec_router_upstream_errors_total{server="main",replica="0",kind="broken-body"}'
    )
    with Client(router.port) as client:
        client.send(post(prompt("mode:close-mid-stream")))
        with pytest.raises(EOFError):
            client.answer()  # the chunked answer never gets its last chunk
    after = metric(
        router, 'fleetspec_router_upstream_errors_total{server="main",replica="0",kind="broken-body"}'
    )
    assert after == before + 1
    assert len(engine.proxied()) == 1


@pytest.mark.parametrize("mode", ["stall-stream", "stall-after-head"])
def test_engine_stalling_mid_stream_is_cut_and_counted(router, engine, mode):
    name = 'fleetspec_router_upstream_errors_total{server="main",replica="0",kind="stalled"}'
    before = metric(router, name)
    with Client(router.port) as client:
        client.send(post(prompt(f"mode:{mode}")))
        started = time.monotonic()
        with pytest.raises(EOFError):
            client.answer()
        assert 0.8 < time.monotonic() - started < 3.0  # --upstream-idle-s 1
    assert metric(router, name) == before + 1


def test_engine_that_never_answers_is_504(router, engine):
    with Client(router.port) as client:
        started = time.monotonic()
        client.send(post(prompt("mode:silent")))
        answer = client.answer()
        assert answer.status == 504 and time.monotonic() - started < 3.0  # --upstream-first-byte-s 1
    assert len(engine.proxied()) == 1


def test_engine_interim_answers_are_skipped(router, engine):
    with Client(router.port) as client:
        client.send(post(prompt("mode:interim")))
        answer = client.answer()
        assert b"103" not in answer.raw_head and b"Link" not in answer.raw_head
        assert answer.status == 200 and json.loads(answer.body)["choices"][0]["text"] == "ok"
        assert client.buffer == b""  # one answer only, the interim ones were not passed on after it


def test_engine_switching_protocols_unasked_is_502(router, engine):
    with Client(router.port) as client:
        client.send(post(prompt("mode:101")))
        answer = client.answer()
    assert answer.status == 502 and b"Upgrade" not in answer.raw_head and b"RAW" not in answer.body
    assert len(engine.proxied()) == 1


def test_engine_closing_before_its_declared_length_is_502(router, engine):
    with Client(router.port) as client:
        client.send(post(prompt("mode:short-body")))
        answer = client.answer()  # the body had not reached the client: it gets a clean error instead
        assert answer.status == 502 and b'{"id": 1' not in answer.body
        client.send(post())  # and the connection serves on
        assert client.answer().status == 200
    assert len(engine.proxied()) == 2


def test_engine_breaking_chunked_framing_mid_stream_cuts_and_counts(router, engine):
    name = 'fleetspec_router_upstream_errors_total{server="main",replica="0",kind="broken-body"}'
    before = metric(router, name)
    with Client(router.port) as client:
        client.send(post(prompt("mode:bad-chunk")))
        with pytest.raises(EOFError):
            client.answer()  # the client's chunked stream ends without its last chunk: it sees the failure
    assert metric(router, name) == before + 1


def test_engine_answer_head_over_the_limit_is_502(router, engine):
    with Client(router.port) as client:
        client.send(post(prompt("mode:huge-head")))
        answer = client.answer()
    assert answer.status == 502 and b"X-Big" not in answer.raw_head


def test_bytes_an_engine_sends_past_its_answer_never_answer_the_next_request(router, engine):
    with Client(router.port) as client:
        client.send(post(prompt("mode:over-send")))
        assert json.loads(client.answer().body)["choices"][0]["text"] == "ok"
        for _ in range(3):  # a pooled connection holding the extra answer would give it to one of these
            client.send(post())
            answer = client.answer()
            assert answer.status == 200 and json.loads(answer.body)["choices"][0]["text"] == "ok"
    assert len(engine.proxied()) == 4


def test_engine_that_stops_reading_the_request_is_504(router, engine, tmp_path):
    """The kernel takes a few MiB for a peer that does not read, so the body is larger than that
    (and than the shared router's caps): the router's write must wait, and give up in time."""
    big = [
        *ROUTER_LIMITS,
        "--max-body-bytes",
        str(16 * 1024 * 1024),
        "--max-inflight-body-bytes",
        str(32 * 1024 * 1024),
    ]
    body = json.dumps({"model": "auto", "prompt": "x" * (12 * 1024 * 1024)}).encode()
    with running_router(engine, tmp_path, big) as alone:
        with Client(alone.port) as client:
            client.send(post(body, b"X-Engine: no-read"))
            started = time.monotonic()  # from the last byte sent: the router reads it within ms
            answer = client.answer()
            assert answer.status == 504 and time.monotonic() - started < 3.0  # --upstream-first-byte-s 1
        assert "did not read the request" in json.loads(answer.body)["error"]["message"]
        assert [s.header("x-engine") for s in engine.proxied()] == [["no-read"]]
        assert alone.proc.poll() is None and "Traceback" not in alone.log.read_text()


def test_engine_connect_timeout_is_bounded():
    """An engine whose accept queue is full never completes the handshake: the connection attempt
    gives up after connect_timeout instead of hanging the request."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port = listener.getsockname()[1]
    filling = []
    try:
        for _ in range(16):  # the kernel completes a few handshakes for the queue, then drops SYNs
            sock = socket.socket()
            sock.settimeout(0.3)
            filling.append(sock)
            try:
                sock.connect(("127.0.0.1", port))
            except TimeoutError:
                break
        else:
            pytest.fail("the accept queue never filled")

        async def run():
            pool = httpio.Pool(connect_timeout=0.5)
            started = time.monotonic()
            with pytest.raises(TimeoutError):
                await pool.acquire(("127.0.0.1", port))
            assert 0.4 < time.monotonic() - started < 2.0

        asyncio.run(run())
    finally:
        for sock in filling:
            sock.close()
        listener.close()


def test_post_is_not_sent_twice_when_a_reused_connection_dies(router, engine):
    with Client(router.port) as client:
        client.send(post())  # leaves a pooled connection to the engine
        assert client.answer().status == 200
        client.send(
            post(prompt("mode:close"))
        )  # goes out on that connection; the engine closes it unanswered
        assert client.answer().status == 502
    assert [json.loads(s.body)["prompt"] for s in engine.proxied()] == ["hello", "mode:close"]


def test_garbled_engine_answer_is_502(router, engine):
    with Client(router.port) as client:
        client.send(post(prompt("mode:bad-header")))
        answer = client.answer()
    assert answer.status == 502 and "X-A" not in answer.raw_head.decode("latin-1")


def test_client_that_stops_reading_is_dropped_after_the_write_timeout(router, engine):
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.settimeout(5)
    sock.connect(("127.0.0.1", router.port))
    client = Client.__new__(Client)
    client.sock, client.buffer = sock, b""
    with client:
        client.send(post(prompt("mode:flood-stream")))
        started = time.monotonic()
        # It reads nothing: the router's write waits --write-timeout-s 2, then it gives up the client
        # and, with it, the engine's stream.
        assert engine.client_gone.wait(10), "the router held an engine stream for a client that reads nothing"
        assert 1.5 < time.monotonic() - started < 10
        assert client.closed_within(10)


def test_client_closing_mid_stream_closes_the_engine_stream(router, engine):
    with Client(router.port) as client:
        client.send(post(prompt("mode:slow-stream")))
        client.sock.settimeout(3)
        assert client._line().startswith(b"HTTP/1.1 200")
    assert engine.client_gone.wait(3), "the router kept reading a stream nobody wanted"


# -- time and memory bounds --------------------------------------------------------------------------


def test_slow_head_gets_408_after_the_header_timeout(router, engine):
    with Client(router.port) as client:
        started = time.monotonic()
        client.send(b"POST /v1/completions HTTP/1.1\r\nHost: r\r\n")
        answer = client.answer()
        assert answer.status == 408 and 0.9 < time.monotonic() - started < 3.0
        assert client.closed_within(3)
    assert engine.proxied() == []


def test_slow_body_gets_408_after_the_body_timeout(router, engine):
    with Client(router.port) as client:
        started = time.monotonic()
        client.send(
            request(b"POST /v1/completions HTTP/1.1", b"Host: r", b"Content-Length: 100", body=b'{"a')
        )
        answer = client.answer()
        assert answer.status == 408 and 0.9 < time.monotonic() - started < 3.0
    assert engine.proxied() == []


def test_idle_connections_are_closed(router, engine):
    clients = [Client(router.port) for _ in range(40)]
    try:
        clients[0].send(post())
        assert clients[0].answer().status == 200  # idle after one answer, too
        deadline = time.monotonic() + 4.5  # --idle-timeout-s 2
        assert all(c.closed_within(max(0.1, deadline - time.monotonic())) for c in clients)
    finally:
        for c in clients:
            c.sock.close()


def test_connections_beyond_the_cap_get_503(router, engine):
    wait_until(
        lambda: metric(router, "fleetspec_router_client_connections") == 1, 5, "earlier connections to close"
    )
    held = [Client(router.port) for _ in range(63)]
    try:  # 63 held and the metrics request make 64; the router serves them in the order they connected
        wait_until(
            lambda: metric(router, "fleetspec_router_client_connections") == 64,
            5,
            "the router to count the held connections",
        )
        held.append(Client(router.port))
        with Client(router.port) as extra:
            extra.send(post())  # whatever it sends is never read as a request
            answer = extra.answer()
            assert answer.status == 503 and answer.headers["retry-after"] == "1"
            assert answer.headers.get("connection") == "close" and extra.closed_within(3)
    finally:
        for c in held:
            c.sock.close()
    assert engine.proxied() == []
    wait_until(
        lambda: metric(router, "fleetspec_router_client_connections") == 1, 5, "the held connections to close"
    )


def test_chunked_bodies_count_against_the_in_flight_budget(router, engine):
    size = 1000 * 1000  # each chunk is reserved when it is announced, before its data arrives
    holders = [Client(router.port) for _ in range(3)]
    try:
        for c in holders:
            c.send(chunked(b"%x\r\n{" % size))
        wait_until(
            lambda: metric(router, "fleetspec_router_inflight_body_bytes") == 3 * size,
            5,
            "the holders' chunks to be reserved",
        )
        with Client(router.port) as extra:
            extra.send(chunked(b"%x\r\n{" % size))
            answer = extra.answer()
            assert answer.status == 503 and answer.headers["retry-after"] == "1"
            assert extra.closed_within(3)
    finally:
        for c in holders:
            c.sock.close()
    assert engine.proxied() == []
    wait_until(
        lambda: metric(router, "fleetspec_router_inflight_body_bytes") == 0,
        5,
        "the reservations to be given back",
    )


def test_in_flight_body_budget_gives_503_and_is_given_back(router, engine):
    size = 1000 * 1000  # under the 1 MiB cap; three of them fill the 3 MiB budget
    holders = [Client(router.port) for _ in range(3)]
    try:
        for c in holders:
            c.send(
                request(b"POST /v1/completions HTTP/1.1", b"Host: r", b"Content-Length: %d" % size, body=b"{")
            )
        wait_until(
            lambda: metric(router, "fleetspec_router_inflight_body_bytes") == 3 * size,
            5,
            "the holders' bodies to be reserved",
        )
        with Client(router.port) as extra:
            extra.send(request(b"POST /v1/completions HTTP/1.1", b"Host: r", b"Content-Length: %d" % size))
            answer = extra.answer()
        assert answer.status == 503 and answer.headers["retry-after"] == "1"
    finally:
        for c in holders:
            c.sock.close()
    assert engine.proxied() == []
    body = json.dumps({"model": "auto", "prompt": "y" * (size - 100)}).encode()
    with Client(router.port) as client:  # every held byte was given back: a body of the same size passes
        client.send(post(body))
        assert client.answer().status == 200
