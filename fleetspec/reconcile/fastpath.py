"""A no-op `fleetspec apply` that answers in tens of milliseconds.

Most applies change nothing (CI re-runs, a watch loop's neighbour, a habit). The full path spends
~0.2 s importing pydantic, the catalog and the Docker SDK only to find that out. This module is
the shortcut, and it imports nothing beyond the standard library (and fleetspec's standard-library
engine client and label names; tests/unit/test_reconcile_fastpath.py checks what loads).

What it trusts and what it does not:
- It caches what the fleet file *means*: after an apply that converged, the desired facts
  (`convergence.Wanted`: each replica's spec hash and adapters, the router's) are recorded with a
  hash of every input that decides them (the file's text, the files it references, fleetspec's own
  code). Same inputs → same desired state; that is a pure function being memoised, not a record of
  what was applied.
- It never trusts the world: containers are listed from the Docker engine's API by label, or the
  local runtime's process records are read and each process checked in /proc, and each engine's
  /v1/models (and the router's /health) is asked, exactly as the full observe does. Then
  `convergence.differences`, the same definition the full path uses, decides. Any difference at
  all (or the lock held, or anything unreadable) and the full path runs, which plans and applies
  as usual.
Both runtimes that fleetspec runs itself (docker and local) have the shortcut.
"""

from __future__ import annotations

import dataclasses
import fcntl
import hashlib
import http.client
import json
import os
import pathlib
import urllib.request

from fleetspec import errors
from fleetspec.compile import labels  # standard library only, like this module
from fleetspec.drivers import docker_api, procs
from fleetspec.engine_api import client as engine_client
from fleetspec.reconcile import convergence

RECORD_VERSION = 2
TIMEOUT_S = 2.0


def record_path(fleet_file: pathlib.Path) -> pathlib.Path:
    """One record per fleet file (by absolute path), next to the state file."""
    absolute = str(fleet_file.resolve())
    return fleet_file.resolve().parent / ".fleetspec" / f"converged-{hashlib.sha256(absolute.encode()).hexdigest()[:16]}.json"


def code_fingerprint() -> str:
    """Changes whenever fleetspec's own code or data changes (an upgrade must not reuse a record)."""
    root = pathlib.Path(__file__).resolve().parents[1]
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*")):
        if path.suffix in (".py", ".yaml", ".json", ".j2") and "__pycache__" not in path.parts:
            stat = path.stat()
            digest.update(f"{path.relative_to(root)}:{stat.st_size}:{stat.st_mtime_ns};".encode())
    return digest.hexdigest()


def inputs_hash(fleet_file: pathlib.Path, referenced: list[str]) -> str | None:
    digest = hashlib.sha256(code_fingerprint().encode())
    for path in [str(fleet_file), *referenced]:
        try:
            digest.update(pathlib.Path(path).read_bytes())
        except OSError:
            return None
        digest.update(b"\0")
    digest.update(json.dumps({k: v for k, v in os.environ.items() if k == "DOCKER_HOST"}).encode())
    return digest.hexdigest()


@dataclasses.dataclass(frozen=True)
class Runtime:
    """Where the fast path looks for the fleet: `docker` (the engine's API) or `local` (the
    process records in `run_dir`), and where engines (`host`) and the router are reached."""

    target: str
    host: str
    run_dir: str | None = None  # local runtime only
    router_url: str | None = None
    key_variable: str | None = None  # names the variable holding the engines' key; never the key


def write_record(fleet_file: pathlib.Path, fleet: str, referenced: list[str], runtime: Runtime,
                 wanted: convergence.Wanted, ports: dict[str, int]) -> None:
    """Remember a converged fleet: what it should be (`wanted`) and each engine container's port
    (`ports`, by container id) so the next no-op apply can check the world without the full path."""
    from fleetspec.drivers import files  # only the full path writes records

    digest = inputs_hash(fleet_file, referenced)
    if digest is None:
        return
    record = {"version": RECORD_VERSION, "fleet": fleet, "inputs_hash": digest, "referenced": referenced,
              "runtime": dataclasses.asdict(runtime), "wanted": wanted.to_json(), "ports": ports}
    files.write_atomic(record_path(fleet_file), json.dumps(record, sort_keys=True) + "\n")


