"""Pod discovery against a real DNS server: dnsmasq on 127.0.0.1 and an unprivileged port, serving
several A records for one headless-Service name, with sim engines listening on those 127.0.0.x
addresses (one port, like pods). Skips, saying why, where dnsmasq is not installed (fails instead
under FLEETSPEC_REQUIRE_ORACLES=1: the DNS server is an oracle)."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys
import time
import urllib.error
import urllib.request

import dnsmasq_server
import pytest
from netkit import free_port
from waiting import wait_for

from fleetspec.engine_api import client as engine_client
from fleetspec.router import discovery

SERVICE = "vllm-main-pods.fleet.svc.cluster.local"
MODEL = "fleetspec/tiny-test-llama"
DEADLINE_S = 20.0


@pytest.fixture
def dns(tmp_path):
    with dnsmasq_server.running(tmp_path, SERVICE) as server:
        yield server


@pytest.fixture
def engines(tmp_path):
    started = []
    port = free_port()

    def start(address: str, lora_modules: list[str] | None = None) -> str:
        env = {**os.environ, "FLEETSPEC_SIM_STARTUP_SECONDS": "0"}
        env.pop("VLLM_API_KEY", None)
        with open(tmp_path / f"sim-{address}.log", "wb") as log:
            started.append(
                subprocess.Popen(
                    [
                        sys.executable,
                        "-m",
                        "fleetspec.sim",
                        "serve",
                        MODEL,
                        "--host",
                        address,
                        "--port",
                        str(port),
                        *(["--enable-lora", "--max-loras", "2", "--max-cpu-loras", "4", "--max-lora-rank", "8",
                           "--lora-modules", *lora_modules] if lora_modules else []),
                    ],
                    env=env,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
            )
        url = f"http://{address}:{port}"
        process, log_path = started[-1], tmp_path / f"sim-{address}.log"

        def still_running() -> None:
            if process.poll() is not None:
                raise AssertionError(f"the sim engine for {url} exited: {log_path.read_text(errors='replace')[-2000:]}")

        # Up before the test goes on, so that a router's wait is on the router, not on a slow start.
        engine_client.EngineClient(url).wait_healthy(time.monotonic() + DEADLINE_S, check=still_running)
        return url

    start.port = port
    yield start
    for process in started:
        process.kill()
        process.wait(10)


def test_a_headless_name_resolves_to_every_pod_and_each_url_is_an_engine(dns, engines):
    urls = [engines(f"127.0.0.{i}") for i in (2, 3, 4)]
    dns.serve(["127.0.0.4", "127.0.0.2", "127.0.0.3"])
    resolver = discovery.parse_resolver(f"127.0.0.1:{dns.port}")
    found = discovery.engine_urls(SERVICE, engines.port, resolver)
    assert found == urls  # sorted by address, one per A record
    for url in found:
        engine_client.EngineClient(url).wait_healthy(time.monotonic() + DEADLINE_S)
        assert MODEL in engine_client.EngineClient(url).models().base


def test_a_pod_leaving_the_service_leaves_the_list_and_a_dns_outage_keeps_the_last_answer(dns):
    dns.serve(["127.0.0.2", "127.0.0.3"])
    resolver = discovery.Resolver("127.0.0.1", dns.port, timeout_s=0.3)
    watch = discovery.Discovery(SERVICE, 8000, resolver, ttl_s=0.0)
    assert watch.current() == ["http://127.0.0.2:8000", "http://127.0.0.3:8000"]
    dns.serve(["127.0.0.3"])
    assert watch.current() == ["http://127.0.0.3:8000"]
    dns.process.kill()
    dns.process.wait(10)
    assert watch.current() == ["http://127.0.0.3:8000"]  # kept through the outage
    assert "did not answer" in watch.last_error


def test_hundreds_of_pods_arrive_whole_over_tcp_when_udp_truncates(dns):
    addresses = [f"127.0.{i // 250 + 1}.{i % 250 + 1}" for i in range(300)]
    dns.serve(addresses)
    found = discovery.resolve_a(SERVICE, discovery.Resolver("127.0.0.1", dns.port))
    assert len(found) == 300 and set(found) == set(addresses)


def test_a_name_with_no_ready_pod_has_no_engines(dns):
    dns.serve(["127.0.0.2"])
    resolver = discovery.Resolver("127.0.0.1", dns.port)
    assert discovery.engine_urls("vllm-other-pods.fleet.svc.cluster.local", 8000, resolver) == []


@pytest.mark.parametrize("text", ["localhost:53", "127.0.0.1:0", "127.0.0.1:99999", "nonsense"])
def test_a_resolver_setting_must_be_an_address_and_port(text):
    with pytest.raises(ValueError, match="resolver"):
        discovery.parse_resolver(text)


ROOT = pathlib.Path(__file__).resolve().parents[2]
FLEET = {
    "name": "pods", "base_model": {"id": MODEL, "max_model_len": 1024}, "gpus": [{"type": "sim", "count": 1}],
    "servers": [{"name": "main", "replicas": 2, "lora": {"max_loras": 2, "max_cpu_loras": 4, "max_lora_rank": 8}}],
    "specialists": [{"name": "python", "version": "1.0.0", "path": str(ROOT / "adapters/python/1.0.0")},
                    {"name": "sql", "version": "1.0.0", "path": str(ROOT / "adapters/sql/1.0.0")}],
    "routing": {"rules": []},
}


def test_the_router_routes_each_adapter_only_to_the_pods_that_hold_it(dns, engines, tmp_path):
    """One `discover` upstream (the headless Service); python lives on pod .2 and sql on pod .3."""
    from fleetspec.routing import config
    from fleetspec.spec import models

    pods = {"127.0.0.2": "python", "127.0.0.3": "sql"}
    urls = {address: engines(address, [f"{name}--1.0.0={ROOT / 'adapters' / name / '1.0.0'}"])
            for address, name in pods.items()}
    dns.serve(list(pods))
    spec = models.FleetSpec.model_validate(FLEET)
    upstream = config.Upstream("main", 0, f"http://{SERVICE}:{engines.port}", discover=True)
    config_path = tmp_path / "router.json"
    config_path.write_text(config.dumps(config.document(spec, [upstream], refresh_seconds=0.2)))
    router_port = free_port()
    log = tmp_path / "router.log"
    with open(log, "wb") as out:
        router = subprocess.Popen([sys.executable, "-m", "fleetspec.router", "serve", "--config", str(config_path),
                                   "--port", str(router_port), "--resolver", f"127.0.0.1:{dns.port}"],
                                  stdout=out, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{router_port}"
    try:
        def both_pods_seen():
            try:
                with urllib.request.urlopen(f"{base}/health", timeout=2) as response:
                    health = json.loads(response.read())
            except OSError:  # not listening yet
                return None
            rows = {r["url"]: r for r in health["replicas"]}
            return rows if set(rows) == set(urls.values()) and all(r["healthy"] for r in rows.values()) else None

        rows = wait_for(both_pods_seen, "the router discovering both pods", DEADLINE_S,
                        lambda: log.read_text(errors="replace")[-3000:])
        assert {rows[urls[a]]["replica"] for a in pods} == {0, 1}
        assert {u: r["adapters"] for u, r in rows.items()} == {urls[a]: [f"{n}--1.0.0"] for a, n in pods.items()}
        for name in ("python", "sql", "python", "sql", "python", "sql"):
            status, body = _post(f"{base}/v1/completions", {"model": name, "prompt": "hi", "max_tokens": 2})
            assert (status, body["model"]) == (200, f"{name}--1.0.0"), body
        for address, name in pods.items():  # nothing was loaded on demand: each went where it lives
            assert engine_client.EngineClient(urls[address]).models().adapters.keys() == {f"{name}--1.0.0"}
        metrics = urllib.request.urlopen(f"{base}/metrics", timeout=5).read().decode()
        assert 'fleetspec_router_adapter_cache_total{server="main",replica="0",result="hit"} 3' in metrics
        assert 'fleetspec_router_adapter_cache_total{server="main",replica="1",result="hit"} 3' in metrics
        assert 'ensemble_cache_misses_total 0' in metrics
    finally:
        router.kill()
        router.wait(10)


def _post(url: str, body: dict) -> tuple[int, dict]:
    request = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())
