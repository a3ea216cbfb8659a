"""The serving path never fails a request it could serve (issue 13), on the local runtime with sim
engines behind fleetspec's router, each change made under the load loop (tests/load_loop.py).

The sims load adapters slowly (FLEETSPEC_SIM_LOAD_SECONDS) and start slowly, as real vLLM does, so
the router's on-demand loads and apply's drain-before-replace are exercised with real waits.
Every CLI call is a process of its own, as a user runs it.
"""

from __future__ import annotations

import contextlib
import json
import os
import pathlib
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request

import netkit
import pytest
import yaml
from adapter_factory import TINY_LLAMA, write_adapter
from load_loop import LoadLoop
from waiting import wait_for

from fleetspec import drivers

MODEL = "fleetspec/tiny-test-llama"
DEADLINE_S = 60.0
SIM_ENV = {"FLEETSPEC_SIM_LOAD_SECONDS": "0.3", "FLEETSPEC_SIM_STARTUP_SECONDS": "1.0",
           "FLEETSPEC_SIM_TOKEN_SECONDS": "0.01"}


def http(method: str, url: str, body: dict | None = None, timeout_s: float = 10.0) -> tuple[int, dict, dict]:
    """(status, JSON body, lower-cased headers); status 0 when nothing answered."""
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data, {"Content-Type": "application/json"}, method=method)
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:  # noqa: S310 - our own processes
            return response.status, json.loads(response.read() or b"null"), {k.lower(): v for k, v in response.headers.items()}
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"null"), {k.lower(): v for k, v in exc.headers.items()}
    except (urllib.error.URLError, OSError):
        return 0, {}, {}


class ServingFleet:
    """Two sim replicas and the router, from a fleet.yaml in a temporary directory."""

    def __init__(self, directory: pathlib.Path):
        self.dir, self.file = directory, directory / "fleet.yaml"
        self.name = f"fss-{os.getpid()}-{time.monotonic_ns() % 100000}"
        self.base_port = netkit.free_port_range(3)
        self.specialists: dict[str, dict] = {}
        self.server = {"name": "main", "replicas": 2, "gpu_memory_utilization": 0.2, "env": dict(SIM_ENV),
                       "lora": {"max_loras": 2, "max_cpu_loras": 4, "max_lora_rank": 8}}
        self.base = {"id": MODEL, "max_model_len": 1024}
        self.routing: dict = {"fallback": "base"}
        self.router_settings: dict = {}

    def adapter(self, name: str, version: str) -> str:
        write_adapter(self.dir / "adapters" / name / version, TINY_LLAMA, rank=8, base_model=MODEL)
        return f"./adapters/{name}/{version}"

    def specialist(self, name: str, version: str, **extra) -> None:
        self.specialists[name] = {"name": name, "version": version, "path": self.adapter(name, version),
                                  "keywords": [name], **extra}

    def write(self) -> None:
        document = {"name": self.name, "base_model": self.base, "gpus": [{"type": "sim", "count": 1}],
                    "servers": [self.server], "specialists": list(self.specialists.values()),
                    "routing": self.routing,
                    "runtime": {"target": "local", "engine": "sim", "base_port": self.base_port,
                                "adapter_roots": [str(self.dir / "adapters")],
                                "router": {"port": self.base_port + 2, **self.router_settings}}}
        self.file.write_text(yaml.safe_dump(document, sort_keys=False))

    def cli(self, *args: str, timeout_s: float = 300) -> subprocess.CompletedProcess:
        env = {**os.environ, "NO_COLOR": "1", "FLEETSPEC_DEBUG": "1"}
        return subprocess.run([sys.executable, "-m", "fleetspec", *args], cwd=self.dir, env=env,
                              capture_output=True, text=True, timeout=timeout_s)

    def apply(self) -> tuple[int, dict, str]:
        done = self.cli("apply", str(self.file), "--format", "json")
        assert done.stdout, f"apply printed no JSON; stderr:\n{done.stderr}"
        return done.returncode, json.loads(done.stdout), done.stderr

    def converge(self) -> dict:
        """Write the fleet file as it stands and apply it; it must converge."""
        self.write()
        code, result, err = self.apply()
        assert code == 0, err + json.dumps(result, indent=1)
        return result

    @property
    def router(self) -> str:
        return f"http://127.0.0.1:{self.base_port + 2}"

    def engine(self, replica: int) -> str:
        return f"http://127.0.0.1:{self.base_port + replica}"

    def served(self, replica: int) -> set[str]:
        status, body, _ = http("GET", self.engine(replica) + "/v1/models")
        assert status == 200, body
        return {c["id"] for c in body["data"] if c.get("parent")}

    def ask(self, model: str) -> tuple[int, dict, dict]:
        return http("POST", self.router + "/v1/completions", {"model": model, "prompt": "hello", "max_tokens": 2},
                    timeout_s=90)

    def engine_pids(self) -> dict[int, int]:
        procs = drivers.run_dir(self.file, self.name) / "procs"
        pids = {}
        for record in procs.glob("*.json"):
            data = json.loads(record.read_text())
            name = record.stem
            if name.startswith(f"{self.name}-main-"):
                pids[int(name.rsplit("-", 1)[1])] = data["pid"]
        return pids

    def destroy(self) -> None:
        with contextlib.suppress(Exception):
            self.cli("destroy", str(self.file), "--yes")
        driver = drivers.for_runtime("local", self.file, self.name)
        for container in driver.observe(self.name):
            with contextlib.suppress(Exception):
                driver.remove(container.id)
        assert driver.observe(self.name) == [], "processes of the serving-path fleet survived teardown"


