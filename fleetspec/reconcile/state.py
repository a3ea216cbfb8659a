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
from fleetspec.compile import desired
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
    """The fleet's state; a fresh one when there is no file yet. Raises DamagedState, naming the
    file, what it holds instead and how to recover, for anything fleetspec did not write."""
    path = state_path(fleet_file, fleet_name)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return FleetState(fleet_name)
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise DamagedState(path, fleet_file, f"is not readable JSON ({exc})") from None
    problem = _shape_problem(data, fleet_name)
    if problem is not None:
        raise DamagedState(path, fleet_file, problem)
    fields = {f.name for f in dataclasses.fields(FleetState)}
    return FleetState(**{k: v for k, v in data.items() if k in fields})


class DamagedState(errors.PermanentError):
    """The state file exists but is not what fleetspec writes (hand-edited, truncated, another tool)."""

    def __init__(self, path: pathlib.Path, fleet_file: pathlib.Path, problem: str):
        self.path = path
        super().__init__(
            f"The state file {path} {problem}. It should hold the adapter ids fleetspec has handed out "
            "and the last applied fleet file (for `fleetspec rollback`). To recover, run "
            f"`fleetspec apply {fleet_file} --rebuild-state`: fleetspec moves the damaged file aside and "
            f"rebuilds the state from what runs. {REBUILD_LOSES}"
        )


REBUILD_LOSES = ("A rebuild loses what cannot be observed again: the ids handed to adapter versions "
                 "before it (so it cannot promise an old id is never given out again) and the rollback "
                 "history (`fleetspec rollback` has nothing to return to until a changed file is applied).")


def rebuild(fleet_file: pathlib.Path, fleet_name: str) -> tuple[FleetState, pathlib.Path | None]:
    """A fresh state for a fleet whose state file is damaged or lost; the damaged file, if any, is
    moved aside (never deleted: it may still hold the history someone wants to read by hand).
    Returns (state, where the old file went). The caller saves the state after its apply."""
    path = state_path(fleet_file, fleet_name)
    if not path.exists():
        return FleetState(fleet_name), None
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%SZ")
    aside = path.with_name(f"{path.name}.damaged-{stamp}")
    os.replace(path, aside)
    return FleetState(fleet_name), aside


def _shape_problem(data: object, fleet_name: str) -> str | None:
    """What is wrong with a parsed state file, as the end of a sentence; None when it is sound."""
    if not isinstance(data, dict):
        return f"holds {_kind(data)} instead of fleetspec's state (a JSON object)"
    if data.get("version") != STATE_VERSION:
        return (f"has version {data.get('version')!r}; this fleetspec reads version {STATE_VERSION} "
                "(it was written by another fleetspec release, or edited)")
    if data.get("fleet", fleet_name) != fleet_name:
        return f"belongs to fleet {data.get('fleet')!r}, not {fleet_name!r}"
    expected = {"next_lora_id": (int,), "lora_ids": (dict,), "containers": (dict,), "last_applied_text": (str, None),
                "previous_applied_text": (str, None), "last_applied_at": (str, None)}
    for key, kinds in expected.items():
        if key in data and not _is(data[key], kinds):
            return f"has {_kind(data[key])} for {key!r}, where fleetspec writes {' or '.join(_NAMES[k] for k in kinds)}"
    ids = data.get("lora_ids", {})
    bad = next((name for name, value in ids.items() if not _is(value, (int,)) or value < 1), None)
    if bad is not None:
        return f"has {_kind(ids[bad])} as the adapter id of {bad!r}, where fleetspec writes a positive integer"
    if ids and data.get("next_lora_id", 1) <= max(ids.values()):
        return (f"says the next adapter id is {data.get('next_lora_id', 1)}, but {max(ids.values())} is already "
                "handed out (ids must never be reused)")
    bad = next((key for key, value in data.get("containers", {}).items() if not _container_ok(key, value)), None)
    if bad is not None:
        return f"has a garbled container record for {bad!r}"
    return None


_NAMES = {int: "an integer", dict: "an object", str: "a string", None: "null", list: "a list"}


def _is(value: object, kinds: tuple) -> bool:
    if value is None:
        return None in kinds
    if isinstance(value, bool):  # JSON true is no integer
        return False
    return any(k is not None and isinstance(value, k) for k in kinds)


def _kind(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"the boolean {json.dumps(value)}"
    if isinstance(value, list):
        return f"a JSON list of {len(value)} item{'s' * (len(value) != 1)}" if value else "an empty JSON list"
    if isinstance(value, str):
        return f"the string {value[:40]!r}"
    if isinstance(value, int | float):
        return f"the number {value}"
    return "a JSON object"


def _container_ok(key: str, value: object) -> bool:
    """A "server/replica" → ContainerSpec JSON entry that `session.last_applied_containers` can read."""
    server, _, replica = key.rpartition("/")
    if not server or not replica.isdigit() or not isinstance(value, dict):
        return False
    try:
        desired.ContainerSpec.from_json(value)
    except (TypeError, ValueError, KeyError, AttributeError):
        return False
    return True


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
