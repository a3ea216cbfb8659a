"""The reconciler end to end: `fleetspec apply` against real engines, on both runtimes.

Every scenario runs twice: `docker` (containers of the offline-built sim image on a real Docker
engine) and `local` (sim engines as child processes). Each test writes its own fleet.yaml and
adapters into a fresh directory, drives fleetspec through its CLI in-process (`app.main`), and
asserts on what really runs: container ids and start times as the runtime reports them, and each
engine's own `/v1/models` and `/v1/completions`. Teardown destroys the fleet through the CLI and
then removes anything left by hand, so a failing test leaves nothing running.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import json
import os
import pathlib
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

import netkit
import pytest
import yaml
from adapter_factory import BIGGER_LLAMA, TINY_LLAMA, write_adapter

from fleetspec import drivers as drivers_pkg
from fleetspec.cli import app
from fleetspec.compile import desired, labels
from fleetspec.reconcile import session, state
from fleetspec.sim.engine import sanitize_message

MODEL = "fleetspec/tiny-test-llama"
PY = sys.executable
_counter = itertools.count(1)

RUNTIMES = [pytest.param("local", id="local"), pytest.param("docker", id="docker", marks=pytest.mark.docker)]


# --- helpers -----------------------------------------------------------------------------------


def wait_for(condition, timeout_s: float, what: str):
    """Poll `condition()` until it returns something truthy; fail the test at the deadline."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() >= deadline:
            pytest.fail(f"{what} did not happen within {timeout_s} s")
        time.sleep(0.05)


def http_json(method: str, url: str, body: dict | None = None, timeout_s: float = 5.0) -> tuple[int, dict]:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"null")


def answers(url: str) -> bool:
    try:
        return http_json("GET", url + "/health", timeout_s=1.0)[0] == 200
    except (urllib.error.URLError, ConnectionError, TimeoutError, ValueError):
        return False


def free_base_port(count: int = 2) -> int:
    """A port P with P..P+count-1 all free on 127.0.0.1, below the ephemeral range."""
    return netkit.free_port_range(count)


@dataclasses.dataclass(frozen=True)
class Result:
    code: int
    out: str
    err: str

    @property
    def json(self) -> dict:
        return json.loads(self.out)

    def kinds(self) -> list[tuple[str, str, str | None]]:
        """(kind, target, adapter) of each planned action, in plan order."""
        return [(a["kind"], a["target"], a.get("adapter")) for a in self.json["plan"]["actions"]]

    def outcomes(self) -> dict[tuple[str, str, str | None], dict]:
        return {(o["action"]["kind"], o["action"]["target"], o["action"].get("adapter")): o
                for o in self.json["result"]["outcomes"]}


