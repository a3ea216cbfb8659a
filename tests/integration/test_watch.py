"""`fleetspec watch` as a user runs it: a subprocess on a throwaway fleet, on the local runtime and on
Docker (sim image). Edits are saved the way editors save them; drift is made by hand (a killed
container, an adapter unloaded through the engine's API) and must be repaired.

Every wait is on a condition with a deadline. Teardown stops the watcher with SIGTERM, then runs
`fleetspec destroy --yes`, passed or failed.
"""

from __future__ import annotations

import json
import os
import pathlib
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

import pytest
from netkit import free_port

REPO = pathlib.Path(__file__).resolve().parents[2]
ADAPTERS = ("python", "sql", "shell")
CYCLE = re.compile(r"^\[\d\d:\d\d:\d\d\] cycle \d+, woken by ")


# --- helpers -----------------------------------------------------------------------------------


def wait_for(condition, timeout_s: float, what: str, log=None):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.05)
    tail = "\n".join(log.lines[-30:]) if log is not None else ""
    pytest.fail(f"{what} did not happen within {timeout_s} s" + (f"; watch printed:\n{tail}" if tail else ""))




def fleet_text(name: str, target: str, port: int, router_port: int, adapters=("python", "sql"), rank: int = 8,
               comment: str = "") -> str:
    specialists = "".join(
        f"  - {{name: {a}, version: 1.0.0, path: ./adapters/{a}/1.0.0, rank: {8 if a != 'shell' else 4}}}\n"
        for a in adapters
    )
    return (
        f"# {comment}\n"
        f"name: {name}\n"
        "base_model: {id: fleetspec/tiny-test-llama, max_model_len: 2048}\n"
        "gpus: [{type: sim, count: 1}]\n"
        "servers:\n"
        "  - name: main\n"
        "    gpu_memory_utilization: 0.45\n"
        "    lora:\n"
        "      max_loras: 2\n"
        "      max_cpu_loras: 3\n"
        f"      max_lora_rank: {rank}\n"
        f"specialists:\n{specialists}"
        f"runtime: {{target: {target}, engine: sim, base_port: {port}, adapter_roots: [./adapters],\n"
        f"          router: {{port: {router_port}}}}}\n"
    )


def save_by_rename(path: pathlib.Path, text: str) -> None:
    """How vim and most IDEs save: write a temp file, then rename it over the original."""
    temp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    temp.write_text(text)
    os.replace(temp, path)


