"""`fleetspec status` tells the truth about a live fleet (issue #13, "Truthful status").

It used to say "In sync" and exit 0 while a replica was dead. Here a real fleet of the sim engine
runs as local processes; one engine is killed with SIGKILL, another loses its engine core behind a
live API server (SIGUSR1, with vLLM's VLLM_KEEP_ALIVE_ON_ENGINE_DEATH), and `status
--detailed-exitcode`, run as an operator runs it (the installed CLI, a fresh process each time), must
exit 2 and name the replica in a sentence. Every process the test starts is removed at the end.
"""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
import time

import netkit
import pytest
import yaml
from adapter_factory import TINY_LLAMA, write_adapter

from fleetspec import drivers

MODEL = "fleetspec/tiny-test-llama"
_counter = itertools.count(1)


class Fleet:
    def __init__(self, directory):
        self.dir = directory
        self.file = directory / "fleet.yaml"
        self.name = f"fss-{os.getpid()}-{next(_counter)}"
        self.base_port = netkit.free_port_range(2)
        write_adapter(directory / "adapters" / "python" / "1.0.0", TINY_LLAMA, rank=8, base_model=MODEL)
        document = {
            "name": self.name,
            "base_model": {"id": MODEL, "max_model_len": 1024},
            "gpus": [{"type": "sim", "count": 1}],
            "servers": [{"name": "main", "replicas": 2, "gpu_memory_utilization": 0.2,
                         # vLLM's switch: a dead engine core leaves the API server up (answering 503)
                         "env": {"VLLM_KEEP_ALIVE_ON_ENGINE_DEATH": "1"},
                         "lora": {"max_loras": 2, "max_cpu_loras": 4, "max_lora_rank": 8}}],
            "specialists": [{"name": "python", "version": "1.0.0", "path": "./adapters/python/1.0.0",
                             "keywords": ["python"]}],
            "runtime": {"target": "local", "engine": "sim", "base_port": self.base_port,
                        "adapter_roots": [str(directory / "adapters")], "router": {"enabled": False}},
        }
        self.file.write_text(yaml.safe_dump(document, sort_keys=False))

    def cli(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "fleetspec", *args], cwd=self.dir, capture_output=True,
                              text=True, timeout=120, stdin=subprocess.DEVNULL)

    def status(self) -> subprocess.CompletedProcess:
        return self.cli("status", str(self.file), "--detailed-exitcode")

    def replicas(self) -> dict[str, dict]:
        shown = self.cli("status", str(self.file), "--format", "json")
        assert shown.returncode == 0, shown.stderr
        return {row["slot"]: row for row in json.loads(shown.stdout)["replicas"]}

    def wait_for_status(self, code: int, timeout_s: float = 30.0) -> subprocess.CompletedProcess:
        """Run `status --detailed-exitcode` until it exits `code`; fail at the deadline with the last answer."""
        deadline = time.monotonic() + timeout_s
        while True:
            shown = self.status()
            if shown.returncode == code:
                return shown
            if time.monotonic() >= deadline:
                pytest.fail(f"status did not exit {code} within {timeout_s} s; it exited {shown.returncode}:\n"
                            f"{shown.stdout}{shown.stderr}")

    def tear_down(self) -> None:
        self.cli("destroy", str(self.file), "--yes")
        driver = drivers.for_runtime("local", self.file, self.name)
        for left in driver.observe(self.name):  # what destroy could not reach
            driver.remove(left.id)
        assert [c.name for c in driver.observe(self.name)] == [], "processes survived teardown"


@pytest.fixture
def fleet(tmp_path):
    running = Fleet(tmp_path)
    yield running
    running.tear_down()


def test_status_exits_2_and_names_a_killed_replica_then_0_once_apply_restarted_it(fleet):
    applied = fleet.cli("apply", str(fleet.file), "--yes")
    assert applied.returncode == 0, applied.stdout + applied.stderr

    in_sync = fleet.status()
    assert in_sync.returncode == 0, in_sync.stdout + in_sync.stderr
    assert in_sync.stdout.rstrip().endswith("In sync with the fleet file. Every replica runs, answers /health and "
                                            "serves its adapters.")
    rows = fleet.replicas()
    for slot in ("main/0", "main/1"):  # what /health and /v1/models of each engine really say
        assert (rows[slot]["state"], rows[slot]["health"], rows[slot]["adapters"]) == (
            "healthy", "ok", ["python--1.0.0"]), rows[slot]
        assert f"PID {rows[slot]['pid']}" in in_sync.stdout

    victim = rows["main/1"]
    os.kill(victim["pid"], signal.SIGKILL)
    drifted = fleet.wait_for_status(2)

    text = " ".join(drifted.stdout.split())
    assert (f"drift: main/1 is down: its process {fleet.name}-main-1 exited, so nothing serves there; the next "
            "apply (or a running `fleetspec watch`) starts it again.") in text, drifted.stdout
    assert f"read its log .fleetspec/run/{fleet.name}/logs/{fleet.name}-main-1.log" in text
    assert "Out of sync: 1 problem above." in text and "main/0 is" not in text  # the live one is not blamed
    after = fleet.replicas()
    assert (after["main/1"]["state"], after["main/1"]["pid"], after["main/0"]["state"]) == ("down", None, "healthy")

    repaired = fleet.cli("apply", str(fleet.file), "--yes")
    assert repaired.returncode == 0, repaired.stdout + repaired.stderr
    assert fleet.status().returncode == 0


def test_status_exits_2_for_an_engine_that_died_behind_its_live_process(fleet):
    applied = fleet.cli("apply", str(fleet.file), "--yes")
    assert applied.returncode == 0, applied.stdout + applied.stderr
    victim = fleet.replicas()["main/0"]

    os.kill(victim["pid"], signal.SIGUSR1)  # the sim's engine-core death; the process and its port stay
    drifted = fleet.wait_for_status(2)

    text = " ".join(drifted.stdout.split())
    assert (f"drift: main/0 is unhealthy: its process {fleet.name}-main-0 (PID {victim['pid']}) runs, but its engine "
            f"does not answer as it should: http://127.0.0.1:{fleet.base_port}/health answered HTTP 503.") in text
    assert "adapters: unknown (the engine does not answer)" in text
    row = fleet.replicas()["main/0"]
    assert (row["state"], row["status"], row["pid"]) == ("unhealthy", "running", victim["pid"])
