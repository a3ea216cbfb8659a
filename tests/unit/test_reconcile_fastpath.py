"""The no-op shortcut answers only when the inputs are unchanged and the world matches exactly."""

from __future__ import annotations

import fcntl

import pytest

from fleetspec.cli import entry
from fleetspec.reconcile import fastpath

CONTAINERS = [{"id": "c0", "port": 8000, "adapters": {"code--1": "/a/code/1"}}]


@pytest.fixture
def world(tmp_path, monkeypatch):
    """A recorded converged fleet whose live side (Docker API, /v1/models) the test controls."""
    fleet_file = tmp_path / "fleet.yaml"
    fleet_file.write_text("name: demo\n")
    live = {"containers": [{"Id": "c0", "State": "running"}], "adapters": {"code--1": "/a/code/1"}}
    monkeypatch.setattr(fastpath, "_docker_containers", lambda fleet: live["containers"])
    monkeypatch.setattr(fastpath, "_adapters", lambda host, port, key: live["adapters"])
    fastpath.write_record(fleet_file, "demo", [], "127.0.0.1", CONTAINERS, None)
    return fleet_file, live


def test_unchanged_file_and_matching_world_is_a_noop(world):
    fleet_file, _ = world
    assert fastpath.is_noop(fleet_file)


def test_an_edited_fleet_file_takes_the_full_path(world):
    fleet_file, _ = world
    fleet_file.write_text("name: demo\n# edited\n")
    assert not fastpath.is_noop(fleet_file)


@pytest.mark.parametrize("drift", [
    {"containers": []},  # removed behind fleetspec's back
    {"containers": [{"Id": "c0", "State": "exited"}]},  # died
    {"containers": [{"Id": "c0", "State": "running"}, {"Id": "stray", "State": "running"}]},  # an orphan
    {"adapters": {}},  # an adapter unloaded through the engine's API
    {"adapters": None},  # the engine does not answer
])
def test_any_drift_takes_the_full_path(world, drift):
    fleet_file, live = world
    live.update(drift)
    assert not fastpath.is_noop(fleet_file)


def test_a_held_lock_takes_the_full_path(world):
    fleet_file, _ = world
    lock = fleet_file.parent / ".fleetspec" / "demo.lock"
    with open(lock, "a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        assert not fastpath.is_noop(fleet_file)


def test_a_forgotten_or_missing_record_takes_the_full_path(world):
    fleet_file, _ = world
    fastpath.forget(fleet_file)
    assert not fastpath.is_noop(fleet_file)


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
                           "fleetspec.engine_api", "fleetspec.engine_api.client", "fleetspec.engine_api.contract",
                           "fleetspec.reconcile", "fleetspec.reconcile.fastpath"}, loaded
