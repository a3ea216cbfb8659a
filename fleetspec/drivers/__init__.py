"""Runtime drivers: `docker` (containers on a Docker engine) and `local` (child processes).

`for_runtime` picks one from `runtime.target`; each driver module is imported only when chosen,
so the local runtime works without the docker SDK being importable or an engine running.
"""

from __future__ import annotations

import pathlib

from fleetspec import errors
from fleetspec.drivers import base, files


def run_dir(fleet_file: pathlib.Path, fleet_name: str) -> pathlib.Path:
    """Where the local runtime keeps its process records and logs: beside the state file."""
    return files.state_dir(fleet_file) / "run" / fleet_name


def for_runtime(target: str, fleet_file: pathlib.Path, fleet_name: str) -> base.Driver:
    """The driver for `runtime.target`; raises TemporaryError when the Docker engine does not answer."""
    if target == "docker":
        from fleetspec.drivers import docker

        return docker.DockerDriver()
    if target == "local":
        from fleetspec.drivers import local

        # Engines run from the fleet file's directory, so relative paths in their argv mean what
        # they mean in fleet.yaml.
        return local.LocalDriver(run_dir(fleet_file, fleet_name), cwd=fleet_file.resolve().parent)
    raise errors.PermanentError(
        f"fleetspec does not run fleets on runtime target {target!r} itself. Use `fleetspec compile` to "
        "write the manifests and apply them with your own tooling, or set runtime.target to docker or local."
    )
