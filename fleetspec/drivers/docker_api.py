"""The Docker driver's read side, over the Engine API on a local socket, in the standard library.

`plan`, `status` and the no-op fast path only read: list a fleet's containers and inspect them.
The docker SDK (with requests and urllib3) costs ~0.1 s to import for that, a fifth of a `plan`.
So reads go straight to the Engine API over its unix socket (GET /containers/json, GET
/containers/{id}/json: the same JSON the SDK's low-level client returns), and the SDK driver
(drivers/docker.py) is created at the first change. Engines reached over TCP, SSH or TLS are left
to the SDK entirely (drivers.for_runtime).
"""

from __future__ import annotations

import http.client
import json
import socket
import urllib.parse
from typing import TYPE_CHECKING

from fleetspec import errors
from fleetspec.compile import labels

if TYPE_CHECKING:  # the fast path imports this module and must stay on the standard library
    from fleetspec.compile import desired
    from fleetspec.drivers import base

TIMEOUT_S = 10.0
MAX_ANSWER_BYTES = 64 << 20  # a fleet's container list or one inspect, with room for thousands of containers


class UnixConnection(http.client.HTTPConnection):
    """HTTP over a unix socket (the Docker engine's)."""

    def __init__(self, path: str, timeout: float = TIMEOUT_S):
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(self._path)


def get_json(path: str, target: str, timeout: float = TIMEOUT_S) -> tuple[int, object]:
    """(status, parsed body) of one GET on the engine at `path`; OSError and ValueError pass through."""
    connection = UnixConnection(path, timeout)
    try:
        connection.request("GET", target)
        response = connection.getresponse()
        body = response.read(MAX_ANSWER_BYTES + 1)
        if len(body) > MAX_ANSWER_BYTES:
            raise ValueError(f"the engine's answer is larger than {MAX_ANSWER_BYTES >> 20} MiB")
        return response.status, json.loads(body or b"null")
    except http.client.HTTPException as exc:
        raise OSError(f"the engine's answer was not HTTP ({exc})") from exc
    finally:
        connection.close()


def fleet_filter_query(fleet_name: str) -> str:
    return "filters=" + urllib.parse.quote(json.dumps(labels.fleet_filter(fleet_name)))


class SocketDockerDriver:
    """The Docker driver for an engine on a local socket: reads through the Engine API itself and
    hands every change to the SDK driver, created the first time one is asked for."""

    def __init__(self, path: str):
        self.path = path
        self._changes = None

    def observe(self, fleet_name: str) -> list[base.ObservedContainer]:
        """Every container of the fleet, running or not, found by label; sorted by name."""
        summaries = self._read(f"/containers/json?all=1&{fleet_filter_query(fleet_name)}",
                               "list the fleet's containers")
        if not isinstance(summaries, list):
            raise errors.PermanentError("Could not list the fleet's containers: the Docker engine's answer "
                                        "was not a list of containers.")
        found = []
        for summary in summaries:
            container_id = summary.get("Id") if isinstance(summary, dict) else None
            if not isinstance(container_id, str) or not container_id.isalnum():
                continue  # not a container the engine could inspect
            attrs = self._read(f"/containers/{container_id}/json", "inspect the fleet's containers", missing_ok=True)
            if isinstance(attrs, dict):  # None: removed between list and inspect, it is not there any more
                found.append(observed_from_inspect(attrs))
        return sorted(found, key=lambda c: (c.name, c.id))

    def create(self, spec: desired.ContainerSpec) -> str:
        return self._sdk().create(spec)

    def remove(self, container_id: str) -> None:
        self._sdk().remove(container_id)

    def wait_running(self, container_id: str, timeout_s: float = 60.0) -> base.ObservedContainer:
        return self._sdk().wait_running(container_id, timeout_s)

    def logs_tail(self, container_id: str, lines: int = 50) -> str:
        return self._sdk().logs_tail(container_id, lines)

    def describe(self, container_id: str) -> str:
        return self._sdk().describe(container_id)

    def _sdk(self):
        if self._changes is None:
            from fleetspec.drivers import docker

            self._changes = docker.DockerDriver()
        return self._changes

    def _read(self, target: str, action: str, missing_ok: bool = False):
        from fleetspec import drivers

        try:
            status, body = get_json(self.path, target)
        except OSError as exc:
            raise drivers.no_docker_engine(exc) from exc
        except ValueError as exc:  # not JSON, or too large
            raise errors.PermanentError(f"Could not {action}: the Docker engine's answer was unusable ({exc}). "
                                        "Is DOCKER_HOST a Docker engine?") from exc
        if status == 404 and missing_ok:
            return None
        if status != 200:
            detail = body.get("message") if isinstance(body, dict) else body
            raise errors.PermanentError(f"Could not {action}: the Docker engine said: {detail} (HTTP {status})")
        return body


def observed_from_inspect(attrs: dict) -> base.ObservedContainer:
    from fleetspec.drivers import base

    state = attrs.get("State") or {}
    found = (attrs.get("Config") or {}).get("Labels") or {}
    return base.ObservedContainer(
        id=attrs["Id"],
        name=attrs.get("Name", "").lstrip("/"),
        image=(attrs.get("Config") or {}).get("Image", ""),
        status=state.get("Status", "unknown"),
        health=(state.get("Health") or {}).get("Status"),
        ports=_published_ports(attrs),
        exit_code=state.get("ExitCode") if state.get("Status") in (base.EXITED, "dead") else None,
        started_at=state.get("StartedAt") or None,
        **base.identity_from_labels(found),
    )


def _published_ports(attrs: dict) -> tuple[tuple[int, str, int], ...]:
    published = ((attrs.get("NetworkSettings") or {}).get("Ports")) or {}
    result = []
    for key, bindings in published.items():
        port, _, protocol = key.partition("/")
        if protocol != "tcp" or not bindings:
            continue
        for binding in bindings:
            if binding.get("HostPort"):
                result.append((int(port), binding.get("HostIp", ""), int(binding["HostPort"])))
    # IPv4 before IPv6 for the same port: callers connect to host_ip.
    return tuple(sorted(set(result), key=lambda p: (p[0], ":" in p[1], p[1])))
