"""`fleetspec agent` against a real sim engine, its ConfigMap directory updated the way kubelet does it.

Every process is real: the sim engine on a free port, the agent as `python -m fleetspec agent`, the
load loop's clients (tests/load_loop.py, issue 12's yardstick) sending requests straight to the
engine, as a router would. Each test kills what it started.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import subprocess
import sys
import time
import urllib.request

import adapter_factory
import pytest
from kubelet_volume import ConfigMapVolume
from load_loop import LoadLoop
from netkit import free_port, get

from fleetspec.catalog import models as catalog
from fleetspec.compile import adapter_set
from fleetspec.engine_api import client as engine_client
from fleetspec.engine_api import contract
from fleetspec.spec import models

MODEL = "fleetspec/tiny-test-llama"
TINY = catalog.resolve(models.BaseModelSpec(id=MODEL)).architecture
DEADLINE_S = 30.0




@dataclasses.dataclass
class Pod:
    """An engine and its agent, as in one pod: the agent reaches the engine on 127.0.0.1."""

    engine: subprocess.Popen
    engine_url: str
    agent: subprocess.Popen | None
    agent_url: str
    volume: ConfigMapVolume
    state_dir: pathlib.Path
    logs: pathlib.Path

    def status(self) -> dict:
        status, body = get(self.agent_url + "/status")
        assert status == 200, body
        return json.loads(body)

    def wait_for(self, condition, what: str) -> dict:
        deadline = time.monotonic() + DEADLINE_S
        last = None
        while time.monotonic() < deadline:
            try:
                last = self.status()
            except OSError:
                last = None
            if last is not None and condition(last):
                return last
            time.sleep(0.05)
        raise AssertionError(
            f"the agent never reached: {what}; last status {json.dumps(last, indent=1)}\n"
            f"agent log:\n{self.agent_log()}"
        )

    def agent_log(self) -> str:
        path = self.logs / "agent.log"
        return path.read_text() if path.exists() else ""

    def served(self) -> dict[str, str]:
        return dict(engine_client.EngineClient(self.engine_url).models().adapters)


def adapter(root: pathlib.Path, name: str) -> str:
    return str(
        adapter_factory.write_adapter(
            root / name, TINY, rank=8, base_model=MODEL, targets=("q_proj", "v_proj")
        )
    )


def document(adapters: dict[str, str], on_demand: dict[str, str] | None = None) -> str:
    doc = {"format": adapter_set.FORMAT, "fleet": "f", "server": "main", "base": MODEL, "adapters": adapters}
    if on_demand is not None:
        doc["on_demand"] = on_demand
    return adapter_set.to_text(doc)


def load_as_the_router_does(engine_url: str, name: str, path: str) -> None:
    """`router.ondemand`'s request: the engine's runtime LoRA API, nothing of the agent's."""
    request = urllib.request.Request(
        engine_url + contract.LOAD,
        data=contract.load_body(name, path),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=DEADLINE_S) as answer:
        assert answer.status == 200


@pytest.fixture
def pod(tmp_path):
    logs = tmp_path / "logs"
    logs.mkdir()
    engine_port, agent_port = free_port(), free_port()
    env = {**os.environ, "FLEETSPEC_SIM_STARTUP_SECONDS": "0", "VLLM_ALLOW_RUNTIME_LORA_UPDATING": "true"}
    env.pop("VLLM_API_KEY", None)
    with open(logs / "engine.log", "wb") as log:
        engine = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "fleetspec.sim",
                "serve",
                MODEL,
                "--host",
                "127.0.0.1",
                "--port",
                str(engine_port),
                "--enable-lora",
                "--max-loras",
                "2",
                "--max-cpu-loras",
                "4",
                "--max-lora-rank",
                "16",
            ],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    engine_url = f"http://127.0.0.1:{engine_port}"
    created = Pod(
        engine,
        engine_url,
        None,
        f"http://127.0.0.1:{agent_port}",
        ConfigMapVolume(tmp_path / "configmap"),
        tmp_path / "state",
        logs,
    )
    engine_client.EngineClient(engine_url).wait_healthy(time.monotonic() + DEADLINE_S)
    yield created
    for process in (created.agent, engine):
        if process is not None and process.poll() is None:
            process.kill()
        if process is not None:
            process.wait(10)


