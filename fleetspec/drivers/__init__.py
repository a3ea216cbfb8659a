"""Runtime drivers: `docker` (containers on a Docker engine) and `local` (child processes).

`for_runtime` picks one from `runtime.target`; each driver module is imported only when chosen,
so the local runtime works without the docker SDK being importable or an engine running.
"""

from __future__ import annotations

import os
import pathlib
import socket
from typing import TYPE_CHECKING

from fleetspec import errors
from fleetspec.drivers import files

if TYPE_CHECKING:  # base needs compile.desired (pydantic); the fast path imports this package light
    from fleetspec.drivers import base


def run_dir(fleet_file: pathlib.Path, fleet_name: str) -> pathlib.Path:
    """Where the local runtime keeps its process records and logs: beside the state file."""
    return files.state_dir(fleet_file) / "run" / fleet_name


def for_runtime(target: str, fleet_file: pathlib.Path, fleet_name: str) -> base.Driver:
    """The driver for `runtime.target`; raises TemporaryError when the Docker engine does not answer."""
    if target == "docker":
        silent = _docker_socket_silent()
        if silent is not None:  # say so without spending ~0.3 s importing the docker SDK
            raise no_docker_engine(silent)
        address = docker_address()
        if address.startswith("unix://"):
            from fleetspec.drivers import docker_api

            return docker_api.SocketDockerDriver(address[len("unix://"):])
        from fleetspec.drivers import docker

        return docker.DockerDriver()
    if target == "local":
        from fleetspec.drivers import local

        # Engines run from the fleet file's directory, so relative paths in their argv mean what
        # they mean in fleet.yaml.
        return local.LocalDriver(run_dir(fleet_file, fleet_name), cwd=fleet_file.resolve().parent,
                                 fleet_file=fleet_file)
    raise errors.PermanentError(
        f"fleetspec does not run fleets on runtime target {target!r} itself. Use `fleetspec compile` to "
        "write the manifests and apply them with your own tooling, or set runtime.target to docker or local."
    )


def docker_address() -> str:
    return os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")


def no_docker_engine(reason: object) -> errors.TemporaryError:
    return errors.TemporaryError(
        f"No Docker engine answered at {docker_address()} ({reason}). Start the engine (`dockerd`, or "
        "`systemctl start docker`), point DOCKER_HOST at it, or use `runtime: {target: local}`."
    )


def _docker_socket_silent() -> str | None:
    """Why the local Docker socket refuses a connection, or None when it accepts one (or the engine
    is reached another way, TCP or SSH, which the SDK handles)."""
    address = docker_address()
    if not address.startswith("unix://"):
        return None
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.settimeout(2.0)
        try:
            probe.connect(address[len("unix://"):])
        except OSError as exc:
            return exc.strerror or str(exc)
    return None
