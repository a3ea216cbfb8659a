"""Replica choice (residency: LoRA affinity, on-demand loads, draining, spill) and prompt
extraction: the proxy's pure decisions."""

from __future__ import annotations

import asyncio
import dataclasses
import socket

import pytest

from fleetspec.router import httpio, openai, residency, upstreams
from fleetspec.routing import config


def pool(*specs) -> upstreams.Upstreams:
    """specs: (server, healthy, models, inflight) per replica on consecutive ports."""
    ups = upstreams.Upstreams(httpio.Pool())
    ups.configure([config.Upstream(s[0], i, f"http://127.0.0.1:{9000 + i}") for i, s in enumerate(specs)])
    for replica, (_, healthy, models, inflight) in zip(ups.replicas.values(), specs, strict=True):
        replica.healthy, replica.models, replica.inflight = healthy, frozenset(models), inflight
    return ups


def port(choice) -> int | None:
    return None if choice.replica is None else choice.replica.address[1]


def test_prefers_a_healthy_replica_that_holds_the_adapter():
    ups = pool(("a", True, [], 0), ("a", False, ["x"], 0), ("a", True, ["x"], 5))
    assert port(ups.choose("x", frozenset({"a"}))) == 9002


def test_least_busy_among_holders_then_round_robin():
    ups = pool(("a", True, ["x"], 3), ("a", True, ["x"], 1), ("a", True, ["x"], 1))
    assert [port(ups.choose("x", frozenset({"a"}))) for _ in range(4)] == [9001, 9002, 9001, 9002]


def test_only_hosting_servers_and_not_excluded():
    ups = pool(("a", True, ["x"], 0), ("b", True, ["x"], 0), ("b", True, ["x"], 0))
    first = ups.choose("x", frozenset({"b"}))
    assert port(first) == 9001
    assert port(ups.choose("x", frozenset({"b"}), exclude=[first.replica])) == 9002
    assert port(ups.choose("x", frozenset({"c"}))) is None


def test_an_adapter_never_goes_to_a_replica_that_does_not_list_it():
    """The 404 of issue 13: with no holder the old router sent the request to any healthy replica."""
    ups = pool(("a", True, [], 0), ("a", True, [], 0))
    assert ups.choose("x", frozenset({"a"})) == residency.NOTHING


def test_with_no_holder_the_least_busy_replica_that_may_load_it_is_asked_to():
    ups = pool(("a", True, [], 4), ("a", True, [], 1), ("a", True, [], 0))
    last = list(ups.replicas.values())[2]
    choice = ups.choose("x", frozenset({"a"}), may_load=lambda r: r is not last)
    assert (port(choice), choice.load) == (9001, True)


def test_the_base_model_goes_to_any_healthy_replica():
    ups = pool(("a", True, [], 2), ("b", True, [], 0))
    assert port(ups.choose("base", frozenset({"a", "b"}), adapter=False)) == 9001


def test_unchecked_replicas_are_used_only_when_none_is_known_healthy():
    assert port(pool(("a", None, [], 0), ("a", False, [], 0)).choose("b", frozenset({"a"}), adapter=False)) == 9000
    assert port(pool(("a", False, [], 0)).choose("b", frozenset({"a"}), adapter=False)) is None


def draining_pool(*specs) -> upstreams.Upstreams:
    """specs: (draining, models, inflight) per replica of server a, all healthy."""
    ups = pool(*(("a", True, models, inflight) for _, models, inflight in specs))
    for replica, (draining, _, _) in zip(ups.replicas.values(), specs, strict=True):
        replica.upstream = dataclasses.replace(replica.upstream, draining=draining)
    return ups


def test_a_draining_replica_is_chosen_only_when_nothing_else_can_serve():
    assert port(draining_pool((True, ["x"], 0), (False, ["x"], 9)).choose("x", frozenset({"a"}))) == 9001
    # the only holder drains: load onto the other replica rather than hold up the replacement ...
    choice = draining_pool((True, ["x"], 0), (False, [], 0)).choose("x", frozenset({"a"}), may_load=lambda r: True)
    assert (port(choice), choice.load) == (9001, True)
    # ... unless it cannot load it: then the draining holder still beats a 404
    assert port(draining_pool((True, ["x"], 0), (False, [], 0)).choose("x", frozenset({"a"}))) == 9000
    assert port(draining_pool((True, [], 0), (False, [], 3)).choose("b", frozenset({"a"}), adapter=False)) == 9001


def test_spill_loads_onto_another_replica_only_when_every_holder_is_busy():
    spill = residency.Policy("spill", spill_inflight=2)
    ups = pool(("a", True, ["x"], 2), ("a", True, [], 0))
    choice = ups.choose("x", frozenset({"a"}), may_load=lambda r: True, policy=spill)
    assert (port(choice), choice.load) == (9001, True)
    assert port(ups.choose("x", frozenset({"a"}), may_load=lambda r: True)) == 9000  # strict stays put
    calm = pool(("a", True, ["x"], 1), ("a", True, [], 0))
    assert port(calm.choose("x", frozenset({"a"}), may_load=lambda r: True, policy=spill)) == 9000


