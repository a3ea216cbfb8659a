"""Router replicas sharing runtime cluster mappings through a real redis-server (not a fake).

A sim engine holds both adapters; two (sometimes three) router processes sit in front of it and
follow one Redis, started here on a free port without persistence and with a password, which the
routers read from their environment through `${VAR}` in runtime.router.redis_url.

The prompt "what is the weather like" falls in cluster c7 of 10, which fleet.yaml leaves unmapped:
routed there means a runtime mapping is in effect.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import textwrap

import httpx
import pytest
import require
import test_router_proxy as proxy  # the sim and router helpers of the proxy tests
import yaml

from fleetspec.router import resp, runtime_state
from fleetspec.routing import redis_url
from fleetspec.spec import models

PASSWORD = "p@ss:w/rd 7"  # URL-hostile on purpose: it goes through ${VAR} percent-encoded
PROMPT = "what is the weather like"  # sha1 mod 10 = 7: cluster c7

FLEET = textwrap.dedent("""\
    name: shared
    base_model: {id: fleetspec/tiny-test-llama, max_model_len: 2048}
    gpus: [{type: sim, count: 1}]
    servers:
      - name: main
        gpu_memory_utilization: 0.45
        lora: {max_loras: 2, max_cpu_loras: 4, max_lora_rank: 8}
    specialists:
      - {name: python, version: 1.0.0, path: ADAPTERS/python/1.0.0, keywords: [pytest]}
      - {name: sql, version: 1.0.0, path: ADAPTERS/sql/1.0.0, keywords: [postgres]}
    routing:
      rules:
        - {name: signals, specialist_signals: true}
        - name: ensemble
          hash_clusters: {num_clusters: 10, prefix: c, map: {c1: python}}
    runtime:
      router:
        admin_token: "${ITEST_ROUTER_TOKEN}"
        redis_url: "redis://:${ITEST_REDIS_PASSWORD}@127.0.0.1:PORT/3"
    """)


class RedisServer:
    """redis-server on loopback, no persistence: a restart comes back empty, as a lost Redis would."""

    def __init__(self, binary: str, port: int, log):
        self.binary, self.port, self.log = binary, port, log
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        argv = [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                "--requirepass", PASSWORD, "--protected-mode", "no"]
        self.proc = subprocess.Popen(argv, stdout=self.log, stderr=subprocess.STDOUT)
        proxy.wait_for(self.answers, timeout=15, what=f"redis-server PONG on port {self.port}")

    def answers(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"redis-server exited with {self.proc.returncode}; see its log")
        try:
            return run(self.call("PING")) == "PONG"
        except (resp.Unavailable, resp.RedisError):
            return False

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)

    async def call(self, *args):
        conn = await resp.Connection.open(redis_url.Address("127.0.0.1", self.port, 3, password=PASSWORD), 2.0)
        try:
            return await conn.call(*args)
        finally:
            conn.close()


def run(coro):
    return asyncio.run(coro)


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory):
    binary = shutil.which("redis-server")
    if binary is None:
        require.unavailable("REDIS", "redis-server is not installed (Debian package redis-server; .ci/run installs it)")
    log = (tmp_path_factory.mktemp("redis") / "redis.log").open("wb")
    server = RedisServer(binary, proxy.free_port(), log)
    server.start()
    try:
        yield server
    finally:
        server.stop()
        log.close()


def start_router(started: list, config_path, port: int, log, wait_healthy_state: bool = True) -> str:
    env = {**os.environ, "ITEST_ROUTER_TOKEN": proxy.TOKEN, "ITEST_REDIS_PASSWORD": PASSWORD}
    argv = [sys.executable, "-m", "fleetspec.router", "serve", "--config", str(config_path), "--port", str(port)]
    started.append(subprocess.Popen(argv, env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT))
    url = f"http://127.0.0.1:{port}"

    def ready():
        health = httpx.get(url + "/health", timeout=1).json()
        return health["healthy_upstreams"] == 1 and (health["runtime_state"]["healthy"] or not wait_healthy_state)

    proxy.wait_for(ready, what=f"router on {port}")
    return url


def routed_to(router: str) -> str | None:
    return proxy.complete(router, PROMPT).headers.get("x-fleetspec-specialist")


@pytest.fixture(scope="module")
def fleet(tmp_path_factory, redis_server):
    work = tmp_path_factory.mktemp("router-redis")
    adapters = work / "adapters"
    shutil.copytree(proxy.ROOT / "adapters", adapters)
    text = FLEET.replace("ADAPTERS", str(adapters)).replace("PORT", str(redis_server.port))
    spec = models.FleetSpec.model_validate(yaml.safe_load(text))
    with proxy.processes() as started:
        sim = proxy.start_sim(started, proxy.free_port(), [f"python--1.0.0={adapters}/python/1.0.0",
                                               f"sql--1.0.0={adapters}/sql/1.0.0"], work / "sim.log")
        config_path = work / "router.json"
        proxy.write_config(config_path, spec, [sim])
        routers = [start_router(started, config_path, proxy.free_port(), work / f"router{i}.log") for i in range(2)]
        yield type("Fleet", (), {"routers": routers, "sim": sim, "config_path": config_path, "work": work,
                                 "started": started, "redis": redis_server})


@pytest.fixture
def shared(fleet):
    """The fleet, from no runtime mappings, seen so by both routers."""
    run(fleet.redis.call("DEL", "fleetspec:shared:router:clusters"))
    for router in fleet.routers:
        proxy.wait_for(lambda r=router: routed_to(r) is None, timeout=5, what="an empty map")
    return fleet


def test_a_mapping_set_through_either_router_reaches_the_other(shared):
    a, b = shared.routers
    assert routed_to(a) is None and routed_to(b) is None  # c7 is unmapped in fleet.yaml
    assert proxy.admin(a, "POST", "/admin/ensemble", data={"cluster_id": "c7", "adapter_tag": "sql"}).status_code == 200
    assert routed_to(a) == "sql"  # the writer sees its own write at once
    proxy.wait_for(lambda: routed_to(b) == "sql", timeout=5, what="router b to follow a")
    assert proxy.admin(b, "POST", "/admin/ensemble/bulk", json={"c7": "python", "c2": "sql"}).status_code == 200
    proxy.wait_for(lambda: routed_to(a) == "python", timeout=5, what="router a to follow b")
    state_a, state_b = (proxy.admin(r, "GET", "/admin/state").json() for r in (a, b))
    rows = [(c["cluster"], c["specialist"], c["declared"]) for c in state_a["clusters"]]
    assert rows == [("c2", "sql", None), ("c7", "python", None)]
    assert state_b["clusters"] == state_a["clusters"] and state_a["drift"] is True
    stored = run(shared.redis.call("HGETALL", "fleetspec:shared:router:clusters"))
    assert sorted(stored[::2]) == [b"1:c2", b"1:c7"]  # rule index 1 (`ensemble`), as documented


def test_clear_through_one_router_clears_both(shared):
    a, b = shared.routers
    proxy.admin(b, "POST", "/admin/ensemble", data={"cluster_id": "c7", "adapter_tag": "sql"})
    proxy.wait_for(lambda: routed_to(a) == "sql", timeout=5, what="router a to follow b")
    assert proxy.admin(a, "POST", "/admin/clusters/clear").json() == {"cleared": 1}
    proxy.wait_for(lambda: routed_to(b) is None, timeout=5, what="router b to drop the mapping")
    response = proxy.complete(b, PROMPT)
    assert response.headers["x-fleetspec-fallback"] == "cluster-unmapped"
    assert proxy.admin(b, "GET", "/admin/state").json()["clusters"] == []


def test_an_edit_made_with_redis_cli_is_picked_up_by_the_periodic_read(shared):
    """No PUBLISH: seed 000's runbook edits the hash directly. refresh_seconds is 0.2 here."""
    value = '{"changed_at": 0, "rule": "ensemble", "target": "python"}'
    run(shared.redis.call("HSET", "fleetspec:shared:router:clusters", "1:c7", value, "9:c3", "not json"))
    for router in shared.routers:
        proxy.wait_for(lambda r=router: routed_to(r) == "python", timeout=5, what="the periodic read")
    health = httpx.get(shared.routers[0] + "/health").json()["runtime_state"]
    assert (health["mappings"], health["malformed"]) == (1, 1)


