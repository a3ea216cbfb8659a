"""The no-op shortcut answers only when the inputs are unchanged and the world matches exactly."""

from __future__ import annotations

import contextlib
import fcntl
import http.server
import json
import socketserver
import subprocess
import sys
import threading
import urllib.parse

import pytest

from fleetspec.cli import entry
from fleetspec.compile import labels
from fleetspec.drivers import procs
from fleetspec.reconcile import convergence, fastpath

# These tests give the fast path a real world to read, nothing patched: process records naming a
# real process checked in /proc, a Docker API answering on a real unix socket, and an engine
# answering /v1/models over HTTP.

WANTED = convergence.Wanted((convergence.WantedReplica("main/0", "hash-a", {"code--1": "/a/code/1"}),))


class _Quiet(http.server.BaseHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass

    def answer(self, document) -> None:
        body = json.dumps(document).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@contextlib.contextmanager
def serving(server):
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


@pytest.fixture
def engine():
    """An engine answering /v1/models like vLLM with `engine.adapters` (served name → path)."""
    adapters = {"code--1": "/a/code/1"}

    class Handler(_Quiet):
        def do_GET(self):
            cards = [{"id": "base", "root": "/m"}] + [{"id": n, "root": p, "parent": "base"} for n, p in adapters.items()]
            self.answer({"object": "list", "data": cards})

    with serving(http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)) as server:
        server.adapters = adapters
        yield server


@pytest.fixture
def process():
    """A real process to stand for an engine; killed at the end."""
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    yield child
    child.kill()
    child.wait(timeout=10)


def write_process_record(run_dir, name, pid, slot_labels, process_id):
    record = {"id": process_id, "name": name, "pid": pid, "proc_start": procs.start_time(pid), "argv": [],
              "labels": {labels.FLEET: "demo", **slot_labels}, "ports": [], "gpu_ids": [], "cwd": "/",
              "log_offset": 0, "created_at": "", "started_at": ""}
    (run_dir / "procs").mkdir(parents=True, exist_ok=True)
    (run_dir / "procs" / f"{name}.json").write_text(json.dumps(record))


ENGINE_LABELS = {labels.SERVER: "main", labels.REPLICA: "0", labels.SPEC_HASH: "hash-a", labels.ROLE: labels.ROLE_ENGINE}


@pytest.fixture
def local_world(tmp_path, engine, process):
    """A local fleet recorded as converged: one engine process, its adapters served by `engine`."""
    fleet_file = tmp_path / "fleet.yaml"
    fleet_file.write_text("name: demo\n")
    run_dir = tmp_path / "run"
    write_process_record(run_dir, "demo-main-0", process.pid, ENGINE_LABELS, "p0")
    runtime = fastpath.Runtime("local", "127.0.0.1", run_dir=str(run_dir))
    fastpath.write_record(fleet_file, "demo", [], runtime, WANTED, {"p0": engine.server_address[1]})
    return fleet_file, run_dir


def test_unchanged_file_and_matching_local_processes_is_a_noop(local_world):
    fleet_file, _ = local_world
    assert fastpath.is_noop(fleet_file)


def test_a_dead_engine_process_takes_the_full_path(local_world, process):
    fleet_file, _ = local_world
    process.kill()
    process.wait(timeout=10)
    assert not fastpath.is_noop(fleet_file)


def test_a_reused_pid_is_not_our_engine(local_world, process):
    fleet_file, run_dir = local_world
    path = run_dir / "procs" / "demo-main-0.json"
    record = json.loads(path.read_text())
    record["proc_start"] += 1  # the same pid, started at another time: someone else's process
    path.write_text(json.dumps(record))
    assert not fastpath.is_noop(fleet_file)


def test_a_stray_process_of_the_fleet_takes_the_full_path(local_world, process):
    fleet_file, run_dir = local_world
    write_process_record(run_dir, "demo-old-0", process.pid, {labels.SERVER: "old", labels.REPLICA: "0"}, "p1")
    assert not fastpath.is_noop(fleet_file)


def test_an_adapter_unloaded_through_the_api_takes_the_full_path(local_world, engine):
    fleet_file, _ = local_world
    engine.adapters.clear()
    assert not fastpath.is_noop(fleet_file)


def test_an_engine_that_stops_answering_takes_the_full_path(local_world, engine):
    fleet_file, _ = local_world
    engine.shutdown()
    engine.server_close()
    assert not fastpath.is_noop(fleet_file)


def test_an_edited_fleet_file_takes_the_full_path(local_world):
    fleet_file, _ = local_world
    fleet_file.write_text("name: demo\n# edited\n")
    assert not fastpath.is_noop(fleet_file)


