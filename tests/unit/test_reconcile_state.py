"""State file (ids never reused, atomic writes, rollback history) and the apply lock."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from fleetspec.drivers import files
from fleetspec.reconcile import state


def test_lora_ids_are_assigned_once_and_never_reused(tmp_path):
    fleet_file = tmp_path / "fleet.yaml"
    current = state.FleetState("demo")
    assert [current.lora_id(n) for n in ("code--1", "sql--1", "code--1")] == [1, 2, 1]
    del current.lora_ids["code--1"]  # an adapter version goes away...
    assert current.lora_id("code--2") == 3  # ...and its id is not handed out again
    state.save(fleet_file, current)
    assert state.load(fleet_file, "demo").lora_id("new--1") == 4


def test_record_applied_keeps_the_previous_text_for_rollback(tmp_path):
    current = state.FleetState("demo")
    current.record_applied("v1", {})
    current.record_applied("v2", {"main/0": {"name": "x"}})
    current.record_applied("v2", {"main/0": {"name": "x"}})  # re-applying the same file keeps history
    assert (current.previous_applied_text, current.last_applied_text) == ("v1", "v2")


def test_unreadable_state_file_is_a_clear_error(tmp_path):
    fleet_file = tmp_path / "fleet.yaml"
    path = state.state_path(fleet_file, "demo")
    path.parent.mkdir()
    path.write_text("{not json")
    with pytest.raises(state.errors.PermanentError, match="move it aside"):
        state.load(fleet_file, "demo")


def test_atomic_write_leaves_no_temp_files(tmp_path):
    target = tmp_path / "a" / "s.json"
    files.write_atomic(target, "one")
    files.write_atomic(target, "two")
    assert target.read_text() == "two"
    assert os.listdir(target.parent) == ["s.json"]


HOLD = """
import pathlib, sys, time
from fleetspec.reconcile import state
with state.lock(pathlib.Path(sys.argv[1]), "demo", "fleetspec apply"):
    print("held", flush=True)
    time.sleep(60)
"""


def _start_holder(tmp_path):
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(tmp_path / "fleet.yaml")], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"  # waits on the condition, not on time
    return proc


def test_second_lock_fails_at_once_naming_the_holder(tmp_path):
    holder = _start_holder(tmp_path)
    try:
        started = time.monotonic()
        with pytest.raises(state.LockHeld) as raised, state.lock(tmp_path / "fleet.yaml", "demo", "fleetspec apply"):
            pass
        assert time.monotonic() - started < 5  # refused, not waited for
        assert f"pid {holder.pid}" in str(raised.value)
        assert "`fleetspec apply`" in str(raised.value)
    finally:
        holder.kill()
        holder.wait()


def test_lock_of_a_killed_process_is_taken_over_with_a_note(tmp_path):
    holder = _start_holder(tmp_path)
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    with state.lock(tmp_path / "fleet.yaml", "demo", "fleetspec apply") as note:
        assert note is not None and f"pid {holder.pid}" in note
        content = json.loads((tmp_path / ".fleetspec" / "demo.lock").read_text())
        assert content["pid"] == os.getpid()
    with state.lock(tmp_path / "fleet.yaml", "demo", "fleetspec apply") as note:
        assert note is None  # a clean release leaves nothing to report
