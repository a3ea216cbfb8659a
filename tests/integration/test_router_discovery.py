"""Pod discovery against a real DNS server: dnsmasq on 127.0.0.1 and an unprivileged port, serving
several A records for one headless-Service name, with sim engines listening on those 127.0.0.x
addresses (one port, like pods). Skips, saying why, where dnsmasq is not installed (fails instead
under FLEETSPEC_REQUIRE_ORACLES=1: the DNS server is an oracle)."""

from __future__ import annotations

import getpass
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import time

import pytest
from netkit import free_port
from require import unavailable

from fleetspec.engine_api import client as engine_client
from fleetspec.router import discovery

SERVICE = "vllm-main-pods.fleet.svc.cluster.local"
MODEL = "fleetspec/tiny-test-llama"
DEADLINE_S = 20.0


class Dnsmasq:
    def __init__(self, directory: pathlib.Path):
        self.hosts = directory / "pods.hosts"
        self.port = free_port()
        self.log = directory / "dnsmasq.log"
        self.process: subprocess.Popen | None = None

    def serve(self, addresses: list[str]) -> None:
        self.hosts.write_text("".join(f"{a} {SERVICE}\n" for a in addresses))
        if self.process is None:
            binary = shutil.which("dnsmasq") or "/usr/sbin/dnsmasq"
            with open(self.log, "wb") as log:
                self.process = subprocess.Popen(
                    [
                        binary,
                        "--keep-in-foreground",
                        "--conf-file=/dev/null",
                        "--no-resolv",
                        "--no-hosts",
                        "--local=/cluster.local/",  # authoritative, as cluster DNS is: unknown names are NXDOMAIN
                        f"--addn-hosts={self.hosts}",
                        "--listen-address=127.0.0.1",
                        "--bind-interfaces",
                        f"--port={self.port}",
                        "--pid-file=",
                        f"--user={getpass.getuser()}",
                        "--log-facility=-",
                    ],
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
        else:
            self.process.send_signal(signal.SIGHUP)  # dnsmasq re-reads its hosts files on SIGHUP
        self.wait_for(len(addresses))

    def wait_for(self, count: int) -> None:
        resolver = discovery.Resolver("127.0.0.1", self.port, timeout_s=0.5)
        deadline = time.monotonic() + DEADLINE_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"dnsmasq exited: {self.log.read_text()}")
            try:
                if len(discovery.resolve_a(SERVICE, resolver)) == count:
                    return
            except discovery.DiscoveryError:
                pass
            time.sleep(0.05)
        raise AssertionError(f"dnsmasq never served {count} records: {self.log.read_text()}")


@pytest.fixture
def dns(tmp_path):
    if shutil.which("dnsmasq") is None and not os.path.exists("/usr/sbin/dnsmasq"):
        unavailable("ORACLES", "dnsmasq is not installed (apt-get install dnsmasq-base)")
    server = Dnsmasq(tmp_path)
    yield server
    if server.process is not None:
        server.process.kill()
        server.process.wait(10)


@pytest.fixture
def engines(tmp_path):
    started = []
    port = free_port()

    def start(address: str) -> str:
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
                    ],
                    env=env,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
            )
        return f"http://{address}:{port}"

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
