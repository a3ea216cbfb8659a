"""What every runtime driver reports and offers, so plan/apply code does not care which one runs.

Status words follow Docker's (`created`, `running`, `restarting`, `paused`, `exited`, `dead`,
`removing`); a driver for child processes maps onto the same words.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Mapping
from typing import Protocol

from fleetspec import errors
from fleetspec.compile import desired, labels

RUNNING = "running"
EXITED = "exited"


@dataclasses.dataclass(frozen=True)
class ObservedContainer:
    id: str
    name: str
    image: str
    status: str  # Docker's word, see module docstring
    health: str | None  # the runtime's own health check (starting/healthy/unhealthy); None without one
    fleet: str
    server: str | None
    replica: int | None
    spec_hash: str | None
    role: str | None
    ports: tuple[tuple[int, str, int], ...] = ()  # (container_port, host_ip, host_port), published only
    exit_code: int | None = None
    started_at: str | None = None  # ISO 8601 from the runtime; changes on every (re)start
    labels: tuple[tuple[str, str], ...] = ()
    pid: int | None = None  # local runtime: the running process's PID (Docker: None, the id says it)
    log_path: str | None = None  # local runtime: the file its output goes to (Docker: `docker logs`)

    @property
    def noun(self) -> str:
        """What a user calls this on its runtime: a process (local) or a container (Docker)."""
        return runtime_noun(self.image)

    @property
    def running(self) -> bool:
        return self.status == RUNNING

    @property
    def host_port(self) -> int | None:
        """Host port of the first published port: the engine's (or router's) HTTP port."""
        return self.ports[0][2] if self.ports else None

    def to_json(self) -> dict:
        data = dataclasses.asdict(self)
        data["ports"] = [{"container_port": c, "host_ip": ip, "host_port": h} for c, ip, h in self.ports]
        data["labels"] = dict(self.labels)
        return data


LOCAL_IMAGE = "local"  # the image the local runtime reports and desired state asks for: there is none


def runtime_noun(image: str) -> str:
    return "process" if image == LOCAL_IMAGE else "container"


def identity_from_labels(found: Mapping[str, str]) -> dict:
    """The ObservedContainer fields that come from fleetspec's labels."""
    replica = found.get(labels.REPLICA)
    return {
        "fleet": found.get(labels.FLEET, ""),
        "server": found.get(labels.SERVER),
        "replica": int(replica) if replica and replica.isdigit() else None,
        "spec_hash": found.get(labels.SPEC_HASH),
        "role": found.get(labels.ROLE),
        "labels": tuple(sorted(found.items())),
    }


SECRET_REFERENCE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


def expand_secrets(env: Mapping[str, str], name: str) -> dict[str, str]:
    """Resolve `${VAR}` secrets from fleetspec's own environment: here, at the edge, and nowhere else."""
    missing = sorted({m for v in env.values() for m in SECRET_REFERENCE.findall(v) if m not in os.environ})
    if missing:
        raise errors.PermanentError(
            f"Engine {name} needs the environment variable(s) {', '.join(missing)}, which are not set. "
            "Export them in the shell that runs fleetspec; their values never reach compiled files."
        )
    return {k: SECRET_REFERENCE.sub(lambda m: os.environ[m.group(1)], v) for k, v in env.items()}


class Driver(Protocol):
    def observe(self, fleet_name: str) -> list[ObservedContainer]: ...

    def create(self, spec: desired.ContainerSpec) -> str: ...

    def remove(self, container_id: str) -> None: ...

    def wait_running(self, container_id: str, timeout_s: float = 60.0) -> ObservedContainer: ...

    def logs_tail(self, container_id: str, lines: int = 50) -> str: ...

    def describe(self, container_id: str) -> str:
        """A started container as its user finds it: "process NAME (PID N, log PATH)", "container NAME (id ID)"."""
        ...
