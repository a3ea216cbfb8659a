"""A Kubernetes fleet's pods as its router and `fleetspec status` see them (issue 19 item 1: "a status
endpoint the router and `fleetspec status` can read").

Every process is real and plays its part in a cluster: `fleetspec compile --target k8s` writes the
manifests; two "pods", each a sim engine and a `fleetspec agent` on its own 127.x.y.z address (the
engine on the compiled container port 8000, the agent on the fleet's agent_port), read one ConfigMap
directory updated the way kubelet does it; dnsmasq answers the headless Service's name with both
addresses; the router runs the compiled router.json as it is (its hash is what `status` compares).
A broken ConfigMap must show in the router's /health and metrics, and make `fleetspec status
--detailed-exitcode` exit 2, while requests through the router keep succeeding; an agent that stops
answering is reported as such, and its engine stays healthy and keeps its traffic.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import random
import socket
import subprocess
import sys
import urllib.request

import dnsmasq_server
import pytest
import yaml
from adapter_factory import TINY_LLAMA, write_adapter
from kubelet_volume import ConfigMapVolume
from load_loop import LoadLoop
from netkit import free_port, get
from waiting import wait_for

from fleetspec.compile import adapter_set

MODEL = "fleetspec/tiny-test-llama"
NAMESPACE = "podfleet"
SERVICE = f"vllm-main-pods.{NAMESPACE}.svc.cluster.local"
ENGINE_PORT = 8000  # the compiled container port: the router's config is used exactly as compiled
DEADLINE_S = 30.0


def _addresses(agent_port: int) -> list[str]:
    """Two loopback addresses (pods) where both ports are free: a random 127.x.y block, so that
    tests beside this one (which use 127.0.0.x) cannot hold port 8000 there."""
    rng = random.Random()
    for _ in range(200):
        block = f"127.{rng.randrange(20, 250)}.{rng.randrange(1, 250)}"
        found = [f"{block}.{i}" for i in (2, 3)]
        if all(_free(a, p) for a in found for p in (ENGINE_PORT, agent_port)):
            return found
    raise RuntimeError("no free loopback block for two pods")


def _free(address: str, port: int) -> bool:
    with socket.socket() as probe:
        try:
            probe.bind((address, port))
        except OSError:
            return False
    return True


@dataclasses.dataclass
class Cluster:
    dir: pathlib.Path
    fleet: pathlib.Path
    volume: ConfigMapVolume
    addresses: list[str]
    agent_port: int
    router_url: str = ""
    processes: dict = dataclasses.field(default_factory=dict)

    def cli(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "fleetspec", *args], cwd=self.dir, capture_output=True,
                              text=True, timeout=120, stdin=subprocess.DEVNULL)

    def start(self, name: str, argv: list[str], env: dict | None = None) -> None:
        with open(self.dir / f"{name}.log", "wb") as log:
            self.processes[name] = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT,
                                                    env=env or os.environ.copy())

    def log(self, name: str) -> str:
        path = self.dir / f"{name}.log"
        return path.read_text(errors="replace")[-3000:] if path.exists() else ""

    def start_agent(self, address: str) -> None:
        self.start(f"agent-{address}", [sys.executable, "-m", "fleetspec", "agent", "--config-dir",
                                        str(self.volume.directory), "--engine", f"http://{address}:{ENGINE_PORT}",
                                        "--host", address, "--port", str(self.agent_port),
                                        "--state-dir", str(self.dir / f"state-{address}"),
                                        "--poll", "0.1", "--retry", "0.5"])

    def stop(self, name: str) -> None:
        process = self.processes.pop(name)
        process.kill()
        process.wait(10)

    def health(self) -> dict | None:
        try:
            with urllib.request.urlopen(f"{self.router_url}/health", timeout=2) as response:
                return json.loads(response.read())
        except OSError:
            return None

    def wait_health(self, condition, what: str) -> dict:
        def check():
            health = self.health()
            return health if health is not None and len(health["replicas"]) == 2 and condition(health) else None

        return wait_for(check, what, DEADLINE_S, lambda: f"last /health: {json.dumps(self.health(), indent=1)}\n"
                                                         f"router log: {self.log('router')}")


@pytest.fixture
def cluster(tmp_path):
    agent_port = free_port()
    adapters = tmp_path / "adapters"
    for name in ("python", "sql"):
        write_adapter(adapters / name / "1.0.0", TINY_LLAMA, rank=8, base_model=MODEL)
    fleet = tmp_path / "fleet.yaml"
    fleet.write_text(yaml.safe_dump({
        "name": "podfleet", "base_model": {"id": MODEL, "max_model_len": 1024},
        "gpus": [{"type": "sim", "count": 2}],
        "servers": [{"name": "main", "replicas": 2, "lora": {"max_loras": 2, "max_cpu_loras": 4, "max_lora_rank": 8}}],
        "specialists": [{"name": n, "version": "1.0.0", "path": f"./adapters/{n}/1.0.0"} for n in ("python", "sql")],
        "routing": {"rules": []},
        "runtime": {"target": "k8s", "engine": "sim", "adapter_roots": [str(adapters)],
                    "kubernetes": {"agent_port": agent_port}},
    }, sort_keys=False))
    made = Cluster(tmp_path, fleet, ConfigMapVolume(tmp_path / "configmap"), _addresses(agent_port), agent_port)
    yield made
    for name in list(made.processes):
        made.stop(name)


@pytest.fixture
def dns(tmp_path):
    with dnsmasq_server.running(tmp_path, SERVICE) as server:
        yield server


def _configmap_data(path: pathlib.Path, name: str) -> dict[str, str]:
    """The data of ConfigMap `name` among the documents of a compiled file."""
    (found,) = [d for d in yaml.safe_load_all(path.read_text())
                if d["kind"] == "ConfigMap" and d["metadata"]["name"] == name]
    return found["data"]


def test_a_broken_configmap_shows_in_router_health_and_status_while_traffic_flows(cluster, dns):
    k8s = cluster
    compiled = k8s.cli("compile", str(k8s.fleet), "--target", "k8s", "-o", str(k8s.dir / "deploy"))
    assert compiled.returncode == 0, compiled.stderr
    router_json = _configmap_data(k8s.dir / "deploy" / "router.yaml", "podfleet-router")["router.json"]
    assert json.loads(router_json)["upstreams"][0]["agent_port"] == k8s.agent_port  # where the router asks
    good_text = _configmap_data(k8s.dir / "deploy" / "vllm-main.yaml", "vllm-main-adapters")[adapter_set.FILE]
    good = adapter_set.parse(good_text).mapping
    good_revision = k8s.volume.publish({adapter_set.FILE: good_text})

    env = {**os.environ, "FLEETSPEC_SIM_STARTUP_SECONDS": "0", "VLLM_ALLOW_RUNTIME_LORA_UPDATING": "true"}
    env.pop("VLLM_API_KEY", None)
    for address in k8s.addresses:  # vLLM starts without --lora-modules: the agent loads the ConfigMap's set
        k8s.start(f"engine-{address}", [sys.executable, "-m", "fleetspec.sim", "serve", MODEL, "--host", address,
                                        "--port", str(ENGINE_PORT), "--enable-lora", "--max-loras", "2",
                                        "--max-cpu-loras", "4", "--max-lora-rank", "8"], env)
        k8s.start_agent(address)
    dns.serve(k8s.addresses)
    (k8s.dir / "router.json").write_text(router_json)
    router_port = free_port()
    k8s.router_url = f"http://127.0.0.1:{router_port}"
    k8s.start("router", [sys.executable, "-m", "fleetspec.router", "serve", "--config", str(k8s.dir / "router.json"),
                         "--port", str(router_port), "--resolver", f"127.0.0.1:{dns.port}"])

    def agents_in(state: str):
        return lambda h: all(r["healthy"] and (r["agent"] or {}).get("state") == state for r in h["replicas"])

    health = k8s.wait_health(lambda h: agents_in("ok")(h) and all(r["adapters"] == sorted(good) for r in h["replicas"]),
                             "both pods serving the ConfigMap's set, their agents read")
    pod = health["replicas"][0]
    assert pod["agent"]["url"] == f"http://{k8s.addresses[0]}:{k8s.agent_port}"
    assert pod["agent"]["last_good"] == {"revision": good_revision, "adapters": sorted(good)}
    assert pod["agent"]["problem"] is None and health["agent_problems"] == []

    status = k8s.cli("status", str(k8s.fleet), "--router-url", k8s.router_url, "--detailed-exitcode")
    assert status.returncode == 0, status.stdout + status.stderr
    assert "In sync with the fleet file" in status.stdout
    assert f"main/0  healthy    {k8s.addresses[0]}:{ENGINE_PORT}" in status.stdout
    assert f"ConfigMap revision {good_revision}" in status.stdout

    # A version bump whose files never reached the volume: every agent refuses it and keeps the last good set.
    broken = dict(good, **{"python--2.0.0": str(k8s.dir / "adapters" / "python" / "2.0.0")})
    broken_doc = {**json.loads(good_text), "adapters": broken}
    with LoadLoop(k8s.router_url, ["python", "sql", MODEL]) as loop:
        bad_revision = k8s.volume.publish({adapter_set.FILE: adapter_set.to_text(broken_doc)})
        health = k8s.wait_health(agents_in("problem"), "both agents' problem in the router's /health")
        metrics = get(f"{k8s.router_url}/metrics")[1].decode()
        tally = loop.stop_after_apply()
    status = k8s.cli("status", str(k8s.fleet), "--router-url", k8s.router_url, "--detailed-exitcode")
    as_json = k8s.cli("status", str(k8s.fleet), "--router-url", k8s.router_url, "--format", "json")
    print(f"load during the broken ConfigMap: {tally.summary()}")
    assert not tally.failures, tally.summary()
    assert tally.models_answered.get("python--1.0.0", 0) > 0 and tally.models_answered.get("sql--1.0.0", 0) > 0

    for row in health["replicas"]:
        agent = row["agent"]
        assert row["healthy"] and row["adapters"] == sorted(good)  # residency unchanged: still the last good set
        assert (agent["problem_kind"], agent["problem_revision"], agent["ready"]) == ("unloadable", bad_revision, True)
        assert agent["problem"].startswith(f"ConfigMap revision {bad_revision} could not be loaded: python--2.0.0")
        assert agent["problem"].endswith(f"serving last good set {good_revision} (python--1.0.0, sql--1.0.0)")
    assert len(health["agent_problems"]) == 2 and health["status"] == "ok"
    url0 = health["replicas"][0]["url"]
    assert f'fleetspec_router_agent_config_applied{{server="main",replica="0",url="{url0}"}} 0' in metrics
    assert f'fleetspec_router_agent_up{{server="main",replica="0",url="{url0}"}} 1' in metrics
    assert f'fleetspec_router_upstream_healthy{{server="main",replica="0",url="{url0}"}} 1' in metrics

    assert status.returncode == 2, status.stdout + status.stderr
    assert f"ConfigMap revision {bad_revision} not applied (unloadable)" in status.stdout
    assert "fix the ConfigMap vllm-main-adapters" in status.stdout and "Out of sync: 2 problems" in status.stdout
    report = json.loads(as_json.stdout)
    assert as_json.returncode == 0 and report["in_sync"] is False and report["target"] == "k8s"
    assert [p["agent"]["problem_kind"] for p in report["pods"]] == ["unloadable", "unloadable"]

    # The edit is reverted (git revert, kubectl apply): the agents serve it again and the drift is gone.
    k8s.volume.publish({adapter_set.FILE: good_text})
    k8s.wait_health(agents_in("ok"), "both agents back to a good ConfigMap")
    status = k8s.cli("status", str(k8s.fleet), "--router-url", k8s.router_url, "--detailed-exitcode")
    assert status.returncode == 0, status.stdout + status.stderr

    # An agent that stops answering is the agent's problem, not the engine's: the pod keeps its traffic.
    k8s.stop(f"agent-{k8s.addresses[1]}")
    health = k8s.wait_health(lambda h: h["replicas"][1]["agent"]["state"] == "unreachable", "the silent agent seen")
    silent = health["replicas"][1]
    assert silent["healthy"] is True and silent["adapters"] == sorted(good) and silent["last_error"] is None
    assert silent["agent"]["problem"].startswith(f"the agent does not answer at {silent['agent']['url']}/status")
    before = _hits(k8s, "1")
    for _ in range(6):  # the router still sends it its share of requests (round robin among equals)
        request = urllib.request.Request(f"{k8s.router_url}/v1/completions", json.dumps(
            {"model": "sql", "prompt": "hi", "max_tokens": 2}).encode(), {"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=30) as response:
            assert json.loads(response.read())["model"] == "sql--1.0.0"
    assert _hits(k8s, "1") > before
    status = k8s.cli("status", str(k8s.fleet), "--router-url", k8s.router_url, "--detailed-exitcode")
    assert status.returncode == 2, status.stdout + status.stderr
    assert "main/1" in status.stdout and "does not answer" in status.stdout and "unhealthy" not in status.stdout


def _hits(k8s: Cluster, replica: str) -> float:
    prefix = f'fleetspec_router_adapter_cache_total{{server="main",replica="{replica}",result="hit"}} '
    lines = [line for line in get(f"{k8s.router_url}/metrics")[1].decode().splitlines() if line.startswith(prefix)]
    return float(lines[0].rsplit(" ", 1)[1]) if lines else 0.0


def test_status_of_a_kubernetes_fleet_needs_a_router_url_and_says_so(cluster):
    k8s = cluster
    status = k8s.cli("status", str(k8s.fleet))
    assert status.returncode == 1
    assert "pass --router-url" in status.stderr and "ingress_host" in status.stderr
    status = k8s.cli("status", str(k8s.fleet), "--router-url", f"http://127.0.0.1:{free_port()}", "--detailed-exitcode")
    assert status.returncode == 1 and "the router does not answer at" in status.stderr
