"""The local runtime finds its processes without `.fleetspec`: the marker in each one's environment.

Issue #15: after `rm -rf .fleetspec`, `destroy` said "Nothing to destroy" while the engines kept
running, and one garbled process record left an orphan. Every process a test starts is killed in
teardown by its marker (the records are what these tests destroy).
"""

from __future__ import annotations

import contextlib
import itertools
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import time

import pytest

from fleetspec.compile import desired, labels
from fleetspec.drivers import local

PY = sys.executable
_counter = itertools.count(1)
SLEEPER = [PY, "-c", "import time; time.sleep(600)"]
# An engine with a worker: the child inherits the marker but is not a second "container".
WITH_WORKER = [PY, "-c", "import subprocess, sys, time; subprocess.Popen([sys.executable, '-c', "
               "'import time; time.sleep(600)']); time.sleep(600)"]


def spec(fleet: str, argv: list[str], replica: int = 0) -> desired.ContainerSpec:
    return desired.ContainerSpec(
        name=f"{fleet}-main-{replica}", image="local", argv=argv,
        labels={labels.FLEET: fleet, labels.SERVER: "main", labels.REPLICA: str(replica), labels.ROLE: labels.ROLE_ENGINE})


def marked_pids(run_dir: pathlib.Path) -> list[int]:
    """Every live process (leaders and workers) carrying this run dir's marker."""
    mark = f"{local.MARK_RUN_DIR}={run_dir.resolve()}".encode()
    found = []
    for entry in pathlib.Path("/proc").iterdir():
        with contextlib.suppress(OSError):
            if entry.name.isdigit() and mark in (entry / "environ").read_bytes().split(b"\0"):
                found.append(int(entry.name))
    return found


def wait_for(condition, timeout_s: float, what: str):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if value := condition():
            return value
        time.sleep(0.02)
    pytest.fail(f"{what} did not happen within {timeout_s} s")


@pytest.fixture
def checkout(tmp_path):
    """A fleet file and its run dir, as drivers.for_runtime lays them out; killed afterwards."""
    name = f"fst-mark-{os.getpid()}-{next(_counter)}"
    fleet_file = tmp_path / "fleet.yaml"
    fleet_file.write_text(f"name: {name}\n")
    run_dir = tmp_path / ".fleetspec" / "run" / name
    yield name, fleet_file, run_dir
    for pid in marked_pids(run_dir):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    wait_for(lambda: not [p for p in marked_pids(run_dir) if local.procs.leader(p, None) == local.ALIVE], 10,
             "the test's processes dying")


def driver_for(fleet_file: pathlib.Path, run_dir: pathlib.Path, **options) -> local.LocalDriver:
    return local.LocalDriver(run_dir, cwd=fleet_file.parent, fleet_file=fleet_file, poll_s=0.02, stop_grace_s=2,
                             **options)


def test_processes_are_found_and_stopped_after_rm_rf_of_fleetspec(checkout):
    name, fleet_file, run_dir = checkout
    started = driver_for(fleet_file, run_dir)
    ids = [started.create(spec(name, WITH_WORKER, 0)), started.create(spec(name, SLEEPER, 1))]
    wait_for(lambda: len(marked_pids(run_dir)) == 3, 10, "the engine's worker starting")

    shutil.rmtree(fleet_file.parent / ".fleetspec")  # records, logs, state: all gone
    fresh = driver_for(fleet_file, run_dir)
    seen = fresh.observe(name)
    assert sorted(c.id for c in seen) == sorted(ids)  # the worker is no third "container"
    assert [(c.replica, c.status, c.spec_hash) for c in seen] == [
        (0, "running", spec(name, WITH_WORKER, 0).spec_hash()), (1, "running", spec(name, SLEEPER, 1).spec_hash())]
    assert all(c.pid in marked_pids(run_dir) for c in seen)

    for container in seen:
        fresh.remove(container.id)
    assert fresh.observe(name) == []
    wait_for(lambda: not marked_pids(run_dir), 10, "the engines and the worker stopping")