def test_a_restarted_router_starts_with_the_shared_map(shared, tmp_path):
    proxy.admin(shared.routers[0], "POST", "/admin/ensemble", data={"cluster_id": "c7", "adapter_tag": "sql"})
    with proxy.processes() as started:
        fresh = start_router(started, shared.config_path, proxy.free_port(), tmp_path / "router.log")
        assert routed_to(fresh) == "sql"  # read before it served its first request


def test_redis_down_keeps_routing_with_the_last_map_and_says_so(shared, tmp_path):
    a, b = shared.routers
    proxy.admin(a, "POST", "/admin/ensemble", data={"cluster_id": "c7", "adapter_tag": "sql"})
    proxy.wait_for(lambda: routed_to(b) == "sql", timeout=5, what="router b to follow a")
    shared.redis.stop()
    try:
        for router in (a, b):
            proxy.wait_for(lambda r=router: not httpx.get(r + "/health").json()["runtime_state"]["healthy"], timeout=10,
                     what="the router to notice Redis is gone")
            health = httpx.get(router + "/health")
            assert health.status_code == 200 and health.json()["runtime_state"]["down_since"] is not None
            assert routed_to(router) == "sql"  # the last map read
            assert proxy.complete(router, "pytest fixtures").headers["x-fleetspec-specialist"] == "python"  # the spec
            assert proxy.complete(router, "plain question 3").headers["x-fleetspec-specialist"] == "python"  # c1: fleet.yaml
            metrics_text = httpx.get(router + "/metrics").text
            assert 'fleetspec_router_runtime_state_healthy{backend="redis"} 0' in metrics_text
            assert 'fleetspec_router_runtime_mappings{status="active"} 1' in metrics_text
        refused = proxy.admin(a, "POST", "/admin/ensemble", data={"cluster_id": "c7", "adapter_tag": "python"})
        assert refused.status_code == 503
        assert "no router changed" in refused.json()["error"]["message"]
        assert routed_to(a) == "sql"
        with proxy.processes() as started:  # a router that starts while Redis is down still serves
            late = start_router(started, shared.config_path, proxy.free_port(), tmp_path / "late.log",
                                wait_healthy_state=False)
            assert routed_to(late) is None and proxy.complete(late, "pytest").status_code == 200
            assert httpx.get(late + "/health").json()["runtime_state"]["healthy"] is False
    finally:
        shared.redis.start()
    # The restarted Redis kept nothing (no persistence): the routers follow it back to an empty map.
    for router in (a, b):
        proxy.wait_for(lambda r=router: httpx.get(r + "/health").json()["runtime_state"]["healthy"], timeout=10,
                 what="the router to reconnect")
        proxy.wait_for(lambda r=router: routed_to(r) is None, timeout=5, what="the empty map")
    assert proxy.admin(b, "POST", "/admin/ensemble", data={"cluster_id": "c7", "adapter_tag": "python"}).status_code == 200
    proxy.wait_for(lambda: routed_to(a) == "python", timeout=5, what="router a to follow b again")


def test_a_change_travels_by_pubsub_not_by_the_periodic_read(redis_server):
    """Two stores in one process, re-reading only every 60 s: the second one still hears of the
    first one's write within a second, because the write is PUBLISHed on the fleet's channel."""
    address = redis_url.Address("127.0.0.1", redis_server.port, 3, password=PASSWORD)

    async def scenario():
        writer, reader = (runtime_state.RedisState(address, "pubsub", resync_seconds=60) for _ in range(2))
        changed = asyncio.Event()
        await writer.start(lambda: None)
        await reader.start(changed.set)
        try:
            assert writer.healthy and reader.healthy
            override = runtime_state.ClusterOverride(0, "ensemble", "c4", "sql", 1.0)
            await writer.set_overrides([override])
            async with asyncio.timeout(1.0):
                await changed.wait()
            assert reader.overrides == {(0, "c4"): override}
            changed.clear()
            assert await writer.clear_overrides() == 1
            async with asyncio.timeout(1.0):
                await changed.wait()
            assert reader.overrides == {}
        finally:
            await writer.stop()
            await reader.stop()

    run(scenario())
