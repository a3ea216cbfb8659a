"""LocalDriver with real child processes: http.server, the sim engine, and processes that misbehave.

Every process a test starts is killed in fixture teardown, passed or failed: through the driver
first, then by the pids left in its records (if the driver itself is what broke).
"""

from __future__ import annotations

import contextlib
import gc
import itertools
import json
import os
import pathlib
import signal
import socket
import subprocess
import sys
import textwrap
import time
import urllib.error
import urllib.request

import pytest
from netkit import free_port, get

from fleetspec import drivers as drivers_pkg
from fleetspec import errors
from fleetspec.compile import desired, labels
from fleetspec.drivers import local
from fleetspec.sim import cli as sim_cli  # noqa: F401 - the engine below; a broken import fails, never skips

PY = sys.executable
_counter = itertools.count(1)


# --- helpers -----------------------------------------------------------------------------------


def wait_for(condition, timeout_s: float, what: str):
    """Poll `condition()` until it returns something truthy; fail the test at the deadline."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.02)
    pytest.fail(f"{what} did not happen within {timeout_s} s")




def http_ok(url: str):
    def check():
        try:
            return get(url, timeout_s=1.0)[0] == 200
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            return False
    return check




def proc_state(pid: int) -> str | None:
    """The process state letter from /proc (Z for a zombie); None when there is no such process."""
    try:
        text = pathlib.Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text[text.rindex(")") + 2:].split()[0]


def gone(pid: int) -> bool:
    return proc_state(pid) in (None, "Z")


class Fleet:
    def __init__(self, run_dir: pathlib.Path, name: str):
        self.run_dir = run_dir
        self.name = name

    def spec(self, argv, *, server="main", replica=0, port=None, **overrides) -> desired.ContainerSpec:
        fields = {
            "name": f"{self.name}-{server}-{replica}",
            "image": "local",
            "argv": argv,
            "ports": [desired.PortBinding(container_port=port, host_port=port)] if port else [],
            "labels": {labels.FLEET: self.name, labels.SERVER: server, labels.REPLICA: str(replica),
                       labels.ROLE: labels.ROLE_ENGINE},
        }
        return desired.ContainerSpec(**{**fields, **overrides})

    def record(self, name: str) -> dict:
        return json.loads((self.run_dir / "procs" / f"{name}.json").read_text())


@pytest.fixture
def fleet(tmp_path):
    fleet = Fleet(tmp_path / "run", f"fst-local-{os.getpid()}-{next(_counter)}")
    yield fleet
    _kill_everything(fleet.run_dir)


@pytest.fixture
def driver(fleet):
    return local.LocalDriver(fleet.run_dir, poll_s=0.02)


@pytest.fixture
def bystander():
    """A process the driver did not start: what a reused pid would point at. Killed afterwards."""
    child = subprocess.Popen([PY, "-c", "import time; time.sleep(600)"], start_new_session=True)
    yield child
    child.kill()
    child.wait(timeout=10)


def _kill_everything(run_dir: pathlib.Path) -> None:
    cleaner = local.LocalDriver(run_dir, poll_s=0.02, stop_grace_s=2)
    for path in sorted((run_dir / "procs").glob("*.json")):
        with contextlib.suppress(Exception):
            cleaner.remove(json.loads(path.read_text())["id"])
    for path in sorted((run_dir / "procs").glob("*.json")):  # the driver failed: kill by pid
        record = json.loads(path.read_text())
        if local._start_time(record["pid"]) == record["proc_start"]:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(record["pid"], signal.SIGKILL)


def http_server(fleet: Fleet, port: int, **overrides) -> desired.ContainerSpec:
    return fleet.spec([PY, "-m", "http.server", str(port), "--bind", "127.0.0.1"], port=port, **overrides)


# --- create, observe, remove -------------------------------------------------------------------


def test_http_server_is_started_observed_by_label_served_and_removed(driver, fleet, tmp_path):
    port = free_port()
    spec = http_server(fleet, port)
    container_id = driver.create(spec)
    running = driver.wait_running(container_id, timeout_s=10)

    [seen] = driver.observe(fleet.name)
    assert seen == running
    assert (seen.id, seen.name, seen.image, seen.status, seen.health) == (
        container_id, f"{fleet.name}-main-0", "local", "running", None)
    assert (seen.fleet, seen.server, seen.replica, seen.role) == (fleet.name, "main", 0, "engine")
    assert seen.spec_hash == spec.spec_hash()
    assert seen.ports == ((port, "127.0.0.1", port),) and seen.host_port == port
    assert len(container_id) == 64 and int(container_id, 16) >= 0
    assert driver.observe("some-other-fleet") == []

    record = fleet.record(spec.name)
    pid = record["pid"]
    assert (record["id"], record["argv"], record["image"]) == (container_id, list(spec.argv), "local")
    assert record["proc_start"] == local._start_time(pid)
    assert record["labels"][labels.SPEC_HASH] == spec.spec_hash()
    assert os.getpgid(pid) == pid and os.getsid(pid) == pid  # its own session: Ctrl-C does not reach it

    wait_for(http_ok(f"http://127.0.0.1:{port}/"), 10, "http.server answering")
    assert b"Directory listing for /" in get(f"http://127.0.0.1:{port}/")[1]
    assert '"GET / HTTP/1.1" 200' in wait_for(lambda: driver.logs_tail(container_id, 5), 5, "a log line")

    driver.remove(container_id)
    assert proc_state(pid) is None  # gone and reaped, not a zombie
    assert not (fleet.run_dir / "procs" / f"{spec.name}.json").exists()
    assert driver.observe(fleet.name) == []
    assert driver.logs_tail(container_id) == ""
    driver.remove(container_id)  # removing what is already gone is not an error


def test_sim_engine_serves_vllm_api_and_stops_on_sigterm(driver, fleet):
    port = free_port()
    spec = fleet.spec([PY, "-m", "fleetspec.sim", "serve", "tiny", "--host", "127.0.0.1", "--port", str(port)],
                      port=port, env={"FLEETSPEC_SIM_STARTUP_SECONDS": "0.3"})
    container_id = driver.create(spec)
    wait_for(http_ok(f"http://127.0.0.1:{port}/health"), 30, "the sim's /health")
    status, body = get(f"http://127.0.0.1:{port}/v1/models")
    assert status == 200
    assert [m["id"] for m in json.loads(body)["data"]] == ["tiny"]
    assert "Application startup complete." in driver.logs_tail(container_id, 20)

    pid = fleet.record(spec.name)["pid"]
    started = time.monotonic()
    driver.remove(container_id)
    assert time.monotonic() - started < 5  # SIGTERM stops it; no wait for the SIGKILL grace period
    assert proc_state(pid) is None


def test_environment_is_minimal_with_secrets_expanded_and_gpus_visible(driver, fleet, monkeypatch):
    monkeypatch.setenv("FST_TEST_SECRET", "s3cret")
    monkeypatch.setenv("FST_TEST_NOT_PASSED", "leak")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "7")
    spec = fleet.spec([PY, "-c", "import os, json; print(json.dumps(dict(os.environ)))"],
                      env={"TOKEN": "Bearer ${FST_TEST_SECRET}", "PLAIN": "1"}, gpu_ids=["0", "2"])
    container_id = driver.create(spec)
    wait_for(lambda: driver.observe(fleet.name)[0].status == "exited", 10, "the process exiting")

    env = json.loads(driver.logs_tail(container_id, 1))
    assert env["TOKEN"] == "Bearer s3cret" and env["PLAIN"] == "1"
    assert env["CUDA_VISIBLE_DEVICES"] == "0,2"
    assert "FST_TEST_NOT_PASSED" not in env and "FST_TEST_SECRET" not in env
    assert env["PATH"].split(os.pathsep)[0] == os.path.dirname(PY)
    markers = {local.MARK_FLEET_FILE, local.MARK_RUN_DIR, local.MARK_PROCESS}
    assert set(env) - {"TOKEN", "PLAIN", "CUDA_VISIBLE_DEVICES", "PYTHONUNBUFFERED", *markers} <= set(local._INHERITED_ENV)
    assert "s3cret" not in (fleet.run_dir / "procs" / f"{spec.name}.json").read_text()
    assert "s3cret" not in env[local.MARK_PROCESS]  # the marker holds the record's identity, never the env
    [seen] = driver.observe(fleet.name)
    assert (seen.exit_code, seen.ports) == (0, ())
    assert seen.spec_hash == spec.spec_hash()  # the reference is hashed, not the secret


def test_missing_secret_fails_before_anything_is_started(driver, fleet, monkeypatch):
    monkeypatch.delenv("FST_TEST_UNSET", raising=False)
    with pytest.raises(errors.PermanentError, match="FST_TEST_UNSET, which are not set"):
        driver.create(fleet.spec([PY, "-c", "pass"], env={"TOKEN": "${FST_TEST_UNSET}"}))
    assert driver.observe(fleet.name) == []


def test_exit_code_reaping_and_wait_running_failure(driver, fleet):
    spec = fleet.spec([PY, "-c", "import sys; print('model not found'); sys.exit(3)"])
    container_id = driver.create(spec)
    pid = fleet.record(spec.name)["pid"]
    wait_for(lambda: driver.observe(fleet.name)[0].status == "exited", 10, "the process exiting")
    assert proc_state(pid) is None  # observe reaped it: no zombie left while fleetspec runs
    [seen] = driver.observe(fleet.name)
    assert (seen.status, seen.exit_code, seen.host_port) == ("exited", 3, None)
    with pytest.raises(errors.PermanentError, match=r"exited with code 3 instead of starting(.|\n)*model not found"):
        driver.wait_running(container_id, timeout_s=5)
    assert driver.logs_tail(container_id) == "model not found\n"


# --- behind the driver's back ------------------------------------------------------------------


def test_kill_9_behind_the_drivers_back_is_observed_as_exited(driver, fleet):
    port = free_port()
    container_id = driver.create(http_server(fleet, port))
    pid = fleet.record(f"{fleet.name}-main-0")["pid"]
    os.kill(pid, signal.SIGKILL)
    seen = wait_for(lambda: [c for c in driver.observe(fleet.name) if not c.running], 10, "exited status")[0]
    assert (seen.id, seen.status, seen.exit_code, seen.ports) == (container_id, "exited", 128 + 9, ())
    driver.remove(container_id)
    assert driver.observe(fleet.name) == []


def test_a_reused_pid_is_not_our_process_and_is_never_signalled(driver, fleet, bystander):
    real_start = local._start_time(bystander.pid)
    record = local.ProcessRecord(
        id="ab" * 32, name=f"{fleet.name}-main-0", pid=bystander.pid, proc_start=real_start - 1,
        argv=["vllm", "serve"], labels={labels.FLEET: fleet.name, labels.SERVER: "main", labels.REPLICA: "0"},
        ports=[{"container_port": 8000, "host_ip": "127.0.0.1", "host_port": 8000}], gpu_ids=[], cwd="/",
        log_offset=0, created_at="2026-01-01T00:00:00+00:00", started_at="2026-01-01T00:00:00+00:00",
    )
    (fleet.run_dir / "procs").mkdir(parents=True)
    (fleet.run_dir / "procs" / f"{record.name}.json").write_text(json.dumps(record.to_json()))

    [seen] = driver.observe(fleet.name)
    assert (seen.status, seen.exit_code, seen.ports, seen.replica) == ("exited", None, (), 0)
    driver.remove(record.id)
    assert bystander.poll() is None and proc_state(bystander.pid) not in (None, "Z")  # untouched
    assert driver.observe(fleet.name) == []


def test_engine_outlives_the_driver_object_that_started_it(fleet):
    port = free_port()
    first = local.LocalDriver(fleet.run_dir)
    container_id = first.create(http_server(fleet, port))
    del first
    gc.collect()
    second = local.LocalDriver(fleet.run_dir, poll_s=0.02)
    [seen] = second.observe(fleet.name)
    assert (seen.id, seen.status, seen.exit_code) == (container_id, "running", None)
    wait_for(http_ok(f"http://127.0.0.1:{port}/"), 10, "http.server answering")
    second.remove(container_id)
    assert second.observe(fleet.name) == []


def test_engine_outlives_the_fleetspec_process_and_a_later_one_removes_it(fleet):
    port = free_port()
    creator = textwrap.dedent(f"""
        import pathlib, sys
        from fleetspec.compile import desired, labels
        from fleetspec.drivers import local
        spec = desired.ContainerSpec(
            name={fleet.name + "-main-0"!r}, image="local",
            argv=[sys.executable, "-m", "http.server", "{port}", "--bind", "127.0.0.1"],
            ports=[desired.PortBinding({port}, {port})], labels={{labels.FLEET: {fleet.name!r}}})
        print(local.LocalDriver(pathlib.Path({str(fleet.run_dir)!r})).create(spec))
    """)
    done = subprocess.run([PY, "-c", creator], capture_output=True, text=True, timeout=60, check=True)
    container_id = done.stdout.strip()

    driver = local.LocalDriver(fleet.run_dir, poll_s=0.02)
    [seen] = driver.observe(fleet.name)
    assert (seen.id, seen.status, seen.host_port) == (container_id, "running", port)
    wait_for(http_ok(f"http://127.0.0.1:{port}/"), 10, "http.server answering")
    pid = fleet.record(seen.name)["pid"]
    driver.remove(container_id)  # not our child: its exit is seen through /proc, zombie or not
    assert gone(pid)
    assert driver.observe(fleet.name) == []


# --- stopping ----------------------------------------------------------------------------------


def test_a_process_ignoring_sigterm_is_killed_with_its_whole_group(fleet):
    stubborn = textwrap.dedent("""
        import signal, subprocess, sys, time
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        worker = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
        print("worker", worker.pid, flush=True)
        time.sleep(600)
    """)
    driver = local.LocalDriver(fleet.run_dir, poll_s=0.02, stop_grace_s=0.5)
    container_id = driver.create(fleet.spec([PY, "-c", stubborn]))
    line = wait_for(lambda: driver.logs_tail(container_id, 1), 10, "the worker starting")
    worker = int(line.split()[1])
    pid = fleet.record(f"{fleet.name}-main-0")["pid"]

    started = time.monotonic()
    driver.remove(container_id)
    elapsed = time.monotonic() - started
    assert 0.5 <= elapsed < 5  # waited out the grace period, then SIGKILL
    assert proc_state(pid) is None and gone(worker)


# --- refusals ----------------------------------------------------------------------------------


def test_name_conflict_is_refused_and_logs_separate_runs_of_one_name(driver, fleet):
    spec = fleet.spec([PY, "-c", "print('first run')"])
    first = driver.create(spec)
    with pytest.raises(errors.PermanentError, match=rf"already named {spec.name}.*Remove it"):
        driver.create(spec)
    wait_for(lambda: driver.observe(fleet.name)[0].status == "exited", 10, "the first run exiting")
    driver.remove(first)
    second = driver.create(fleet.spec([PY, "-c", "print('second run')"]))
    wait_for(lambda: driver.observe(fleet.name)[0].status == "exited", 10, "the second run exiting")
    assert driver.logs_tail(second) == "second run\n"
    log = (fleet.run_dir / "logs" / f"{spec.name}.log").read_text()
    assert log.count("--- fleetspec:") == 2 and log.index("first run") < log.index("second run")


def test_taken_port_is_refused_before_starting(driver, fleet):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(errors.PermanentError, match=rf"port {port} on 127.0.0.1 is already in use"):
            driver.create(http_server(fleet, port))
    assert driver.observe(fleet.name) == []


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"argv": ["fleetspec-no-such-engine", "serve"]}, "the program fleetspec-no-such-engine is not on PATH"),
        ({"argv": ["/nonexistent/vllm", "serve"]}, r"No such file or directory \(/nonexistent/vllm\)"),
        ({"ports": [desired.PortBinding(8000, 18000)]}, "port 8000 on host port 18000"),
        ({"volumes": [desired.Mount("/srv/adapters", "/adapters")]}, "asks for /srv/adapters at /adapters"),
        ({"name": "../escape"}, "names may only hold letters"),
    ],
)
def test_specs_a_local_process_cannot_honour_are_refused(driver, fleet, overrides, message):
    with pytest.raises(errors.PermanentError, match=message):
        driver.create(fleet.spec(overrides.pop("argv", [PY, "-c", "pass"]), **overrides))
    assert driver.observe(fleet.name) == []
    assert list((fleet.run_dir / "procs").glob("*.json")) == []


# --- choosing a driver -------------------------------------------------------------------------


def test_for_runtime_local_keeps_records_beside_the_fleet_file(tmp_path):
    fleet_file = tmp_path / "fleet.yaml"
    fleet_file.write_text("name: demo\n")
    driver = drivers_pkg.for_runtime("local", fleet_file, "demo")
    assert isinstance(driver, local.LocalDriver)
    assert driver.run_dir == tmp_path / ".fleetspec" / "run" / "demo"
    assert driver.cwd == tmp_path
    with pytest.raises(errors.PermanentError, match="runtime target 'k8s'"):
        drivers_pkg.for_runtime("k8s", fleet_file, "demo")