def test_unserved_names_promised_specialists_that_no_healthy_replica_lists():
    ups = pool(("a", True, ["x"], 0), ("a", False, ["y"], 0), ("b", True, ["y"], 0))
    wanted = [("sx", "x", frozenset({"a"})), ("sy", "y", frozenset({"a"})), ("sz", "z", frozenset({"a", "b"}))]
    assert residency.unserved(ups.replicas.values(), wanted) == ["sy", "sz"]


def test_reconfigure_keeps_what_is_known_about_a_replica():
    ups = pool(("a", True, ["x"], 0))
    ups.configure([config.Upstream("a", 0, "http://127.0.0.1:9000"), config.Upstream("a", 1, "http://127.0.0.1:9001")])
    known, fresh = ups.replicas.values()
    assert (known.healthy, known.models) == (True, frozenset({"x"}))
    assert fresh.healthy is None


PROMPTS = {
    "completion string": ({"prompt": "hi"}, False, "hi"),
    "completion list": ({"prompt": ["a", "b"]}, False, "a\nb"),
    "completion token ids": ({"prompt": [1, 2, 3]}, False, ""),
    "chat user turns only": ({"messages": [{"role": "system", "content": "sys"}, {"role": "user", "content": "q1"},
                                           {"role": "assistant", "content": "a"}, {"role": "user", "content": "q2"}]},
                             True, "q1\nq2"),
    "chat content parts": ({"messages": [{"role": "user", "content": [{"type": "text", "text": "look"},
                                                                      {"type": "image_url", "image_url": {}}]}]},
                           True, "look"),
    "chat without user turns": ({"messages": [{"role": "system", "content": "only"}]}, True, "only"),
}


@pytest.mark.parametrize("body, chat, expected", PROMPTS.values(), ids=PROMPTS.keys())
def test_prompt_text(body, chat, expected):
    assert openai.prompt_text(body, chat) == expected


def test_the_pool_never_reuses_a_connection_the_engine_is_about_to_close():
    """vLLM's uvicorn closes idle keep-alive connections after 5 s; a request written into one just
    then gets no answer. The pool drops connections idle for MAX_IDLE_REUSE_S instead."""
    import asyncio

    from fleetspec.router import httpio

    async def scenario() -> tuple[bool, bool]:
        server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
        address = server.sockets[0].getsockname()[:2]
        pool = httpio.Pool(max_idle_reuse_s=60.0)
        first = await pool.acquire(address)
        pool.release(first)
        reused_fresh = (await pool.acquire(address)) is first
        pool.release(first)
        first.idle_since -= 61.0  # as if it had sat idle past the limit
        replacement = await pool.acquire(address)
        reused_stale = replacement is first
        replacement.close()
        pool.close()
        server.close()
        await server.wait_closed()
        return reused_fresh, reused_stale

    assert asyncio.run(scenario()) == (True, False)
    assert httpio.MAX_IDLE_REUSE_S < 5.0  # below uvicorn's default timeout_keep_alive


def _replica_at(port: int, timeout: float = 0.2) -> tuple[upstreams.Upstreams, upstreams.Replica]:
    ups = upstreams.Upstreams(httpio.Pool(connect_timeout=timeout), timeout=timeout)
    ups.configure([config.Upstream("a", 0, f"http://127.0.0.1:{port}")])
    replica = next(iter(ups.replicas.values()))
    replica.healthy = True
    return ups, replica


def test_one_late_health_check_keeps_a_serving_replica_the_second_takes_it_out():
    async def scenario():
        async def silent(reader, writer):
            await reader.read(65536)  # takes the request and never answers it
            await asyncio.sleep(5)
            writer.close()

        server = await asyncio.start_server(silent, "127.0.0.1", 0)
        ups, replica = _replica_at(server.sockets[0].getsockname()[1])
        try:
            await ups.check(replica)
            assert (replica.healthy, replica.slow_checks) == (True, 1)
            await ups.check(replica)
            assert replica.healthy is False and "0.2 s" in replica.last_error
        finally:
            server.close()
            ups.pool.close()

    asyncio.run(scenario())


def test_a_refused_health_check_takes_a_replica_out_at_once():
    async def scenario():
        with socket.socket() as unused:
            unused.bind(("127.0.0.1", 0))
            free = unused.getsockname()[1]  # bound and not listening: connections are refused
            ups, replica = _replica_at(free)
            await ups.check(replica)
        assert replica.healthy is False and "Refused" in replica.last_error

    asyncio.run(scenario())
