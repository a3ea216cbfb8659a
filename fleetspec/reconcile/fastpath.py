"""A no-op `fleetspec apply` that answers in tens of milliseconds.

Most applies change nothing (CI re-runs, a watch loop's neighbour, a habit). The full path spends
~0.2 s importing pydantic, the catalog and the Docker SDK only to find that out. This module is
the shortcut, and it imports nothing beyond the standard library (and fleetspec's standard-library
engine client and label names; tests/unit/test_reconcile_fastpath.py checks what loads).

What it trusts and what it does not:
- It caches what the fleet file *means*: after an apply that converged, the desired containers
  and adapters are recorded with a hash of every input that decides them (the file's text, the
  files it references, fleetspec's own code). Same inputs → same desired state; that is a pure
  function being memoised, not a record of what was applied.
- It never trusts the world: containers are listed from the Docker engine's API by label and each
  engine's /v1/models is asked, exactly as the full observe does. Any difference at all (an extra
  or missing container, one not running, an adapter missing or extra, the lock held) and the full
  path runs, which then plans and applies as usual.
Only the Docker runtime has a shortcut; the local runtime's full path is already fast.
"""

from __future__ import annotations

import fcntl
import hashlib
import http.client
import json
import os
import pathlib
import socket
import urllib.parse

from fleetspec import errors
from fleetspec.compile import labels  # standard library only, like this module
from fleetspec.engine_api import client as engine_client

RECORD_VERSION = 1
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


def write_record(fleet_file: pathlib.Path, fleet: str, referenced: list[str], host: str,
                 containers: list[dict], router_id: str | None, key_variable: str | None = None) -> None:
    """`containers`: [{"id", "port", "adapters": {served name: path}}] of a converged fleet.
    `key_variable` names the environment variable with the engines' key: the key itself is never written."""
    from fleetspec.drivers import files  # only the full path writes records

    digest = inputs_hash(fleet_file, referenced)
    if digest is None:
        return
    record = {"version": RECORD_VERSION, "fleet": fleet, "inputs_hash": digest, "referenced": referenced,
              "host": host, "containers": containers, "router_id": router_id, "key_variable": key_variable}
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
        return _world_matches(record)
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


def _world_matches(record: dict) -> bool:
    listed = _docker_containers(record["fleet"])
    if listed is None:
        return False
    expected = {c["id"] for c in record["containers"]} | ({record["router_id"]} if record["router_id"] else set())
    if {c["Id"] for c in listed} != expected or any(c.get("State") != "running" for c in listed):
        return False
    key = os.environ.get(record["key_variable"]) if record.get("key_variable") else None
    return all(_adapters(record["host"], c["port"], key) == c["adapters"] for c in record["containers"])


def _docker_containers(fleet: str) -> list[dict] | None:
    address = os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")
    if not address.startswith("unix://"):
        return None  # TCP/SSH engines (TLS, contexts) are left to the SDK on the full path
    filters = urllib.parse.quote(json.dumps(labels.fleet_filter(fleet)))
    connection = _UnixConnection(address[len("unix://"):])
    try:
        connection.request("GET", f"/containers/json?all=1&filters={filters}")
        response = connection.getresponse()
        return json.loads(response.read()) if response.status == 200 else None
    finally:
        connection.close()


def _adapters(host: str, port: int, key: str | None) -> dict | None:
    try:
        return dict(engine_client.EngineClient(f"http://{host}:{port}", key).models(timeout=TIMEOUT_S).adapters)
    except errors.FleetspecError:
        return None


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str):
        super().__init__("localhost", timeout=TIMEOUT_S)
        self._path = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(TIMEOUT_S)
        self.sock.connect(self._path)
