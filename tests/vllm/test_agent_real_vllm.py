"""`fleetspec agent` on real vLLM (the tier's shared engine): a ConfigMap directory updated the way
kubelet does it, an adapter added under the load loop with no failed request, then a set vLLM
cannot load, refused while the last good set keeps serving. The adapters it loads are unloaded at
the end, so the shared engine is left as the test found it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest
from kubelet_volume import ConfigMapVolume
from load_loop import LoadLoop

from fleetspec.compile import adapter_set
from fleetspec.engine_api import client as engine_client

DEADLINE_S = 120.0  # real loads on two busy cores


def free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def status_of(url: str) -> dict | None:
    import urllib.request

    try:
        with urllib.request.urlopen(url + "/status", timeout=5) as response:  # noqa: S310 - the local agent
            return json.loads(response.read())
    except OSError:
        return None


def wait_for(url: str, condition, what: str, log) -> dict:
    deadline = time.monotonic() + DEADLINE_S
    status = None
    while time.monotonic() < deadline:
        status = status_of(url)
        if status is not None and condition(status):
            return status
        time.sleep(0.2)
    raise AssertionError(f"the agent never reached: {what}; last status {status}\nagent log:\n{log()}")


@pytest.mark.parametrize("engine", ["vllm"], indirect=True)
def test_the_agent_serves_a_configmap_change_hot_on_real_vllm_and_survives_a_bad_one(engine, vllm_installation,
                                                                                      tmp_path):
    adapters = vllm_installation.model / "adapters"
    client = engine_client.EngineClient(engine.url, engine.api_key)
    before = dict(client.models().adapters)
    volume = ConfigMapVolume(tmp_path / "configmap")

    def publish(mapping: dict[str, str]) -> str:
        text = adapter_set.to_text({"format": adapter_set.FORMAT, "fleet": "t", "server": "cpu",
                                    "base": engine.model, "adapters": {**before, **mapping}})
        return volume.publish({adapter_set.FILE: text})

    port = free_port()
    agent_url = f"http://127.0.0.1:{port}"
    log_path = tmp_path / "agent.log"
    first = {"alpha--agent-1": str(adapters / "alpha" / "1.0.0")}
    publish(first)
    with open(log_path, "wb") as log:
        agent = subprocess.Popen(
            [sys.executable, "-m", "fleetspec", "agent", "--config-dir", str(volume.directory), "--engine", engine.url,
             "--host", "127.0.0.1", "--port", str(port), "--api-key-env", "AGENT_ENGINE_KEY", "--poll", "0.2",
             "--retry", "5"],
            env={**os.environ, "AGENT_ENGINE_KEY": engine.api_key}, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_for(agent_url, lambda s: s["ready"] and "alpha--agent-1" in (s["serving"] or {}), "first set",
                 log_path.read_text)
        second = {**first, "alpha--agent-2": str(adapters / "alpha" / "1.1.0")}
        with LoadLoop(engine.url, [engine.model, "alpha--agent-1"], clients=4, headers=engine.auth) as loop:
            publish(second)
            wait_for(agent_url, lambda s: s["problem"] is None and "alpha--agent-2" in (s["serving"] or {}),
                     "alpha--agent-2 served", log_path.read_text)
            tally = loop.stop_after_apply()
        print(f"real vLLM, adapter added by the agent: {tally.summary()}")
        assert not tally.failures, tally.summary()

        publish({**second, "beta--agent-x": str(adapters / "broken" / "1.0.0")})
        status = wait_for(agent_url, lambda s: (s["problem"] or {}).get("kind") == "unloadable",
                          "the unloadable set reported", log_path.read_text)
        assert status["ready"] and "beta--agent-x" not in status["serving"]
        assert set(second) <= set(client.models().adapters)
    finally:
        agent.terminate()
        agent.wait(20)
        for name in set(client.models().adapters) - set(before):
            client.unload_adapter(name)