def start_agent(pod: Pod) -> None:
    port = pod.agent_url.rsplit(":", 1)[1]
    with open(pod.logs / "agent.log", "ab") as log:
        pod.agent = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "fleetspec",
                "agent",
                "--config-dir",
                str(pod.volume.directory),
                "--engine",
                pod.engine_url,
                "--host",
                "127.0.0.1",
                "--port",
                port,
                "--state-dir",
                str(pod.state_dir),
                "--poll",
                "0.1",
                "--retry",
                "0.5",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )


def stop_agent(pod: Pod) -> None:
    pod.agent.terminate()
    assert pod.agent.wait(10) == 0, pod.agent_log()


def serving(expected: dict[str, str]):
    return lambda s: s["ready"] and s["serving"] == expected and s["problem"] is None


def test_an_adapter_change_is_served_hot_with_no_failed_request(pod, tmp_path):
    sql1, sql2, chat1 = (adapter(tmp_path / "adapters", n) for n in ("sql-1", "sql-2", "chat-1"))
    first = {"sql--1": sql1, "chat--1": chat1}
    pod.volume.publish({"adapters.json": document(first)})
    start_agent(pod)
    pod.wait_for(serving(first), "the first set served")
    assert get(pod.agent_url + "/ready")[0] == 200

    # The version bump: sql--2 joins while clients use sql--1 (and the router still sends them there).
    both = {**first, "sql--2": sql2}
    with LoadLoop(pod.engine_url, [MODEL, "sql--1", "chat--1"]) as loop:
        revision = pod.volume.publish({"adapters.json": document(both)})
        pod.wait_for(lambda s: serving(both)(s) and s["last_good"]["revision"] == revision, "sql--2 served")
        tally = loop.stop_after_apply()
    print(f"load: sql--2 added: {tally.summary()}")
    assert not tally.failures, tally.summary()
    assert tally.models_answered.get("sql--1", 0) > 0 and tally.ok >= 4

    # The router has moved to sql--2; the old version leaves the set and is unloaded.
    last = {"sql--2": sql2, "chat--1": chat1}
    with LoadLoop(pod.engine_url, [MODEL, "sql--2", "chat--1"]) as loop:
        pod.volume.publish({"adapters.json": document(last)})
        pod.wait_for(serving(last), "sql--1 unloaded")
        tally = loop.stop_after_apply()
    print(f"load: sql--1 removed: {tally.summary()}")
    assert not tally.failures, tally.summary()
    assert tally.models_answered.get("sql--2", 0) > 0
    assert pod.served() == last
    assert pod.engine.poll() is None  # the same engine process throughout: no restart
    assert pod.status()["counters"]["applied"] == 3


def test_a_broken_configmap_keeps_the_last_good_set_and_the_pod_ready(pod, tmp_path):
    sql1, chat1 = (adapter(tmp_path / "adapters", n) for n in ("sql-1", "chat-1"))
    good = {"sql--1": sql1, "chat--1": chat1}
    pod.volume.publish({"adapters.json": document(good)})
    start_agent(pod)
    pod.wait_for(serving(good), "the good set served")

    # Not JSON at all: refused, nothing changes on the engine, the pod stays Ready.
    bad = pod.volume.publish({"adapters.json": document(good)[:-20]})
    status = pod.wait_for(lambda s: s["problem"] is not None, "the invalid set reported")
    assert status["problem"]["kind"] == "invalid" and status["problem"]["revision"] == bad
    assert "not valid JSON" in status["problem"]["message"]
    assert status["ready"] and status["serving"] == good and pod.served() == good
    assert get(pod.agent_url + "/ready")[0] == 200
    metrics = get(pod.agent_url + "/metrics")[1].decode()
    assert "fleetspec_agent_ready 1" in metrics and "fleetspec_agent_config_applied 0" in metrics
    assert 'fleetspec_agent_sets_rejected_total{reason="invalid"} 1' in metrics

    # Valid, but one adapter is not on the volume: the new name is undone, the last good set stays.
    missing = {"sql--2": str(tmp_path / "adapters" / "not-there"), "chat--1": chat1}
    pod.volume.publish({"adapters.json": document(missing)})
    status = pod.wait_for(
        lambda s: (s["problem"] or {}).get("kind") == "unloadable", "the unloadable set reported"
    )
    assert "sql--2" in status["problem"]["message"]
    assert status["ready"] and pod.served() == good and status["last_good"]["adapters"] == good
    assert get(pod.agent_url + "/ready")[0] == 200

    # The files arrive later (a sync job): the retry serves the set without another edit.
    adapter_factory.write_adapter(
        tmp_path / "adapters" / "not-there", TINY, rank=8, base_model=MODEL, targets=("q_proj", "v_proj")
    )
    pod.wait_for(serving(missing), "the retried set served once its files exist")
    log = pod.agent_log()
    assert "not applied" in log and "not valid JSON" in log