def save_in_place(path: pathlib.Path, text: str) -> None:
    """Truncate and write in two pieces: for a moment the file holds half of the new text."""
    with open(path, "w") as handle:
        handle.write(text[: len(text) // 2])
        handle.flush()
        os.fsync(handle.fileno())
        handle.write(text[len(text) // 2:])


def models(port: int) -> set[str] | None:
    """Adapters the engine serves, or None when it does not answer."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/models", timeout=1.0) as response:
            cards = json.loads(response.read())["data"]
    except (urllib.error.URLError, ConnectionError, TimeoutError, ValueError, KeyError):
        return None
    return {c["id"] for c in cards if c.get("parent")}


def served(*names: str) -> set[str]:
    return {f"{n}--1.0.0" for n in names}


def unload(port: int, name: str) -> int:
    request = urllib.request.Request(f"http://127.0.0.1:{port}/v1/unload_lora_adapter", method="POST",
                                     data=json.dumps({"lora_name": name}).encode(),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=5) as response:
        return response.status


class Watcher:
    """`fleetspec watch FILE` in a subprocess; its output (stdout and stderr) collected line by line."""

    def __init__(self, fleet_file: pathlib.Path, *args: str):
        self.lines: list[str] = []
        self.process = subprocess.Popen(
            [sys.executable, "-m", "fleetspec", "watch", str(fleet_file), *args], cwd=fleet_file.parent,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env={**os.environ, "NO_COLOR": "1"},
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.process.stdout:
            self.lines.append(line.rstrip("\n"))

    def cycles(self, since: int = 0) -> list[str]:
        return [line for line in self.lines[since:] if CYCLE.match(line)]

    def changing_cycles(self, since: int = 0) -> list[str]:
        return [line for line in self.cycles(since) if "no changes" not in line]

    def wait_cycles(self, count: int, since: int = 0, timeout_s: float = 60.0) -> list[str]:
        return wait_for(lambda: len(self.cycles(since)) >= count and self.cycles(since), timeout_s,
                        f"{count} watch cycle(s)", self)

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._reader.join(timeout=5)
        return self.process.returncode


class Runtime:
    """The two runtimes behind one face: container ids of the fleet, and killing one."""

    def __init__(self, target: str, fleet_file: pathlib.Path, name: str, docker_client=None):
        self.target, self.fleet_file, self.name, self.client = target, fleet_file, name, docker_client

    def containers(self) -> dict[str, str]:
        """Running engines (not the router): container name → id."""
        from fleetspec import drivers

        if self.target == "docker":
            from fleetspec.drivers import docker as docker_driver

            driver = docker_driver.DockerDriver(self.client)
        else:
            from fleetspec.drivers import local

            driver = local.LocalDriver(drivers.run_dir(self.fleet_file, self.name))
        return {c.name: c.id for c in driver.observe(self.name) if c.running and c.role == "engine"}

    def kill(self, container_name: str) -> None:
        if self.target == "docker":
            self.client.api.kill(self.containers()[container_name])
            return
        from fleetspec import drivers

        record = drivers.run_dir(self.fleet_file, self.name) / "procs" / f"{container_name}.json"
        os.kill(json.loads(record.read_text())["pid"], signal.SIGKILL)


@pytest.fixture(params=["local", "docker"])
def fleet(request, tmp_path):
    """A one-replica fleet (python and sql adapters) on a free port, watched by `fleetspec watch`."""
    if request.param == "docker":
        client = request.getfixturevalue("docker_client")
        request.getfixturevalue("sim_image")
        name = request.getfixturevalue("docker_fleet").name
    else:
        client, name = None, "watchtest"
    shutil.copytree(REPO / "adapters", tmp_path / "adapters")
    port, router_port = free_port(), free_port()
    path = tmp_path / "fleet.yaml"
    path.write_text(fleet_text(name, request.param, port, router_port))
    # A long interval where the test must prove that an event, not the periodic check, woke the loop.
    watcher = Watcher(path, "--interval", str(getattr(request.function, "watch_interval", 1)))
    handle = type("Fleet", (), {})()
    handle.path, handle.port, handle.name, handle.target, handle.watcher = path, port, name, request.param, watcher
    handle.runtime = Runtime(request.param, path, name, client)
    handle.text = lambda **kw: fleet_text(name, request.param, port, router_port, **kw)
    try:
        wait_for(lambda: models(port) == served("python", "sql"), 60, "the first apply", watcher)
        watcher.wait_cycles(1)
        yield handle
    finally:
        code = watcher.stop()
        path.write_text(fleet_text(name, request.param, port, router_port))  # destroy needs a valid file
        destroyed = subprocess.run([sys.executable, "-m", "fleetspec", "destroy", str(path), "--yes"],
                                   cwd=tmp_path, capture_output=True, text=True, timeout=120)
        assert code == 0, "\n".join(watcher.lines[-30:])
        assert destroyed.returncode == 0, destroyed.stderr
        assert watcher.lines[-1].endswith("Stopped watching; the fleet keeps running. "
                                          "`fleetspec destroy FILE` tears it down.")


# --- the scenarios -----------------------------------------------------------------------------


def test_an_edit_that_adds_an_adapter_converges_without_a_restart(fleet):
    before = fleet.runtime.containers()
    assert list(before) == [f"{fleet.name}-main-0"]
    mark = len(fleet.watcher.lines)
    save_by_rename(fleet.path, fleet.text(adapters=("python", "sql", "shell")))
    wait_for(lambda: models(fleet.port) == served("python", "sql", "shell"), 60, "the new adapter", fleet.watcher)
    assert fleet.runtime.containers() == before
    [line] = wait_for(lambda: fleet.watcher.changing_cycles(mark), 10, "the cycle line", fleet.watcher)
    assert "woken by fleet.yaml changed: loaded shell--1.0.0 on main/0" in line


def test_an_invalid_edit_changes_nothing_and_is_reported_with_its_location(fleet):
    before = fleet.runtime.containers()
    mark = len(fleet.watcher.lines)
    save_by_rename(fleet.path, fleet.text(adapters=("python",), rank=7))  # also drops sql: must not happen
    located = f"{fleet.path}:11:7: error: servers[0].lora.max_lora_rank: max_lora_rank must be one of 1, 8, 16"
    wait_for(lambda: any(located in line for line in fleet.watcher.lines[mark:]), 60, "the diagnostic", fleet.watcher)
    # Two more periodic cycles: the last good version is still enforced, nothing moved.
    fleet.watcher.wait_cycles(3, since=mark)
    assert fleet.runtime.containers() == before
    assert models(fleet.port) == served("python", "sql")
    invalid = [line for line in fleet.watcher.cycles(mark) if "fleet.yaml is" in line]
    assert "fleet.yaml is invalid (1 error, shown above); the last good version stays in force" in invalid[0]
    assert all("still invalid (same problems as shown before)" in line for line in invalid[1:])
    assert sum(located in line for line in fleet.watcher.lines) == 1  # shown once, not every cycle


def test_a_killed_container_is_restored_with_its_adapters(fleet):
    before = fleet.runtime.containers()
    mark = len(fleet.watcher.lines)
    fleet.runtime.kill(f"{fleet.name}-main-0")
    wait_for(lambda: (fleet.runtime.containers().keys() == before.keys()
                      and fleet.runtime.containers() != before
                      and models(fleet.port) == served("python", "sql")),
             # Generous: on Docker a replace first rebuilds the sim image if fleetspec's source changed.
             120, "the restored engine", fleet.watcher)
    def restoring():  # a cycle's line is printed when the cycle ends, a moment after the engine is back
        return [line for line in fleet.watcher.changing_cycles(mark)
                if "replaced main/0" in line or "created main/0" in line]

    wait_for(restoring, 30, "the cycle line of the restore", fleet.watcher)
    cycles = fleet.watcher.changing_cycles(mark)
    assert len(restoring()) == 1, cycles
    # Woken by the runtime's own news: the periodic check is 60 s away. (If the kill came within a
    # second of the first start, the replace waits out that second as a crash-loop guard.)
    woken = "container {}-main-0 died (exit 137)" if fleet.target == "docker" else "process {}-main-0 exited"
    assert f"woken by {woken.format(fleet.name)}: " in fleet.watcher.cycles(mark)[0]
    assert "main/0; loaded python--1.0.0 on main/0; loaded sql--1.0.0 on main/0" in restoring()[0], cycles


test_a_killed_container_is_restored_with_its_adapters.watch_interval = 60


def test_an_adapter_unloaded_through_the_engine_api_is_reloaded(fleet):
    before = fleet.runtime.containers()
    assert unload(fleet.port, "sql--1.0.0") == 200
    wait_for(lambda: models(fleet.port) == served("python", "sql"), 60, "the reload", fleet.watcher)
    assert fleet.runtime.containers() == before
    # Nothing emits an event for an unload through the API: the periodic re-observe (or any other wake) finds it.
    assert any("loaded sql--1.0.0 on main/0" in line for line in fleet.watcher.cycles())


def test_twenty_rapid_saves_cause_at_most_two_applies_and_never_a_half_written_file(fleet):
    mark = len(fleet.watcher.lines)
    final = fleet.text(adapters=("python", "sql", "shell"))
    for i in range(20):
        text = final if i == 19 else fleet.text(adapters=("python", "sql", "shell"), comment=f"draft {i}")
        (save_by_rename if i % 2 else save_in_place)(fleet.path, text)
        time.sleep(0.01)  # an editor's auto-save cadence, not a wait for a condition
    wait_for(lambda: models(fleet.port) == served("python", "sql", "shell"), 60, "the final content", fleet.watcher)
    fleet.watcher.wait_cycles(len(fleet.watcher.cycles(mark)) + 1, since=mark)  # one quiet cycle after
    changing = fleet.watcher.changing_cycles(mark)
    assert 1 <= len(changing) <= 2, changing
    after = fleet.watcher.lines[mark:]
    assert not any("error" in line or "unloaded" in line for line in after), after


def test_down_on_exit_tears_the_fleet_down_and_once_exits_after_one_cycle(tmp_path):
    shutil.copytree(REPO / "adapters", tmp_path / "adapters")
    port, router_port = free_port(), free_port()
    path = tmp_path / "fleet.yaml"
    path.write_text(fleet_text("downtest", "local", port, router_port))
    runtime = Runtime("local", path, "downtest")
    watcher = None
    try:
        once = subprocess.run([sys.executable, "-m", "fleetspec", "watch", str(path), "--once"], cwd=tmp_path,
                              capture_output=True, text=True, timeout=120)
        assert once.returncode == 0, once.stdout + once.stderr
        [line] = [line for line in once.stdout.splitlines() if CYCLE.match(line)]
        assert "woken by watch started: started main/0; loaded python--1.0.0 on main/0" in line
        assert models(port) == served("python", "sql") and list(runtime.containers()) == ["downtest-main-0"]

        watcher = Watcher(path, "--down-on-exit")
        watcher.wait_cycles(1)
        assert "no changes" in watcher.cycles()[0]  # --once left it converged
        assert watcher.stop() == 0, "\n".join(watcher.lines)
        assert watcher.lines[-1].endswith(
            "Tore the fleet down (2 removed: downtest-main-0, downtest-router).")  # engine and router, not "containers"
        assert runtime.containers() == {} and models(port) is None
    finally:
        if watcher is not None:
            watcher.stop()  # a no-op when it has stopped already
        subprocess.run([sys.executable, "-m", "fleetspec", "destroy", str(path), "--yes"], cwd=tmp_path,
                       capture_output=True, timeout=120)