@pytest.fixture
def fleet(tmp_path):
    serving = ServingFleet(tmp_path)
    serving.specialist("python", "1.0.0")
    yield serving
    serving.destroy()


def test_a_new_version_that_fails_to_load_keeps_every_request_on_the_old_one(fleet):
    fleet.converge()
    entry = fleet.specialists["python"]
    # The new version's directory is missing: plan only warns (adapters often live on the serving
    # hosts); both engines refuse it, as they would a file corrupted after validation.
    fleet.specialists["python"] = {**entry, "version": "2.0.0", "path": "./adapters/python/2.0.0",
                                   "versions": [{"version": "1.0.0", "path": entry["path"]}]}
    fleet.write()

    with LoadLoop(fleet.router, ["python", fleet.name]) as loop:
        code, result, _ = fleet.apply()
        tally = loop.stop_after_apply()

    assert code == 1
    failed = [o for o in result["result"]["outcomes"] if o["status"] == "failed"]
    assert {(o["action"]["kind"], o["action"]["adapter"]) for o in failed} == {("load-adapter", "python--2.0.0")}
    assert tally.failures == [], tally.summary()
    assert tally.models_answered.get("python--1.0.0", 0) > 0 and "python--2.0.0" not in tally.models_answered
    status, body, headers = fleet.ask("python")
    assert (status, headers["x-fleetspec-version"], body["model"]) == (200, "1.0.0", "python--1.0.0")
    for replica in (0, 1):
        assert fleet.served(replica) == {"python--1.0.0"}


def test_with_two_router_processes_a_new_version_moves_every_request_when_apply_returns(fleet):
    """apply moves the alias only once /health names the new config, which a two-process router does
    only when both processes serve it: no request fails, and none after apply reaches the old version."""
    fleet.router_settings = {"processes": 2}
    fleet.converge()
    status, health, _ = http("GET", fleet.router + "/health")
    assert [p["live"] for p in health["processes"]] == [True, True]
    entry = fleet.specialists["python"]
    fleet.specialists["python"] = {**entry, "version": "2.0.0", "path": fleet.adapter("python", "2.0.0"),
                                   "versions": [{"version": "1.0.0", "path": entry["path"]}]}
    fleet.write()

    with LoadLoop(fleet.router, ["python", fleet.name]) as loop:
        code, result, err = fleet.apply()
        tally = loop.stop_after_apply()

    assert code == 0, err + json.dumps(result["result"], indent=1)
    assert tally.failures == [], tally.summary()
    answers = [fleet.ask("python") for _ in range(24)]  # a connection each: both processes answer
    assert {(a[0], a[1].get("model")) for a in answers} == {(200, "python--2.0.0")}


def test_a_preload_false_specialist_answers_its_first_request_and_stays_through_applies(fleet):
    fleet.specialist("sql", "1.0.0", preload=False)
    fleet.converge()
    assert fleet.served(0) == fleet.served(1) == {"python--1.0.0"}

    with LoadLoop(fleet.router, ["sql", "python"]) as loop:
        loop.wait_for_answers(8, DEADLINE_S)
        tally = loop.stop_after_apply()

    assert tally.failures == [], tally.summary()
    assert tally.models_answered.get("sql--1.0.0", 0) > 0
    holders = [r for r in (0, 1) if "sql--1.0.0" in fleet.served(r)]
    assert holders, "the router answered sql without loading it anywhere"
    again = fleet.converge()
    assert again["plan"]["actions"] == [], again["plan"]["actions"]  # neither unloaded nor loaded
    assert all("sql--1.0.0" in fleet.served(r) for r in holders)
    status, _, headers = fleet.ask("sql")
    assert (status, headers.get("x-fleetspec-specialist")) == (200, "sql")


def test_a_restart_requiring_change_on_two_replicas_fails_no_request(fleet):
    fleet.converge()
    before = fleet.engine_pids()
    fleet.base["max_model_len"] = 768
    fleet.write()

    with LoadLoop(fleet.router, ["python", fleet.name]) as loop:
        code, result, err = fleet.apply()
        tally = loop.stop_after_apply()

    assert code == 0, err + json.dumps(result["result"], indent=1)
    assert sorted(a["target"] for a in result["plan"]["actions"] if a["kind"] == "replace") == ["main/0", "main/1"]
    assert all(before[r] != pid for r, pid in fleet.engine_pids().items())
    assert tally.failures == [], tally.summary()
    for replica in (0, 1):
        assert fleet.served(replica) == {"python--1.0.0"}


def test_a_killed_engine_is_drift_and_the_router_stops_sending_to_it(fleet):
    fleet.converge()
    pids = fleet.engine_pids()
    os.kill(pids[1], signal.SIGKILL)

    def router_sees_it_down() -> bool:
        status, health, _ = http("GET", fleet.router + "/health")
        rows = {r["replica"]: r for r in health.get("replicas", [])} if status == 200 else {}
        return 1 in rows and rows[1]["healthy"] is False

    wait_for(router_sees_it_down, "the router marking the killed replica down", DEADLINE_S)
    answers = [fleet.ask("python") for _ in range(10)]
    assert [a[0] for a in answers] == [200] * 10
    status, health, _ = http("GET", fleet.router + "/health")
    assert health["status"] == "ok" and health["unserved"] == []  # replica 0 still serves python

    status_run = fleet.cli("status", str(fleet.file), "--detailed-exitcode")
    assert status_run.returncode == 2, status_run.stdout + status_run.stderr