def forget(fleet_file: pathlib.Path) -> None:
    record_path(fleet_file).unlink(missing_ok=True)


def is_noop(fleet_file: pathlib.Path) -> bool:
    """True only when the file is unchanged since a converged apply and the world still matches."""
    try:
        record = json.loads(record_path(fleet_file).read_text(encoding="utf-8"))
        if record.get("version") != RECORD_VERSION:
            return False
        if inputs_hash(fleet_file, record["referenced"]) != record["inputs_hash"]:
            return False
        if _lock_held(fleet_file, record["fleet"]):
            return False
        seen = observe(record["fleet"], Runtime(**record["runtime"]), record["ports"])
        return seen is not None and not convergence.differences(convergence.Wanted.from_json(record["wanted"]), seen)
    except (OSError, ValueError, KeyError, TypeError, http.client.HTTPException):
        return False


def _lock_held(fleet_file: pathlib.Path, fleet: str) -> bool:
    lock = fleet_file.resolve().parent / ".fleetspec" / f"{fleet}.lock"
    try:
        with open(lock, "a+", encoding="utf-8") as handle:
            fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    except FileNotFoundError:
        return False
    return False


def observe(fleet: str, runtime: Runtime, ports: dict[str, int]) -> convergence.Seen | None:
    """The fleet as the runtime and the engines report it now, or None when it cannot be read."""
    listed = _docker_containers(fleet) if runtime.target == "docker" else _local_processes(fleet, runtime.run_dir)
    if listed is None:
        return None
    key = os.environ.get(runtime.key_variable) if runtime.key_variable else None
    seen, router_running = [], False
    for container_id, found, running in listed:
        replica = found.get(labels.REPLICA)
        slot = f"{found[labels.SERVER]}/{replica}" if labels.SERVER in found and replica else None
        role = found.get(labels.ROLE)
        adapters = None
        if running and role != labels.ROLE_ROUTER and container_id in ports:
            adapters = _adapters(runtime.host, ports[container_id], key)
        router_running = router_running or (running and role == labels.ROLE_ROUTER)
        seen.append(convergence.SeenContainer(container_id, slot, role, running, found.get(labels.SPEC_HASH),
                                              adapters))
    config_hash = router_config_hash(runtime.router_url) if router_running and runtime.router_url else None
    return convergence.Seen(tuple(seen), config_hash)


def _docker_containers(fleet: str) -> list[tuple[str, dict, bool]] | None:
    """(id, labels, running) of every container of the fleet, from the engine's API."""
    address = os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")
    if not address.startswith("unix://"):
        return None  # TCP/SSH engines (TLS, contexts) are left to the SDK on the full path
    status, listed = docker_api.get_json(address[len("unix://"):], f"/containers/json?all=1&"
                                         f"{docker_api.fleet_filter_query(fleet)}", timeout=TIMEOUT_S)
    if status != 200 or not isinstance(listed, list):
        return None
    return [(c["Id"], c.get("Labels") or {}, c.get("State") == "running") for c in listed]


def _local_processes(fleet: str, run_dir: str | None) -> list[tuple[str, dict, bool]] | None:
    """(id, labels, running) of every process record of the fleet (drivers/local.py writes them)."""
    if run_dir is None:
        return None
    directory = pathlib.Path(run_dir) / "procs"
    found = []
    for path in sorted(directory.glob("*.json")) if directory.is_dir() else ():
        if path.name.startswith("."):
            continue  # a temp file of an atomic write in progress
        record = json.loads(path.read_text(encoding="utf-8"))
        if record["labels"].get(labels.FLEET) == fleet:
            running = procs.leader(record["pid"], record.get("proc_start")) == procs.ALIVE
            found.append((record["id"], record["labels"], running))
    return found


def _adapters(host: str, port: int, key: str | None) -> dict | None:
    try:
        return dict(engine_client.EngineClient(f"http://{host}:{port}", key).models(timeout=TIMEOUT_S).adapters)
    except errors.FleetspecError:
        return None


def router_config_hash(url: str) -> str | None:
    """The hash of the config the running router serves (its /health says), or None. The full
    path (`router_edge`) asks the same way."""
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=TIMEOUT_S) as response:  # noqa: S310 - our own router
            return json.loads(response.read()).get("config_hash")
    except (OSError, ValueError):
        return None