def test_another_fleet_file_never_sees_or_stops_them(checkout, tmp_path):
    name, fleet_file, run_dir = checkout
    driver_for(fleet_file, run_dir).create(spec(name, SLEEPER))
    shutil.rmtree(run_dir / "procs")
    # Same fleet name, same directory (so the same run dir), but another fleet file: not ours.
    sibling = fleet_file.with_name("other.yaml")
    assert driver_for(sibling, run_dir).observe(name) == []
    # Same fleet name in another checkout: another run dir, not ours either.
    elsewhere = tmp_path / "clone"
    elsewhere.mkdir()
    assert driver_for(elsewhere / "fleet.yaml", elsewhere / ".fleetspec" / "run" / name).observe(name) == []
    assert len(driver_for(fleet_file, run_dir).observe(name)) == 1  # still running, still ours


@pytest.mark.parametrize("garbage", ["", "{", "[]", "null", '{"id": 5}', "\udcff"])
def test_a_garbled_record_is_reported_and_skipped_never_an_orphan(checkout, garbage):
    name, fleet_file, run_dir = checkout
    warnings: list[str] = []
    driver = driver_for(fleet_file, run_dir, warn=warnings.append)
    container_id = driver.create(spec(name, SLEEPER))
    record = run_dir / "procs" / f"{name}-main-0.json"
    record.write_bytes(garbage.encode("utf-8", "surrogateescape"))

    [seen] = driver.observe(name)
    assert (seen.id, seen.status) == (container_id, "running")  # found by its marker
    driver.observe(name)
    assert len(warnings) == 1, warnings  # said once per record, not on every poll
    assert warnings[0].startswith(f"the process record {record} is garbled (")
    assert "skipped" in warnings[0] and "marker" in warnings[0]

    driver.remove(container_id)
    assert driver.observe(name) == [] and not record.exists()
    wait_for(lambda: not marked_pids(run_dir), 10, "the process stopping")


def test_describe_and_observe_name_the_process_its_pid_and_log(checkout):
    name, fleet_file, run_dir = checkout
    driver = driver_for(fleet_file, run_dir)
    container_id = driver.create(spec(name, SLEEPER))
    [seen] = driver.observe(name)
    log = run_dir / "logs" / f"{name}-main-0.log"
    assert seen.pid is not None and seen.log_path == str(log) and seen.noun == "process"
    described = driver.describe(container_id)
    assert described.startswith(f"process {name}-main-0 (PID {seen.pid}, log ")
    assert described.endswith(f"{log.name})") and container_id[:12] not in described
    driver.remove(container_id)


def test_records_are_written_atomically_with_no_temp_file_left(checkout):
    name, fleet_file, run_dir = checkout
    driver = driver_for(fleet_file, run_dir)
    driver.create(spec(name, SLEEPER))
    assert os.listdir(run_dir / "procs") == [f"{name}-main-0.json"]


def test_a_process_started_by_an_older_fleetspec_without_a_marker_is_still_found_by_its_record(checkout):
    name, fleet_file, run_dir = checkout
    child = subprocess.Popen(SLEEPER, start_new_session=True)
    try:
        record = local.ProcessRecord(
            id="a" * 64, name=f"{name}-main-0", pid=child.pid, proc_start=local._start_time(child.pid), argv=SLEEPER,
            labels={labels.FLEET: name, labels.SERVER: "main", labels.REPLICA: "0"}, ports=[], gpu_ids=[],
            cwd=str(fleet_file.parent), log_offset=0, created_at="", started_at="")
        (run_dir / "procs").mkdir(parents=True)
        (run_dir / "procs" / f"{record.name}.json").write_text(local.json.dumps(record.to_json()))
        driver = driver_for(fleet_file, run_dir)
        [seen] = driver.observe(name)
        assert (seen.id, seen.status) == (record.id, "running")
        driver.remove(record.id)
        assert child.wait(timeout=10) is not None
    finally:
        child.kill()
        child.wait()