def test_a_restarted_agent_restores_the_last_good_set_while_the_configmap_is_broken(pod, tmp_path):
    sql1 = adapter(tmp_path / "adapters", "sql-1")
    good = {"sql--1": sql1}
    pod.volume.publish({"adapters.json": document(good)})
    start_agent(pod)
    pod.wait_for(serving(good), "the good set served")
    stop_agent(pod)

    pod.volume.publish({"adapters.json": '{"format": "something-else"}'})
    engine_client.EngineClient(pod.engine_url).unload_adapter("sql--1")  # as if the engine had restarted too
    start_agent(pod)
    status = pod.wait_for(lambda s: s["ready"], "ready again from the saved last good set")
    assert status["serving"] == good and status["problem"]["kind"] == "invalid"
    assert "fleetspec-adapters/1" in status["problem"]["message"]


def test_without_any_good_set_the_pod_is_not_ready_and_says_why(pod):
    pod.volume.publish({"adapters.json": "[]"})
    start_agent(pod)
    status = pod.wait_for(
        lambda s: s["problem"] is not None and s["engine"]["healthy"], "the problem reported"
    )
    assert not status["ready"] and "JSON object" in status["reason"]
    ready_status, body = get(pod.agent_url + "/ready")
    assert ready_status == 503 and b"no adapter set has been served yet" in body


def test_an_adapter_the_router_loaded_on_demand_stays_until_it_leaves_the_configmap(pod, tmp_path):
    sql1, legal1 = (adapter(tmp_path / "adapters", n) for n in ("sql-1", "legal-1"))
    required = {"sql--1": sql1}
    pod.volume.publish({"adapters.json": document(required, on_demand={"legal--1": legal1})})
    start_agent(pod)
    status = pod.wait_for(serving(required), "the required set served")
    assert status["last_good"]["on_demand"] == {"legal--1": legal1} and status["serving_on_demand"] == {}
    assert pod.served() == required  # allowed, not required: the agent does not load it

    # A request names legal--1: the router loads it on this pod, as `router.ondemand` does.
    load_as_the_router_does(pod.engine_url, "legal--1", legal1)
    with_legal = {**required, "legal--1": legal1}
    pod.wait_for(
        lambda s: s["serving"] == with_legal and s["serving_on_demand"] == {"legal--1": legal1},
        "the on-demand load seen by the agent",
    )
    # Let the agent cycle (it polls every 0.1 s): the load is the fleet working as declared, not drift.
    with LoadLoop(pod.engine_url, [MODEL, "sql--1", "legal--1"]) as loop:
        time.sleep(1.5)
        tally = loop.stop_after_apply()
    assert not tally.failures, tally.summary()
    assert tally.models_answered.get("legal--1", 0) > 0
    status = pod.status()
    assert pod.served() == with_legal and status["serving"] == with_legal
    assert status["counters"]["restored"] == 0 and status["problem"] is None and status["ready"]
    assert "fleetspec_agent_adapters_serving_on_demand 1" in get(pod.agent_url + "/metrics")[1].decode()

    # The specialist leaves the fleet file: its adapter leaves the ConfigMap and the agent unloads it.
    revision = pod.volume.publish({"adapters.json": document(required, on_demand={})})
    pod.wait_for(
        lambda s: serving(required)(s) and s["last_good"]["revision"] == revision, "legal--1 unloaded"
    )
    assert pod.served() == required
    assert pod.engine.poll() is None
