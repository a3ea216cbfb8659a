"""The Docker runtime: containers on a real Docker engine, through the docker SDK only.

Everything is read from the engine's API (labels, state, published ports), never from the text
the docker CLI prints. Engine errors become fleetspec errors with a sentence and a fix; the
engine's own explanation is kept in the message because it is usually the useful part.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator

import docker
import docker.errors
import docker.types
import requests

from fleetspec import errors
from fleetspec.compile import desired, labels
from fleetspec.drivers import base
from fleetspec.drivers.docker_api import observed_from_inspect

_STOP_GRACE_S = 10  # SIGTERM → SIGKILL; vLLM shuts down in well under this


def connect(timeout_s: float = 10.0) -> docker.DockerClient:
    """A client for the engine named by DOCKER_HOST (or the local socket), checked with a ping."""
    try:
        client = docker.from_env(timeout=int(max(1, timeout_s)))
        client.ping()
    except (docker.errors.DockerException, requests.exceptions.RequestException) as exc:
        from fleetspec import drivers

        raise drivers.no_docker_engine(exc) from exc
    return client


class DockerDriver:
    def __init__(self, client: docker.DockerClient | None = None, poll_s: float = 0.05):
        self.client = client or connect()
        self.poll_s = poll_s

    def observe(self, fleet_name: str) -> list[base.ObservedContainer]:
        """Every container of the fleet, running or not, found by label; sorted by name."""
        with _engine_errors("list the fleet's containers"):
            summaries = self.client.api.containers(all=True, filters=labels.fleet_filter(fleet_name))
            found = []
            for summary in summaries:
                try:
                    found.append(observed_from_inspect(self.client.api.inspect_container(summary["Id"])))
                except docker.errors.NotFound:
                    continue  # removed between list and inspect: it is not there any more
        return sorted(found, key=lambda c: (c.name, c.id))

    def create(self, spec: desired.ContainerSpec) -> str:
        """Create and start the container; return its id. A failed start leaves nothing behind."""
        if spec.label_dict.get(labels.FLEET) is None:
            raise ValueError(f"ContainerSpec {spec.name!r} has no {labels.FLEET} label; observe() would lose it")
        with _engine_errors(f"create container {spec.name}", image=spec.image, name=spec.name):
            container = self.client.containers.create(**container_config(spec))
        try:
            with _engine_errors(f"start container {spec.name}", image=spec.image, name=spec.name):
                container.start()
        except errors.FleetspecError:
            self.remove(container.id)
            raise
        return container.id

    def remove(self, container_id: str) -> None:
        """Stop (SIGTERM, then SIGKILL after a grace period) and delete; gone already is fine."""
        with _engine_errors(f"remove container {container_id[:12]}"):
            try:
                self.client.api.stop(container_id, timeout=_STOP_GRACE_S)
                self.client.api.remove_container(container_id, force=True)
            except docker.errors.NotFound:
                return
            except docker.errors.APIError as exc:
                if exc.status_code != 409:  # 409: removal already in progress elsewhere
                    raise

    def wait_running(self, container_id: str, timeout_s: float = 60.0) -> base.ObservedContainer:
        """Wait until the container runs; fail early with its logs if it exits instead."""
        deadline = time.monotonic() + timeout_s
        while True:
            current = self._inspect(container_id)
            if current.running:
                return current
            if current.status in (base.EXITED, "dead"):
                raise errors.PermanentError(
                    f"Container {current.name} exited with code {current.exit_code} instead of starting. "
                    f"Its last log lines:\n{self.logs_tail(container_id, 20)}"
                )
            if time.monotonic() >= deadline:
                raise errors.TemporaryError(
                    f"Container {current.name} is still {current.status} after {timeout_s:.0f} s. "
                    "Check `docker inspect` on it, or raise the timeout if the engine is slow."
                )
            time.sleep(self.poll_s)

    def logs_tail(self, container_id: str, lines: int = 50) -> str:
        with _engine_errors(f"read the logs of container {container_id[:12]}"):
            try:
                raw = self.client.api.logs(container_id, stdout=True, stderr=True, tail=lines)
            except docker.errors.NotFound:
                return ""
        return raw.decode("utf-8", errors="replace")

    def describe(self, container_id: str) -> str:
        """How a user finds this container: its name and id (what `docker ps` and `docker logs` take)."""
        try:
            name = self._inspect(container_id).name
        except errors.FleetspecError:
            return f"container {container_id[:12]}"
        return f"container {name} (id {container_id[:12]}, logs: `docker logs {name}`)"

    def _inspect(self, container_id: str) -> base.ObservedContainer:
        with _engine_errors(f"inspect container {container_id[:12]}"):
            try:
                return observed_from_inspect(self.client.api.inspect_container(container_id))
            except docker.errors.NotFound as exc:
                raise errors.PermanentError(
                    f"Container {container_id[:12]} disappeared (removed outside fleetspec?). "
                    "Run the command again; fleetspec re-reads the fleet every time."
                ) from exc


def container_config(spec: desired.ContainerSpec) -> dict:
    """Keyword arguments for `containers.create`: exactly what the engine is asked to run."""
    kwargs: dict = {
        "image": spec.image,
        "name": spec.name,
        # The argv is the whole command line, whatever ENTRYPOINT the image declares
        # (vllm/vllm-openai has `vllm serve` as its entrypoint; our sim image has none).
        "entrypoint": [spec.argv[0]],
        "command": list(spec.argv[1:]),
        "environment": base.expand_secrets(spec.env_dict, spec.name),
        "labels": {**spec.label_dict, labels.SPEC_HASH: spec.spec_hash()},
        "ports": {f"{p.container_port}/tcp": (p.host_ip, p.host_port) for p in spec.ports},
        "mounts": [
            docker.types.Mount(target=m.target, source=m.source, type="bind", read_only=m.read_only)
            for m in spec.volumes
        ],
        # A tiny init as PID 1 forwards SIGTERM, so a Python engine stops at once instead of
        # waiting out the grace period (PID 1 ignores signals it has no handler for).
        "init": True,
        "detach": True,
    }
    if spec.network_mode:
        kwargs["network_mode"] = spec.network_mode
        if spec.network_mode == "host":
            kwargs.pop("ports")  # the process binds the host's ports itself
    if spec.gpu_ids:
        kwargs["device_requests"] = [
            docker.types.DeviceRequest(driver="nvidia", device_ids=list(spec.gpu_ids), capabilities=[["gpu"]])
        ]
        kwargs["ipc_mode"] = "host"  # vLLM's docs: tensor-parallel workers share memory through /dev/shm
    return kwargs


@contextlib.contextmanager
def _engine_errors(action: str, image: str = "", name: str = "") -> Iterator[None]:
    try:
        yield
    except docker.errors.ImageNotFound as exc:
        raise errors.PermanentError(
            f"Could not {action}: the image {image} is not on this Docker engine. Pull it "
            "(`docker pull IMAGE`), or for the sim engine build it with `python -m fleetspec.images build`."
        ) from exc
    except docker.errors.APIError as exc:
        if exc.status_code == 409 and name:
            raise errors.PermanentError(
                f"Could not {action}: another container is already named {name}. Remove it "
                f"(`docker rm -f {name}`) or rename the fleet."
            ) from exc
        detail = exc.explanation or str(exc)
        raise errors.PermanentError(f"Could not {action}: the Docker engine said: {detail}") from exc
    except (docker.errors.DockerException, requests.exceptions.RequestException) as exc:
        raise errors.TemporaryError(
            f"Could not {action}: the Docker engine did not answer ({exc}). Check that it is running."
        ) from exc
