"""The state file next to fleet.yaml, and the lock that keeps two applies from interleaving.

State holds only what cannot be re-observed: adapter ids that must never be reused (seed 001's
registry rule), and the last applied fleet file and container specs (for rollback and for saying
*why* a container is replaced). Everything else is observed afresh on every run.

Writes are atomic (temp file + fsync + rename). The lock is an flock on a file beside the state:
the kernel releases it when its holder dies, so a lock left by a killed process is never stale;
the holder's pid and command are written into the file so a waiting user is told who holds it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import fcntl
import json
import os
import pathlib
import socket

from fleetspec import errors
from fleetspec.drivers import files

STATE_VERSION = 1


@dataclasses.dataclass
class FleetState:
    fleet: str
    next_lora_id: int = 1
    lora_ids: dict[str, int] = dataclasses.field(default_factory=dict)  # served adapter name → id
    last_applied_text: str | None = None  # the fleet file as last applied successfully
    previous_applied_text: str | None = None  # the one before it: what `rollback` re-applies
    last_applied_at: str | None = None
    containers: dict[str, dict] = dataclasses.field(default_factory=dict)  # "server/replica" → ContainerSpec JSON

    def lora_id(self, served_name: str) -> int:
        """The id of an adapter version, assigned once and never handed to another name."""
        if served_name not in self.lora_ids:
            self.lora_ids[served_name] = self.next_lora_id
            self.next_lora_id += 1
        return self.lora_ids[served_name]

    def record_applied(self, fleet_text: str, containers: dict[str, dict]) -> None:
        if fleet_text != self.last_applied_text:
            self.previous_applied_text = self.last_applied_text
        self.last_applied_text = fleet_text
        self.last_applied_at = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
        self.containers = containers

    def to_json(self) -> dict:
        return {"version": STATE_VERSION, **dataclasses.asdict(self)}


def state_path(fleet_file: pathlib.Path, fleet_name: str) -> pathlib.Path:
    return files.state_dir(fleet_file) / f"{fleet_name}.state.json"


def load(fleet_file: pathlib.Path, fleet_name: str) -> FleetState:
    path = state_path(fleet_file, fleet_name)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return FleetState(fleet_name)
    except (OSError, ValueError) as exc:
        raise errors.PermanentError(
            f"the state file {path} is unreadable ({exc}); move it aside and run apply again: "
            "fleetspec re-observes the fleet, only adapter ids and rollback history are lost"
        ) from None
    if data.get("version") != STATE_VERSION:
        raise errors.PermanentError(f"the state file {path} has version {data.get('version')}; "
                                    f"this fleetspec reads version {STATE_VERSION}")
    fields = {f.name for f in dataclasses.fields(FleetState)}
    return FleetState(**{k: v for k, v in data.items() if k in fields})


def save(fleet_file: pathlib.Path, state: FleetState) -> pathlib.Path:
    path = state_path(fleet_file, state.fleet)
    files.write_atomic(path, json.dumps(state.to_json(), indent=2, sort_keys=True) + "\n")
    return path


class LockHeld(errors.TemporaryError):
    """Another fleetspec process is applying this fleet."""


@contextlib.contextmanager
def lock(fleet_file: pathlib.Path, fleet_name: str, command: str):
    """Hold the fleet's apply lock; raise LockHeld at once (never wait) if someone else has it."""
    path = files.state_dir(fleet_file) / f"{fleet_name}.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    handle = open(path, "a+", encoding="utf-8")  # noqa: SIM115 - held for the whole block
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            raise LockHeld(_held_message(fleet_name, handle.read())) from None
        handle.seek(0)
        previous = handle.read().strip()
        handle.seek(0)
        handle.truncate()
        holder = {"pid": os.getpid(), "host": socket.gethostname(), "command": command,
                  "since": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")}
        handle.write(json.dumps(holder))
        handle.flush()
        yield _stale_note(previous)
        handle.seek(0)
        handle.truncate()
        handle.flush()
    finally:
        handle.close()  # closing releases the flock


def _held_message(fleet_name: str, content: str) -> str:
    try:
        holder = json.loads(content)
        who = f"pid {holder['pid']} on {holder['host']} (`{holder['command']}`, since {holder['since']})"
    except (ValueError, KeyError, TypeError):
        who = "another fleetspec process"
    return (f"fleet {fleet_name} is being changed by {who}; wait for it to finish "
            "(or stop it) and run this again")


def _stale_note(previous: str) -> str | None:
    """A sentence when the last holder died without releasing: its apply may have stopped half-way."""
    if not previous:
        return None
    try:
        holder = json.loads(previous)
        return (f"the previous run (pid {holder['pid']}, `{holder['command']}`, since {holder['since']}) "
                "ended without finishing; this run re-observes the fleet and converges it")
    except (ValueError, KeyError, TypeError):
        return None
