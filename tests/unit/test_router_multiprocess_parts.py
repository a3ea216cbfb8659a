"""The parts a multi-process router is made of, each on its own: the control channel, totals that
add up across processes, and limits that stay totals when shared."""

from __future__ import annotations

import argparse
import asyncio
import socket

import pytest

from fleetspec.router import admin, control, httplimits, metrics
from fleetspec.routing import table


def run(coro):
    return asyncio.run(coro)


async def pair() -> tuple[control.Channel, control.Channel]:
    a, b = socket.socketpair()
    return await control.Channel.over(a), await control.Channel.over(b)


def test_messages_arrive_in_order_and_a_reply_finds_its_question():
    async def scenario():
        left, right = await pair()

        async def answer():
            seen = []
            while True:
                message = await right.receive()
                seen.append(message["op"])
                if message["op"] == "ping":
                    right.reply(message, {"seen": list(seen)})
                    await right.drain()

        task = asyncio.create_task(answer())
        reading = asyncio.create_task(left.receive())  # replies reach `ask` through the asker's reader
        for i in range(50):
            left.send({"op": f"change-{i}"})
        body = await left.ask({"op": "ping"}, timeout=5)
        task.cancel()
        reading.cancel()
        left.close()
        right.close()
        return body

    seen = run(scenario())["seen"]
    # The ping's answer proves every change sent before it was handled first: the coordinator's barrier.
    assert seen == [f"change-{i}" for i in range(50)] + ["ping"]


def test_a_closed_channel_fails_whoever_waits_instead_of_hanging():
    async def scenario():
        left, right = await pair()
        receiving = asyncio.create_task(left.receive())
        asking = asyncio.create_task(left.ask({"op": "report"}, timeout=30))
        await asyncio.sleep(0)
        right.close()
        with pytest.raises(control.ChannelClosed):
            await receiving
        with pytest.raises(control.ChannelClosed):
            await asking
        left.close()

    run(scenario())


def test_an_unanswered_question_times_out():
    async def scenario():
        left, right = await pair()
        with pytest.raises(TimeoutError):
            await left.ask({"op": "ping"}, timeout=0.05)
        left.close()
        right.close()

    run(scenario())


def test_a_frame_claiming_more_than_the_cap_closes_the_channel():
    async def scenario():
        a, b = socket.socketpair()
        channel = await control.Channel.over(a)
        b.sendall((control.MAX_MESSAGE_BYTES + 1).to_bytes(4, "big"))
        with pytest.raises(control.ChannelClosed):
            await channel.receive()
        channel.close()
        b.close()

    run(scenario())


def test_metrics_of_two_processes_add_up_to_one_total():
    one, two = metrics.RouterMetrics(), metrics.RouterMetrics()
    one.requests.inc("python", "1.0.0", "200")
    two.requests.inc("python", "1.0.0", "200")
    two.requests.inc("sql", "1.0.0", "503")
    one.decisions.observe(0.00002)
    two.decisions.observe(0.00004)
    two.connections.set(value=3)
    total = metrics.RouterMetrics()
    for part in (one, two):
        total.absorb(part.snapshot(metrics.SERVING_FAMILIES))
    text = total.render()
    assert 'fleetspec_router_requests_total{specialist="python",version="1.0.0",code="200"} 2' in text
    assert 'fleetspec_router_requests_total{specialist="sql",version="1.0.0",code="503"} 1' in text
    assert total.decisions.series[()][-1] == 2  # both observations, in one histogram
    assert "fleetspec_router_client_connections 3" in text.replace(".0\n", "\n")


def test_ensemble_stats_of_two_processes_add_up():
    a, b = admin.Stats(), admin.Stats()
    a.record(table.Decision(specialist="python", version="1.0.0", served_name="python--1.0.0", rule="r"))
    b.record(table.Decision(specialist=None, version=None, served_name="base", rule=None,
                            fallback_reason="no-match"))
    total = admin.Stats()
    total.absorb(a.snapshot())
    total.absorb(b.snapshot())
    out = total.to_json()
    assert out["requests"] == 2 and out["routed"] == {"python@1.0.0": 1} and out["fallbacks"] == {"no-match": 1}
    assert out["miss_rate"] == 0.5


def test_limits_shared_by_processes_stay_totals():
    limits = httplimits.Limits(max_connections=1000, max_inflight_body_bytes=256 << 20, max_body_bytes=64 << 20)
    share = limits.per_process(3)
    assert share.max_connections == 334  # 3 × 334 ≥ 1000: the operator's total, rounded up
    assert share.max_inflight_body_bytes == -(-(256 << 20) // 3)
    assert share.idle_timeout_s == limits.idle_timeout_s and share.max_body_bytes == limits.max_body_bytes
    # Each process can still take one largest body: a share below it would refuse one request alone.
    assert limits.per_process(16).max_inflight_body_bytes == 64 << 20


def test_limits_survive_the_trip_through_serve_options():
    limits = httplimits.Limits(max_connections=77, idle_timeout_s=2.5)
    parser = argparse.ArgumentParser()
    httplimits.Limits.add_arguments(parser)
    assert httplimits.Limits.from_arguments(parser.parse_args(limits.arguments())) == limits
