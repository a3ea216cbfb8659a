"""The router's fast path (router/fastpath.py) against its coroutine path: the same requests, sent
with raw sockets to two routers in front of one scripted engine, one router with the fast path and
one with FLEETSPEC_ROUTER_FAST_PATH=off, must get the same answers, and the engine must receive the
same bytes from both. The fast path must also really answer the ordinary request (counted in
fleetspec_router_fast_path_total), and hand everything else over, saying why.

The protocol suite (test_router_protocol.py) runs every hostile case against the router as it ships,
fast path on; this file checks that switching it on changes nothing a client or an engine can see.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import socket
import time

import pytest
from netkit import get
from scripted_engine import ScriptedEngine
from test_router_protocol import BODY, ROUTER_LIMITS, Client, post, prompt, request, running_router

# Headers that differ between any two answers whatever path gave them.
VOLATILE = {"date"}


@pytest.fixture(scope="module")
def engine():
    with contextlib.closing(ScriptedEngine()) as scripted:
        yield scripted


@pytest.fixture(scope="module")
def routers(engine, tmp_path_factory):
    os.environ["FLEETSPEC_ROUTER_FAST_PATH"] = "off"
    try:
        with running_router(engine, tmp_path_factory.mktemp("coroutines"), ROUTER_LIMITS) as coroutines:
            os.environ.pop("FLEETSPEC_ROUTER_FAST_PATH")
            with running_router(engine, tmp_path_factory.mktemp("fast"), ROUTER_LIMITS) as fast:
                yield fast, coroutines
    finally:
        os.environ.pop("FLEETSPEC_ROUTER_FAST_PATH", None)


def fast_path_counts(router) -> dict[str, float]:
    status, body = get(f"http://127.0.0.1:{router.port}/metrics")
    assert status == 200
    return {m.group(1): float(m.group(2)) for m in
            re.finditer(r'^fleetspec_router_fast_path_total\{outcome="([^"]+)"\} (\S+)$', body.decode(), re.M)}


def exchange(router, engine, pieces: list[bytes], answers: int, pause_s: float = 0.0) -> tuple[list, list]:
    """Send `pieces` on one connection (pausing between them), read `answers` answers; the answers
    (status, headers without the volatile ones, body) and what the engine received (head, body)."""
    engine.forget()
    got = []
    with Client(router.port) as client:
        for piece in pieces:
            client.send(piece)
            if pause_s:
                time.sleep(pause_s)
        for _ in range(answers):
            answer = client.answer()
            headers = {k: v for k, v in answer.headers.items() if k not in VOLATILE}
            got.append((answer.status, headers, answer.body))
    seen = [(s.method, s.path, s.head, s.body) for s in engine.proxied()]
    return got, seen


SPLIT = {"a head split over two writes", "a body still to come"}
SAME_ANSWERS = {
    "an ordinary completion": ([post()], 1),
    "an ordinary chat completion": (
        [post(json.dumps({"model": "auto", "messages": [{"role": "user", "content": "hi"}]}).encode(),
              target=b"/v1/chat/completions")], 1),
    "three in a row on one connection": ([post(), post(), post()], 3),
    "pipelined: two requests in one write": ([post() + post()], 2),
    "a head split over two writes": ([post()[:20], post()[20:]], 1),
    "a body still to come": ([post()[:-5], post()[-5:]], 1),
    "HTTP/1.0 keep-alive": ([post(BODY, b"Connection: keep-alive", version=b"HTTP/1.0")], 1),
    "Expect: 100-continue": ([post(BODY, b"Expect: 100-continue")], 1),
    "a chunked body": ([request(b"POST /v1/completions HTTP/1.1", b"Host: r", b"Transfer-Encoding: chunked",
                                body=b"%x\r\n%s\r\n0\r\n\r\n" % (len(BODY), BODY))], 1),
    "not JSON": ([post(b"{not json")], 1),
    "a JSON array": ([post(b"[1, 2]")], 1),
    "an unknown model": ([post(json.dumps({"model": "nobody", "prompt": "x"}).encode())], 1),
    "a streamed answer": ([post(prompt("mode:stream"))], 1),
    "an engine answer of 204": ([post(prompt("mode:204"))], 1),
    "an engine that switches protocols": ([post(prompt("mode:101"))], 1),
    "an interim 100 before the answer": ([post(prompt("mode:interim"))], 1),
    "an engine answer head over the limit": ([post(prompt("mode:huge-head"))], 1),
    "an engine that closes without answering": ([post(prompt("mode:close"))], 1),
    "an engine that sends a short body": ([post(prompt("mode:short-body"))], 1),
    "an engine that sends more than it declares": ([post(prompt("mode:over-send")), post()], 2),
    "an engine that never answers": ([post(prompt("mode:silent"))], 1),
    "an engine that stalls in the middle of a body": ([post(prompt("mode:stall-body"))], 1),
}


@pytest.mark.parametrize("case", SAME_ANSWERS, ids=list(SAME_ANSWERS))
def test_both_paths_answer_alike_and_send_the_engine_the_same(routers, engine, case):
    pieces, answers = SAME_ANSWERS[case]
    fast, coroutines = routers
    pause = 0.05 if case in SPLIT else 0.0  # so that the router reads the pieces apart
    expected = exchange(coroutines, engine, pieces, answers, pause)
    assert exchange(fast, engine, pieces, answers, pause) == expected


def test_the_ordinary_request_is_answered_by_the_fast_path(routers):
    fast, _ = routers
    before = fast_path_counts(fast).get("answered", 0)
    with Client(fast.port) as client:
        for _ in range(5):
            client.send(post())
            assert client.answer().status == 200
    # The first request of a connection may find no idle engine connection yet; the others must not.
    assert fast_path_counts(fast).get("answered", 0) - before >= 4


def test_hand_overs_say_why(routers):
    fast, _ = routers
    before = fast_path_counts(fast)
    with Client(fast.port) as client:
        client.send(post(b"[1, 2]"))  # not a JSON object: the coroutine path words the 400
        assert client.answer().status == 400
        client.send(post(prompt("mode:stream")))  # a chunked answer streams through the coroutine path
        assert client.answer().status == 200
        client.send(post())  # and the connection comes back to the fast path afterwards
        assert client.answer().status == 200
    after = fast_path_counts(fast)
    for outcome in ("unusual-request", "unusual-answer", "answered"):
        assert after.get(outcome, 0) - before.get(outcome, 0) >= 1, (outcome, before, after)


def test_the_coroutine_path_switch_leaves_the_fast_path_unused(routers):
    _, coroutines = routers
    with Client(coroutines.port) as client:
        client.send(post())
        assert client.answer().status == 200
    assert fast_path_counts(coroutines) == {}


def test_an_idle_connection_is_closed_after_the_idle_timeout(routers):
    fast, _ = routers
    idle_s = float(ROUTER_LIMITS[ROUTER_LIMITS.index("--idle-timeout-s") + 1])
    with Client(fast.port) as client:
        client.send(post())
        assert client.answer().status == 200
        started = time.monotonic()
        assert client.closed_within(idle_s + 3)
        assert time.monotonic() - started >= idle_s - 0.5


def test_a_client_that_leaves_mid_request_costs_nothing(routers, engine):
    fast, _ = routers
    sock = socket.create_connection(("127.0.0.1", fast.port))
    sock.sendall(post(prompt("mode:silent")))
    sock.close()  # the engine never answers; the exchange ends at --upstream-first-byte-s
    with Client(fast.port) as client:
        client.send(post())
        assert client.answer().status == 200
    deadline = time.monotonic() + 10
    while open_connections(fast) > 1:  # only the connection asking is left
        assert time.monotonic() < deadline, "a client connection stayed counted after the client left"
        time.sleep(0.05)


def open_connections(router) -> float:
    status, body = get(f"http://127.0.0.1:{router.port}/metrics")
    assert status == 200
    return float(re.search(rb"^fleetspec_router_client_connections (\S+)$", body, re.M).group(1))


def test_a_body_that_stalls_is_cut_after_the_idle_limit_not_the_first_byte_limit(routers):
    fast, _ = routers
    idle_s = float(ROUTER_LIMITS[ROUTER_LIMITS.index("--upstream-idle-s") + 1])
    first_byte_s = float(ROUTER_LIMITS[ROUTER_LIMITS.index("--upstream-first-byte-s") + 1])
    with Client(fast.port) as client:
        started = time.monotonic()
        client.send(post(prompt("mode:stall-body")))
        answer = client.answer()
    took = time.monotonic() - started
    assert answer.status == 504, answer.body
    assert idle_s - 0.1 < took < idle_s + first_byte_s - 0.1, took  # one limit, not both in turn
