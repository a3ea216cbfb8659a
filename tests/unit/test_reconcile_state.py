"""State file (ids never reused, atomic writes, rollback history) and the apply lock."""

from __future__ import annotations

import concurrent.futures
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


GOOD = {"version": 1, "fleet": "demo", "next_lora_id": 3, "lora_ids": {"a--1": 1, "b--1": 2},
        "containers": {"main/0": {"name": "demo-main-0", "image": "local", "argv": ["python3"]}}}


@pytest.mark.parametrize(("text", "what"), [
    ("{not json", "is not readable JSON"),
    ("[]", "holds an empty JSON list instead of fleetspec's state"),
    ("[1, 2]", "holds a JSON list of 2 items"),
    ("null", "holds null instead"),
    ('"state"', "holds the string 'state'"),
    ("7", "holds the number 7"),
    ("\xff\xfe", "is not readable JSON"),
    (json.dumps({**GOOD, "version": 9}), "has version 9"),
    (json.dumps({**GOOD, "fleet": "other"}), "belongs to fleet 'other'"),
    (json.dumps({**GOOD, "lora_ids": []}), "has an empty JSON list for 'lora_ids', where fleetspec writes an object"),
    (json.dumps({**GOOD, "next_lora_id": "3"}), "has the string '3' for 'next_lora_id'"),
    (json.dumps({**GOOD, "next_lora_id": True}), "has the boolean true for 'next_lora_id'"),
    (json.dumps({**GOOD, "containers": None}), "has null for 'containers'"),
    (json.dumps({**GOOD, "last_applied_text": 5}), "has the number 5 for 'last_applied_text'"),
    (json.dumps({**GOOD, "lora_ids": {"a--1": "one"}}), "has the string 'one' as the adapter id of 'a--1'"),
    (json.dumps({**GOOD, "next_lora_id": 2}), "says the next adapter id is 2, but 2 is already handed out"),
    (json.dumps({**GOOD, "containers": {"main/0": {"name": "x"}}}), "has a garbled container record for 'main/0'"),
    (json.dumps({**GOOD, "containers": {"main": {}}}), "has a garbled container record for 'main'"),
    (json.dumps({**GOOD, "containers": {"main/0": {"name": "x", "image": "y", "argv": 5}}}), "has a garbled container"),
])
def test_damaged_state_file_is_named_with_what_it_holds_and_how_to_recover(tmp_path, text, what):
    fleet_file = tmp_path / "fleet.yaml"
    path = state.state_path(fleet_file, "demo")
    path.parent.mkdir()
    path.write_bytes(text.encode("latin-1") if text.startswith("\xff") else text.encode())
    with pytest.raises(state.DamagedState) as raised:
        state.load(fleet_file, "demo")
    message = str(raised.value)
    assert message.startswith(f"The state file {path} {what}"), message
    assert f"fleetspec apply {fleet_file} --rebuild-state" in message
    assert "loses" in message and "adapter" in message and "rollback" in message
    assert "AttributeError" not in message and "Traceback" not in message


def test_a_sound_state_file_loads(tmp_path):
    fleet_file = tmp_path / "fleet.yaml"
    path = state.state_path(fleet_file, "demo")
    path.parent.mkdir()
    path.write_text(json.dumps(GOOD))
    assert state.load(fleet_file, "demo").lora_id("c--1") == 3


def test_rebuild_moves_the_damaged_file_aside_and_starts_afresh(tmp_path):
    fleet_file = tmp_path / "fleet.yaml"
    path = state.state_path(fleet_file, "demo")
    path.parent.mkdir()
    path.write_text("[]")
    fresh, aside = state.rebuild(fleet_file, "demo")
    assert (fresh.lora_ids, fresh.last_applied_text) == ({}, None)
    assert not path.exists() and aside.read_text() == "[]" and aside.name.startswith("demo.state.json.damaged-")
    state.save(fleet_file, fresh)
    assert state.load(fleet_file, "demo").fleet == "demo"
    assert state.rebuild(fleet_file, "other")[1] is None  # no file: nothing moved


def test_atomic_write_leaves_no_temp_files(tmp_path):
    target = tmp_path / "a" / "s.json"
    files.write_atomic(target, "one")
    files.write_atomic(target, "two")
    assert target.read_text() == "two"
    assert os.listdir(target.parent) == ["s.json"]


def test_atomic_writes_from_many_threads_never_mix_or_leave_temp_files(tmp_path):
    target = tmp_path / "s.json"
    texts = [json.dumps({"writer": n, "pad": "x" * 20_000}) for n in range(16)]
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda t: files.write_atomic(target, t), texts))
    assert target.read_text() in texts  # one whole write, never two interleaved
    assert os.listdir(tmp_path) == ["s.json"]


def test_a_failed_atomic_write_keeps_the_old_file_and_removes_its_temp(tmp_path):
    target = tmp_path / "s.json"
    files.write_atomic(target, "old")
    with pytest.raises(UnicodeEncodeError):
        files.write_atomic(target, "\udcff")  # a lone surrogate cannot be written as UTF-8
    assert target.read_text() == "old"
    assert os.listdir(tmp_path) == ["s.json"]


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