def test_a_held_lock_takes_the_full_path(local_world):
    fleet_file, _ = local_world
    lock = fleet_file.parent / ".fleetspec" / "demo.lock"
    with open(lock, "a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        assert not fastpath.is_noop(fleet_file)


def test_a_forgotten_or_missing_record_takes_the_full_path(local_world):
    fleet_file, _ = local_world
    fastpath.forget(fleet_file)
    assert not fastpath.is_noop(fleet_file)


class _UnixHttpServer(socketserver.ThreadingUnixStreamServer):
    daemon_threads = True


@pytest.fixture
def docker_api(tmp_path, monkeypatch):
    """The Docker engine's container list on a real unix socket; `docker_api.containers` is what it lists."""
    containers = [{"Id": "c0", "State": "running", "Labels": {labels.FLEET: "demo", **ENGINE_LABELS}}]

    class Handler(_Quiet):
        def address_string(self):
            return "docker"

        def do_GET(self):
            wanted = json.loads(urllib.parse.unquote(self.path.partition("filters=")[2]))
            fleet = wanted["label"][0].partition("=")[2]
            self.answer([c for c in containers if c["Labels"].get(labels.FLEET) == fleet])

    socket_path = tmp_path / "docker.sock"
    with serving(_UnixHttpServer(str(socket_path), Handler)) as server:
        server.containers = containers
        monkeypatch.setenv("DOCKER_HOST", f"unix://{socket_path}")
        yield server


@pytest.fixture
def docker_world(tmp_path, docker_api, engine):
    fleet_file = tmp_path / "fleet.yaml"
    fleet_file.write_text("name: demo\n")
    fastpath.write_record(fleet_file, "demo", [], fastpath.Runtime("docker", "127.0.0.1"), WANTED,
                          {"c0": engine.server_address[1]})
    return fleet_file


def test_unchanged_file_and_matching_containers_is_a_noop(docker_world):
    assert fastpath.is_noop(docker_world)


@pytest.mark.parametrize("drift", [
    [],  # removed behind fleetspec's back
    [{"Id": "c0", "State": "exited", "Labels": {labels.FLEET: "demo", **ENGINE_LABELS}}],  # died
    [{"Id": "c0", "State": "running", "Labels": {labels.FLEET: "demo", **ENGINE_LABELS}},
     {"Id": "stray", "State": "running", "Labels": {labels.FLEET: "demo"}}],  # an orphan
    [{"Id": "c9", "State": "running", "Labels": {labels.FLEET: "demo", **ENGINE_LABELS}}],  # replaced by hand
    [{"Id": "c0", "State": "running", "Labels": {labels.FLEET: "demo", **ENGINE_LABELS,
                                                 labels.SPEC_HASH: "hash-b"}}],  # other settings
])
def test_any_container_drift_takes_the_full_path(docker_world, docker_api, drift):
    docker_api.containers[:] = drift
    assert not fastpath.is_noop(docker_world)


def test_a_docker_engine_that_does_not_answer_takes_the_full_path(docker_world, tmp_path, monkeypatch):
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path / 'nobody.sock'}")
    assert not fastpath.is_noop(docker_world)


@pytest.mark.parametrize(("argv", "file"), [
    (["apply", "fleet.yaml"], "fleet.yaml"), (["apply", "--yes", "f.yaml"], "f.yaml"), (["apply", "f.yaml", "-y"], "f.yaml"),
    (["apply", "f.yaml", "--format", "json"], None), (["plan", "f.yaml"], None), (["apply"], None),
])
def test_only_plain_applies_are_candidates(argv, file):
    assert entry.noop_candidate(argv) == file


def test_the_shortcut_loads_only_the_standard_library_and_light_fleetspec_modules():
    """What `import fleetspec.reconcile.fastpath` pulls in, in a fresh interpreter: no pydantic,
    yaml or docker, and only the fleetspec modules that are themselves standard-library only."""
    import json
    import subprocess
    import sys

    probe = ("import json, sys; before = set(sys.modules); import fleetspec.reconcile.fastpath; "
             "print(json.dumps(sorted(m for m in set(sys.modules) - before "
             "if m.split('.')[0] not in sys.stdlib_module_names)))")
    loaded = json.loads(subprocess.run([sys.executable, "-c", probe], check=True, capture_output=True,
                                       text=True).stdout)
    assert set(loaded) <= {"fleetspec", "fleetspec.errors", "fleetspec.compile", "fleetspec.compile.labels",
                           "fleetspec.drivers", "fleetspec.drivers.files", "fleetspec.drivers.procs",
                           "fleetspec.drivers.docker_api",
                           "fleetspec.engine_api", "fleetspec.engine_api.client", "fleetspec.engine_api.contract",
                           "fleetspec.reconcile", "fleetspec.reconcile.convergence",
                           "fleetspec.reconcile.fastpath"}, loaded