class Fleet:
    """One throwaway fleet: its directory, fleet.yaml, adapters, CLI calls and observations."""

    def __init__(self, runtime: str, name: str, directory: pathlib.Path, capsys, docker_client=None):
        self.runtime = runtime
        self.name = name
        self.dir = directory
        self.file = directory / "fleet.yaml"
        self.base_port = free_base_port(3)  # two engine replicas, then the router
        self.capsys = capsys
        self.docker_client = docker_client
        self.servers_env: dict[str, str] = {}
        self.router = False  # the router scenarios turn it on; the rest assert engine actions only
        self.routing: dict | None = None
        self.other_versions: dict[str, list[str]] = {}  # specialist → versions kept beside the active one
        self.adapter("python", "1.0.0")

    # -- the fleet file and its adapters ------------------------------------------------------

    def adapter(self, name: str, version: str, arch=TINY_LLAMA, rank: int = 8) -> pathlib.Path:
        return write_adapter(self.dir / "adapters" / name / version, arch, rank=rank, base_model=MODEL)

    def write(self, specialists=(("python", "1.0.0"),), replicas: int = 1, max_model_len: int = 1024) -> None:
        """fleet.yaml with one server; `rank:` is left out so only the engine judges adapter files."""
        server = {"name": "main", "replicas": replicas, "gpu_memory_utilization": 0.2,
                  "lora": {"max_loras": 2, "max_cpu_loras": 4, "max_lora_rank": 8}}
        if self.servers_env:
            server["env"] = dict(self.servers_env)
        document = {
            "name": self.name,
            "base_model": {"id": MODEL, "max_model_len": max_model_len},
            "gpus": [{"type": "sim", "count": 1}],
            "servers": [server],
            "specialists": [self._specialist(n, v) for n, v in specialists],
            "runtime": {"target": self.runtime, "engine": "sim", "base_port": self.base_port,
                        "adapter_roots": [str(self.dir / "adapters")],
                        "router": {"port": self.base_port + 2} if self.router else {"enabled": False}},
        }
        if self.routing is not None:
            document["routing"] = self.routing
        self.file.write_text(yaml.safe_dump(document, sort_keys=False))

    def _specialist(self, name: str, version: str) -> dict:
        entry = {"name": name, "version": version, "path": f"./adapters/{name}/{version}", "keywords": [name]}
        others = self.other_versions.get(name)
        if others:
            entry["versions"] = [{"version": v, "path": f"./adapters/{name}/{v}"} for v in others]
        return entry

    def served_path(self, name: str, version: str) -> str:
        return str(self.dir / "adapters" / name / version)

    # -- the CLI, in-process ---------------------------------------------------------------------

    def cli(self, *args: str) -> Result:
        self.capsys.readouterr()
        code = app.main(list(args))
        captured = self.capsys.readouterr()
        return Result(code, captured.out, captured.err)

    def apply(self) -> Result:
        """`fleetspec apply FILE --format json` (JSON implies --yes)."""
        result = self.cli("apply", str(self.file), "--format", "json")
        assert result.out, f"apply printed no JSON; stderr:\n{result.err}"
        return result

    def converged(self) -> Result:
        result = self.apply()
        assert result.code == 0, result.err + result.out
        assert all(o["status"] == "ok" for o in (result.json["result"] or {"outcomes": []})["outcomes"]), result.out
        return result

    # -- what really runs ------------------------------------------------------------------------

    def driver(self):
        return drivers_pkg.for_runtime(self.runtime, self.file, self.name)

    def containers(self) -> list:
        return self.driver().observe(self.name)

    def snapshot(self) -> dict[str, tuple[str, str | None, str]]:
        """container name → (id, start time, status): what changes when anything restarts."""
        return {c.name: (c.id, c.started_at, c.status) for c in self.containers()}

    def url(self, replica: int = 0) -> str:
        return f"http://127.0.0.1:{self.base_port + replica}"

    def models(self, replica: int = 0) -> dict:
        status, body = http_json("GET", self.url(replica) + "/v1/models")
        assert status == 200, body
        return body

    def served(self, replica: int = 0) -> dict[str, str]:
        """Adapters the engine serves (cards with a parent) → their paths; each must hang off the base."""
        cards = [c for c in self.models(replica)["data"] if c.get("parent")]
        assert all(c["parent"] == MODEL for c in cards), cards
        return {c["id"]: c["root"] for c in cards}

    def complete(self, model: str, replica: int = 0) -> tuple[int, dict]:
        return http_json("POST", self.url(replica) + "/v1/completions", {"model": model, "prompt": "hello"})

    def desired_hash(self, replica: int = 0) -> str:
        return session.prepare(self.file).desired.replicas[("main", replica)].container.spec_hash()

    # -- teardown --------------------------------------------------------------------------------

    def destroy(self) -> None:
        if self.file.exists():
            with contextlib.suppress(Exception):
                self.cli("destroy", str(self.file), "--yes")
        driver = self.driver()
        for container in driver.observe(self.name):  # what destroy could not reach (or a broken file)
            with contextlib.suppress(Exception):
                driver.remove(container.id)
        left = [c.name for c in driver.observe(self.name)]
        assert left == [], f"containers of fleet {self.name} survived teardown: {left}"


@pytest.fixture(params=RUNTIMES)
def fleet(request, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("FLEETSPEC_DEBUG", "1")  # a bug in fleetspec shows its traceback, not a sentence
    runtime = request.param
    client = None
    if runtime == "docker":
        client = request.getfixturevalue("docker_client")
        request.getfixturevalue("sim_image")
        name = request.getfixturevalue("docker_fleet").name  # its teardown sweeps by label after ours
    else:
        name = f"fsl-{os.getpid()}-{next(_counter)}"
    # Docker bind-mounts the adapter directory at the same path, so keep it absolute and plain.
    fleet = Fleet(runtime, name, tmp_path, capsys, client)
    yield fleet
    fleet.destroy()


# --- scenarios ---------------------------------------------------------------------------------


def test_create_from_nothing_starts_the_engine_and_loads_every_adapter(fleet):
    fleet.adapter("sql", "1.0.0")
    fleet.write(specialists=[("python", "1.0.0"), ("sql", "1.0.0")])
    assert fleet.containers() == []

    result = fleet.converged()

    assert result.kinds() == [("create", "main/0", None), ("load-adapter", "main/0", "python--1.0.0"),
                              ("load-adapter", "main/0", "sql--1.0.0")]
    assert result.json["plan"]["restarts"] == 0
    [container] = fleet.containers()
    assert (container.name, container.status, container.server, container.replica, container.role) == (
        f"{fleet.name}-main-0", "running", "main", 0, "engine")
    assert container.spec_hash == fleet.desired_hash()
    base = [c for c in fleet.models()["data"] if not c.get("parent")]
    assert [(c["id"], c["max_model_len"]) for c in base] == [(MODEL, 1024)]
    assert fleet.served() == {"python--1.0.0": fleet.served_path("python", "1.0.0"),
                              "sql--1.0.0": fleet.served_path("sql", "1.0.0")}
    status, body = fleet.complete("sql--1.0.0")
    assert status == 200 and body["model"] == "sql--1.0.0"
    assert body["choices"][0]["text"].startswith(f"model=sql--1.0.0 adapter=sql--1.0.0 base={MODEL} ")

    shown = fleet.cli("status", str(fleet.file), "--format", "json")
    assert shown.code == 0 and shown.json["in_sync"] is True
    assert [(r["container"], r["healthy"], r["adapters"]) for r in shown.json["replicas"]] == [
        (f"{fleet.name}-main-0", True, ["python--1.0.0", "sql--1.0.0"])]


def test_second_apply_changes_nothing(fleet):
    fleet.write()
    fleet.converged()
    before = fleet.snapshot()

    again = fleet.apply()
    human = fleet.cli("apply", str(fleet.file), "--yes")

    assert again.code == 0 and again.json["plan"]["changes"] is False and again.json["result"] is None
    assert again.json["plan"]["actions"] == []
    assert human.code == 0 and "No changes." in human.out
    assert fleet.snapshot() == before
    assert fleet.served() == {"python--1.0.0": fleet.served_path("python", "1.0.0")}


def test_adding_an_adapter_loads_it_without_a_restart(fleet):
    fleet.write()
    fleet.converged()
    before = fleet.snapshot()
    fleet.adapter("sql", "1.0.0")
    fleet.write(specialists=[("python", "1.0.0"), ("sql", "1.0.0")])

    result = fleet.converged()

    assert result.kinds() == [("load-adapter", "main/0", "sql--1.0.0")]
    assert result.json["plan"]["restarts"] == 0
    assert fleet.snapshot() == before
    assert set(fleet.served()) == {"python--1.0.0", "sql--1.0.0"}
    assert fleet.complete("sql--1.0.0")[0] == 200


def test_bumping_a_version_loads_the_new_name_then_unloads_the_old(fleet):
    fleet.write()
    fleet.converged()
    before = fleet.snapshot()
    fleet.adapter("python", "1.1.0")
    fleet.write(specialists=[("python", "1.1.0")])

    result = fleet.converged()

    # New version under a new, immutable served name first; the old one goes only afterwards.
    assert result.kinds() == [("load-adapter", "main/0", "python--1.1.0"),
                              ("unload-adapter", "main/0", "python--1.0.0")]
    assert fleet.snapshot() == before
    assert fleet.served() == {"python--1.1.0": fleet.served_path("python", "1.1.0")}
    assert fleet.complete("python--1.1.0")[0] == 200
    status, body = fleet.complete("python--1.0.0")
    assert status == 404 and body["error"]["message"].startswith(
        "The model `python--1.0.0` does not exist.")


def test_a_failing_new_version_leaves_the_old_one_serving(fleet):
    fleet.write()
    fleet.converged()
    # Not on disk: the plan only warns (adapters often live on the serving hosts); the engine refuses it.
    fleet.write(specialists=[("python", "2.0.0")])

    result = fleet.apply()

    assert result.code == 1
    outcomes = result.outcomes()
    failed = outcomes[("load-adapter", "main/0", "python--2.0.0")]
    assert failed["status"] == "failed"
    missing = fleet.served_path("python", "2.0.0")
    # vLLM masks paths in its error messages (sanitize_message); fleetspec passes its words on as-is.
    assert failed["message"].endswith(
        sanitize_message(f"Loading lora python--2.0.0 failed: No adapter found for {missing}"))
    kept = outcomes[("unload-adapter", "main/0", "python--1.0.0")]
    assert (kept["status"], kept["message"]) == ("skipped", "kept serving: its successor python--2.0.0 did not load")
    assert fleet.served() == {"python--1.0.0": fleet.served_path("python", "1.0.0")}
    assert fleet.complete("python--1.0.0")[0] == 200


def test_removing_an_adapter_unloads_it_without_a_restart(fleet):
    fleet.adapter("sql", "1.0.0")
    fleet.write(specialists=[("python", "1.0.0"), ("sql", "1.0.0")])
    fleet.converged()
    before = fleet.snapshot()
    fleet.write(specialists=[("python", "1.0.0")])

    result = fleet.converged()

    assert result.kinds() == [("unload-adapter", "main/0", "sql--1.0.0")]
    assert fleet.snapshot() == before
    assert set(fleet.served()) == {"python--1.0.0"}
    assert fleet.complete("sql--1.0.0")[0] == 404


def test_changing_max_model_len_replaces_the_container_and_reloads_adapters(fleet):
    fleet.write(max_model_len=1024)
    fleet.converged()
    [old] = fleet.containers()
    fleet.write(max_model_len=2048)

    result = fleet.converged()

    assert result.kinds() == [("replace", "main/0", None), ("load-adapter", "main/0", "python--1.0.0")]
    replace = result.json["plan"]["actions"][0]
    assert replace["disruption"] == "restart" and "--max-model-len 1024 → 2048" in replace["changes"]
    [new] = fleet.containers()
    assert new.id != old.id and new.running and new.spec_hash == fleet.desired_hash() != old.spec_hash
    base = [c for c in fleet.models()["data"] if not c.get("parent")]
    assert [c["max_model_len"] for c in base] == [2048]
    assert fleet.served() == {"python--1.0.0": fleet.served_path("python", "1.0.0")}


def test_scaling_one_to_two_to_one_touches_only_the_extra_replica(fleet):
    fleet.write(replicas=1)
    fleet.converged()
    first = fleet.snapshot()
    fleet.write(replicas=2)

    out = fleet.converged()

    assert out.kinds() == [("create", "main/1", None), ("load-adapter", "main/1", "python--1.0.0")]
    two = fleet.snapshot()
    assert set(two) == {f"{fleet.name}-main-0", f"{fleet.name}-main-1"}
    assert two[f"{fleet.name}-main-0"] == first[f"{fleet.name}-main-0"]
    assert set(fleet.served(replica=1)) == {"python--1.0.0"}
    assert fleet.complete("python--1.0.0", replica=1)[0] == 200

    fleet.write(replicas=1)
    back = fleet.converged()

    assert back.kinds() == [("remove", "main/1", None)]
    assert back.json["plan"]["actions"][0]["reason"] == "server main now has fewer replicas"
    assert fleet.snapshot() == first
    assert not answers(fleet.url(replica=1))


def test_a_container_removed_behind_fleetspecs_back_is_restored(fleet):
    fleet.write()
    fleet.converged()
    [old] = fleet.containers()
    if fleet.runtime == "docker":
        fleet.docker_client.api.remove_container(old.id, force=True)
        expected = "create"
    else:  # a local engine "removed" out of band is a process someone killed
        record = json.loads((drivers_pkg.run_dir(fleet.file, fleet.name) / "procs" / f"{old.name}.json").read_text())
        os.kill(record["pid"], signal.SIGKILL)
        wait_for(lambda: not fleet.containers()[0].running, 10, "the killed engine to be seen as exited")
        expected = "replace"
    assert not answers(fleet.url())

    result = fleet.converged()

    assert result.kinds() == [(expected, "main/0", None), ("load-adapter", "main/0", "python--1.0.0")]
    [new] = fleet.containers()
    assert new.id != old.id and new.running
    assert set(fleet.served()) == {"python--1.0.0"}
    assert fleet.apply().json["plan"]["changes"] is False


def _leftover(fleet, name: str, slot_labels: dict[str, str], *, running: bool):
    """A container of the fleet that fleetspec did not start: labels only, a process that idles."""
    idle = "import time; time.sleep(600)" if running else "pass"
    all_labels = {labels.FLEET: fleet.name, labels.ROLE: labels.ROLE_ENGINE, **slot_labels}
    if fleet.runtime == "docker":
        image = session.environment_for(session.prepare(fleet.file).fleet.spec).sim_image
        container = fleet.docker_client.containers.create(image, ["python3", "-c", idle], name=name,
                                                          labels=all_labels, init=True, detach=True)
        if running:
            container.start()
        return container.id
    spec = desired.ContainerSpec(name=name, image="local", argv=[PY, "-c", idle], labels=all_labels)
    return fleet.driver().create(spec)


def test_orphan_containers_of_the_fleet_are_removed(fleet):
    fleet.write()
    fleet.converged()
    before = fleet.snapshot()
    retired = _leftover(fleet, f"{fleet.name}-retired-0", {labels.SERVER: "retired", labels.REPLICA: "0"},
                        running=True)
    duplicate = _leftover(fleet, f"{fleet.name}-main-0-old", {labels.SERVER: "main", labels.REPLICA: "0"},
                          running=False)
    # The duplicate has exited (a crashed copy), so the running engine keeps the slot.
    wait_for(lambda: {c.id: c.running for c in fleet.containers()}.get(duplicate) is False
             and len(fleet.containers()) == 3, 10, "the leftovers to be observed, the duplicate exited")

    result = fleet.converged()

    removed = {(a["target"], a["container_id"]) for a in result.json["plan"]["actions"] if a["kind"] == "remove"}
    assert removed == {("retired/0", retired), (f"{fleet.name}-main-0-old", duplicate)}
    assert [k for k, _, _ in result.kinds()] == ["remove", "remove"]
    assert fleet.snapshot() == before
    assert set(fleet.served()) == {"python--1.0.0"}


def test_adapters_the_engine_would_refuse_are_caught_before_anything_starts(fleet):
    # `rank:` is not in the YAML: fleetspec reads the files themselves and quotes what vLLM would say.
    fleet.adapter("wide", "1.0.0", rank=64)
    fleet.adapter("alien", "1.0.0", arch=BIGGER_LLAMA)  # hidden 128: trained for another base model
    fleet.write(specialists=[("python", "1.0.0"), ("wide", "1.0.0"), ("alien", "1.0.0")])

    refused = fleet.cli("apply", str(fleet.file), "--yes")

    assert refused.code == 1
    assert (f"error: specialists[1].path: {fleet.served_path('wide', '1.0.0')} has rank 64, above max_lora_rank 8 "
            'of server main; vLLM refuses to load it: "LoRA rank 64 is greater than max_lora_rank 8."') in refused.err
    assert (f"error: specialists[2].path: {fleet.served_path('alien', '1.0.0')} was trained for a different base "
            "model") in refused.err
    assert fleet.containers() == []


def test_bad_adapters_are_rejected_with_the_engines_words_while_the_others_load(fleet):
    # The files go bad between plan and load (a training job overwrote them; one was never copied),
    # so only the engine can refuse them: driven through the session steps the CLI runs.
    for name in ("wide", "alien"):
        fleet.adapter(name, "1.0.0")
    fleet.write(specialists=[("python", "1.0.0"), ("wide", "1.0.0"), ("alien", "1.0.0"), ("ghost", "1.0.0")])
    prepared = session.prepare(fleet.file)
    assert [d.code for d in prepared.warnings if d.code == "adapter-missing"] == ["adapter-missing"]  # ghost
    fleet.adapter("wide", "1.0.0", rank=64)
    fleet.adapter("alien", "1.0.0", arch=BIGGER_LLAMA)
    driver = session.open_driver(prepared)

    reconcile_plan, _ = session.live_plan(prepared, driver)
    result, _ = session.apply(prepared, driver, reconcile_plan)

    assert not result.ok
    outcomes = {(o.action.kind.value, o.action.adapter): o for o in result.outcomes}
    assert outcomes[("create", None)].status == outcomes[("load-adapter", "python--1.0.0")].status == "ok"
    engine_said = {name: outcomes[("load-adapter", f"{name}--1.0.0")] for name in ("wide", "alien", "ghost")}
    assert {o.status for o in engine_said.values()} == {"failed"}
    assert engine_said["wide"].message.endswith(
        "Call to add_lora method failed: LoRA rank 64 is greater than max_lora_rank 8.")
    assert engine_said["alien"].message.endswith(
        "Call to add_lora method failed: The size of tensor a (64) must match the size of tensor b (128) at "
        "non-singleton dimension 1")
    assert engine_said["ghost"].message.endswith(sanitize_message(
        f"Loading lora ghost--1.0.0 failed: No adapter found for {fleet.served_path('ghost', '1.0.0')}"))
    assert fleet.served() == {"python--1.0.0": fleet.served_path("python", "1.0.0")}
    started = fleet.snapshot()

    fleet.adapter("wide", "1.0.1")  # the fix: a retrained adapter under a new version; drop the others
    fleet.write(specialists=[("python", "1.0.0"), ("wide", "1.0.1")])
    fixed = fleet.converged()

    assert fixed.kinds() == [("load-adapter", "main/0", "wide--1.0.1")]
    assert set(fleet.served()) == {"python--1.0.0", "wide--1.0.1"}
    assert fleet.snapshot() == started
    assert fleet.apply().json["plan"]["changes"] is False


HOLDER = """
import pathlib, sys
from fleetspec.reconcile import state
with state.lock(pathlib.Path(sys.argv[1]), sys.argv[2], "fleetspec apply (a test holding the lock)"):
    print("held", flush=True)
    sys.stdin.read()
"""


def test_a_second_concurrent_apply_exits_at_once_naming_the_holder(fleet):
    fleet.write()
    holder = subprocess.Popen([PY, "-c", HOLDER, str(fleet.file), fleet.name], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "held\n"
        started = time.monotonic()
        refused = fleet.cli("apply", str(fleet.file), "--yes")
        elapsed = time.monotonic() - started

        assert refused.code == 1
        assert f"is being changed by pid {holder.pid} on {socket.gethostname()}" in refused.err
        assert "(`fleetspec apply (a test holding the lock)`" in refused.err
        assert elapsed < 5, f"the refused apply took {elapsed:.1f} s; it must not wait for the lock"
        assert fleet.containers() == []
    finally:
        holder.stdin.close()
        holder.wait(timeout=10)

    fleet.converged()
    assert set(fleet.served()) == {"python--1.0.0"}


def test_apply_killed_mid_way_is_converged_by_the_next_apply(fleet):
    fleet.servers_env = {"FLEETSPEC_SIM_STARTUP_SECONDS": "3"}  # each engine "loads" for 3 s
    fleet.write(replicas=2)
    log = fleet.dir / "killed-apply.log"
    with open(log, "wb") as sink:
        victim = subprocess.Popen([PY, "-m", "fleetspec", "apply", str(fleet.file), "--yes"], cwd=fleet.dir,
                                  stdout=sink, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_for(lambda: fleet.containers() or victim.poll() is not None, 60, "the first container")
        assert victim.poll() is None, log.read_text()
        victim.send_signal(signal.SIGKILL)
        assert victim.wait(timeout=10) == -signal.SIGKILL
    finally:
        if victim.poll() is None:
            victim.kill()
            victim.wait(timeout=10)
    assert len(fleet.containers()) == 1  # killed while main/0 was still loading

    resumed = fleet.cli("apply", str(fleet.file), "--yes")

    assert resumed.code == 0, resumed.err + resumed.out
    assert f"the previous run (pid {victim.pid}, `fleetspec apply`" in resumed.err
    found = fleet.containers()
    assert sorted((c.name, c.status) for c in found) == [(f"{fleet.name}-main-0", "running"),
                                                          (f"{fleet.name}-main-1", "running")]
    assert all(set(fleet.served(replica=r)) == {"python--1.0.0"} for r in (0, 1))
    assert fleet.apply().json["plan"]["changes"] is False
    assert fleet.cli("status", str(fleet.file), "--format", "json").json["in_sync"] is True


def test_plan_detailed_exitcode_follows_the_live_fleet(fleet):
    fleet.write()
    pending = fleet.cli("plan", str(fleet.file), "--detailed-exitcode")
    assert pending.code == 2, f"plan must exit 2 while the live fleet lags the file, got {pending.code}: {pending.err}"
    fleet.converged()
    assert fleet.cli("plan", str(fleet.file), "--detailed-exitcode").code == 0
    fleet.adapter("sql", "1.0.0")
    fleet.write(specialists=[("python", "1.0.0"), ("sql", "1.0.0")])
    assert fleet.cli("plan", str(fleet.file), "--detailed-exitcode").code == 2


def test_state_file_records_adapter_ids_that_are_never_reused(fleet):
    fleet.write()
    fleet.converged()
    fleet.adapter("python", "1.1.0")
    fleet.write(specialists=[("python", "1.1.0")])
    fleet.converged()
    fleet.write(specialists=[("python", "1.0.0")])  # back to the old version: its id comes back, no new one
    fleet.converged()

    recorded = state.load(fleet.file, fleet.name)
    assert recorded.lora_ids == {"python--1.0.0": 1, "python--1.1.0": 2} and recorded.next_lora_id == 3
    assert recorded.last_applied_text == fleet.file.read_text()


# --- the router as part of the fleet ------------------------------------------------------------


def ask_router(fleet, prompt: str, session_key: str | None = None) -> tuple[dict, str]:
    """(response headers, completion text) of an `auto` request through the fleet's router."""
    headers = {"Content-Type": "application/json"}
    if session_key:
        headers["x-session-id"] = session_key
    request = urllib.request.Request(f"http://127.0.0.1:{fleet.base_port + 2}/v1/completions",
                                     json.dumps({"model": "auto", "prompt": prompt}).encode(), headers)
    with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310 - our own router
        return {k.lower(): v for k, v in response.headers.items()}, json.loads(response.read())["choices"][0]["text"]


def router_container(fleet):
    (router,) = [c for c in fleet.containers() if c.role == labels.ROLE_ROUTER]
    return router


def test_the_router_routes_by_rule_and_follows_a_version_bump_without_restarting(fleet):
    fleet.router = True
    fleet.adapter("sql", "1.0.0")
    fleet.write(specialists=[("python", "1.0.0"), ("sql", "1.0.0")])
    fleet.converged()
    started = router_container(fleet)

    headers, text = ask_router(fleet, "why does my python import fail")
    assert (headers["x-fleetspec-specialist"], headers["x-fleetspec-version"]) == ("python", "1.0.0")
    assert "adapter=python--1.0.0" in text

    fleet.adapter("python", "1.1.0")
    fleet.write(specialists=[("python", "1.1.0"), ("sql", "1.0.0")])
    result = fleet.converged()

    assert result.kinds() == [("load-adapter", "main/0", "python--1.1.0"), ("update-router", "router", None),
                              ("unload-adapter", "main/0", "python--1.0.0")]
    assert router_container(fleet) == started  # same id, same start: the router re-read its config
    headers, text = ask_router(fleet, "why does my python import fail")
    assert headers["x-fleetspec-version"] == "1.1.0" and "adapter=python--1.1.0" in text
    assert ask_router(fleet, "hello there")[0]["x-fleetspec-rule"] == "fallback"


def test_a_split_rollout_moves_traffic_through_fleet_file_edits(fleet):
    fleet.router = True
    fleet.adapter("python", "1.1.0")
    fleet.other_versions = {"python": ["1.1.0"]}
    fleet.routing = {"splits": [{"specialist": "python", "weights": {"1.0.0": 90, "1.1.0": 10}}]}
    fleet.write()
    fleet.converged()
    engines = {k: v for k, v in fleet.snapshot().items() if not k.endswith("-router")}

    versions = [ask_router(fleet, "python question", f"user-{i}")[0]["x-fleetspec-version"] for i in range(200)]
    assert 5 <= versions.count("1.1.0") <= 40  # 10 % of 200, give or take hashing
    assert {ask_router(fleet, "python again", "user-7")[0]["x-fleetspec-version"] for _ in range(5)} == {versions[7]}

    fleet.routing = {"splits": [{"specialist": "python", "weights": {"1.0.0": 0, "1.1.0": 100}}]}
    fleet.write()
    result = fleet.converged()

    assert ("update-router", "router", None) in result.kinds()
    assert {ask_router(fleet, "python question", f"user-{i}")[0]["x-fleetspec-version"] for i in range(50)} == {"1.1.0"}
    assert {k: v for k, v in fleet.snapshot().items() if not k.endswith("-router")} == engines


@pytest.mark.parametrize("breakage", [("max_loras: 2", "max_loras: [oops"), ("max_loras: 2", "max_loras: many")],
                         ids=["yaml-syntax", "bad-value"])
def test_destroy_works_while_the_fleet_file_is_broken(fleet, breakage):
    fleet.write()
    fleet.converged()
    fleet.file.write_text(fleet.file.read_text().replace(*breakage))

    result = fleet.cli("destroy", str(fleet.file), "--yes")

    assert result.code == 0, result.err
    assert f"destroying fleet {fleet.name} by the name it gives" in result.err
    assert fleet.containers() == []


def test_rollback_reapplies_the_fleet_file_applied_before_the_last_one(fleet):
    fleet.write()
    fleet.converged()
    before = fleet.snapshot()
    fleet.adapter("python", "1.1.0")
    fleet.write(specialists=[("python", "1.1.0")])
    fleet.converged()

    result = fleet.cli("rollback", str(fleet.file), "--yes")

    assert result.code == 0, result.err
    assert fleet.served() == {"python--1.0.0": fleet.served_path("python", "1.0.0")}
    assert fleet.snapshot() == before  # adapters moved back hot; no engine restarted
    assert "still holds the newer version" in result.err
    again = fleet.cli("rollback", str(fleet.file), "--yes")  # back to the newer one: rollback toggles
    assert again.code == 0 and fleet.served() == {"python--1.1.0": fleet.served_path("python", "1.1.0")}


def test_rollback_without_history_says_so(fleet):
    fleet.write()
    fleet.converged()
    result = fleet.cli("rollback", str(fleet.file), "--yes")
    assert result.code == 1
    assert "nothing to roll back to" in result.err


def test_a_noop_apply_takes_the_fast_path_and_drift_sends_it_back_to_the_full_one(fleet):
    """The fast path (every runtime fleetspec runs) judges the real fleet with the full path's
    definition of converged: the record a converged apply leaves answers the next plain apply,
    and an adapter unloaded behind fleetspec's back makes it step aside."""
    from fleetspec.cli import entry
    from fleetspec.engine_api import client as engine_client
    from fleetspec.reconcile import fastpath

    fleet.write()
    fleet.converged()
    assert fastpath.is_noop(fleet.file)
    fleet.capsys.readouterr()
    assert entry.main(["apply", str(fleet.file)]) == 0
    assert "The running fleet matches the fleet file." in fleet.capsys.readouterr().out

    assert engine_client.EngineClient(fleet.url()).unload_adapter("python--1.0.0")
    assert not fastpath.is_noop(fleet.file)
    reloaded = fleet.converged()
    assert reloaded.kinds() == [("load-adapter", "main/0", "python--1.0.0")]
    assert fastpath.is_noop(fleet.file)
