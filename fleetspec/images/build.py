"""Build (or reuse) the images the sim runtime and the tests need, offline.

    fleetspec/base:<hash>    debootstrap'd Debian + python3, from `docker import` of a cached tarball
    fleetspec/sim:<version>  base + fleetspec and its dependencies + a `vllm` command running the sim

Each image carries the hash of its inputs as a label. An image whose label matches is reused as
is, so an unchanged tree costs one API call; any change to fleetspec's files, its dependency
versions or these recipes builds a new one.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import os
import pathlib
import time
from collections.abc import Iterator

import docker
import docker.errors

from fleetspec import errors
from fleetspec.compile import labels
from fleetspec.images import payload, rootfs

BASE_REPOSITORY = "fleetspec/base"
SIM_REPOSITORY = payload.SIM_REPOSITORY
KIND_BASE = "base"
KIND_SIM = "sim"
_LOCK_TIMEOUT_S = 900

# The sim speaks `vllm serve MODEL --flags`, so compiled argv runs unchanged in this image.
VLLM_SHIM = b'#!/bin/sh\nexec python3 -m fleetspec.sim.vllm_shim "$@"\n'

DOCKERFILE = """\
FROM {base}
COPY site-packages/ {site_packages}/
COPY vllm /usr/local/bin/vllm
ENV PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
# Bytecode built once here, so a container starts without compiling pydantic on every run.
RUN python3 -m compileall -q -j 0 {site_packages} && python3 -c "import fleetspec, pydantic, yaml"
"""


@dataclasses.dataclass(frozen=True)
class BuiltImage:
    tag: str
    id: str
    inputs_hash: str
    size_bytes: int
    built: bool  # False: an existing image with the same inputs was reused
    seconds: float
    base: BuiltImage | None = None  # the image this one was layered on


def cache_dir() -> pathlib.Path:
    """FLEETSPEC_CACHE_DIR, else $XDG_CACHE_HOME/fleetspec, else ~/.cache/fleetspec."""
    explicit = os.environ.get("FLEETSPEC_CACHE_DIR")
    if explicit:
        return pathlib.Path(explicit)
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (pathlib.Path(xdg) if xdg else pathlib.Path.home() / ".cache") / "fleetspec"


def sim_tag() -> str:
    return f"{SIM_REPOSITORY}:{payload.project_version()}"


def ensure_sim_image(client: docker.DockerClient, cache: pathlib.Path | None = None,
                     force: bool = False) -> BuiltImage:
    """The sim image for the current working tree, built only when its inputs changed."""
    cache = cache or cache_dir()
    with _build_lock(cache):
        base = ensure_base_image(client, cache)
        started = time.monotonic()
        dockerfile = DOCKERFILE.format(base=base.tag, site_packages=payload.SITE_PACKAGES)
        content = payload.collect({"Dockerfile": (dockerfile.encode(), False), "vllm": (VLLM_SHIM, True)})
        inputs = content.inputs_hash(base.inputs_hash)
        tag = sim_tag()
        existing = None if force else _find(client, tag, inputs)
        if existing is not None:
            return _described(existing, tag, inputs, built=False, started=started, base=base)
        image = _build(client, content, tag, inputs, nocache=force)
        _prune_dangling(client, KIND_SIM)
        return _described(image, tag, inputs, built=True, started=started, base=base)


def ensure_base_image(client: docker.DockerClient, cache: pathlib.Path) -> BuiltImage:
    started = time.monotonic()
    recipe = rootfs.Recipe()
    inputs = recipe.inputs_hash()
    tag = f"{BASE_REPOSITORY}:{recipe.suite}-{inputs[:12]}"
    existing = _find(client, tag, inputs)
    if existing is not None:
        return _described(existing, tag, inputs, built=False, started=started)
    tarball = rootfs.ensure_tarball(cache / "images", recipe)
    repository, _, version = tag.partition(":")
    changes = [
        "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "ENV LANG=C.UTF-8",
        f"LABEL {labels.IMAGE_KIND}={KIND_BASE} {labels.IMAGE_INPUTS}={inputs}",
        'CMD ["python3"]',
    ]
    with _docker_errors(f"import {tarball.name} as {tag}"):
        client.api.import_image_from_file(str(tarball), repository=repository, tag=version, changes=changes)
        image = client.images.get(tag)
    return _described(image, tag, inputs, built=True, started=started)


def _build(client: docker.DockerClient, content: payload.Payload, tag: str, inputs: str, nocache: bool):
    with _docker_errors(f"build {tag}"):
        image, _logs = client.images.build(
            fileobj=content.context_tar(), custom_context=True, tag=tag, pull=False, rm=True, forcerm=True,
            nocache=nocache, labels={labels.IMAGE_KIND: KIND_SIM, labels.IMAGE_INPUTS: inputs},
        )
    return image


def _find(client: docker.DockerClient, tag: str, inputs: str):
    try:
        image = client.images.get(tag)
    except docker.errors.ImageNotFound:
        return None
    return image if image.labels.get(labels.IMAGE_INPUTS) == inputs else None


def _described(image, tag: str, inputs: str, built: bool, started: float,
               base: BuiltImage | None = None) -> BuiltImage:
    return BuiltImage(tag=tag, id=image.id, inputs_hash=inputs, size_bytes=int(image.attrs.get("Size", 0)),
                      built=built, seconds=time.monotonic() - started, base=base)


def _prune_dangling(client: docker.DockerClient, kind: str) -> None:
    """Drop untagged older builds of `kind` that no container uses; keeps the disk from filling."""
    with contextlib.suppress(docker.errors.APIError):
        client.images.prune(filters={"dangling": True, "label": f"{labels.IMAGE_KIND}={kind}"})


@contextlib.contextmanager
def _build_lock(cache: pathlib.Path) -> Iterator[None]:
    """One build at a time per machine: parallel test sessions wait, then reuse the result."""
    cache.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + _LOCK_TIMEOUT_S
    with (cache / "images.lock").open("w") as handle:
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise errors.TemporaryError(
                        f"Another process has been building images for {_LOCK_TIMEOUT_S // 60} minutes "
                        f"(lock {cache / 'images.lock'}). Wait for it, or stop it and run again."
                    ) from None
                time.sleep(0.5)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@contextlib.contextmanager
def _docker_errors(action: str) -> Iterator[None]:
    try:
        yield
    except docker.errors.BuildError as exc:
        tail = "".join(str(line.get("stream") or line.get("error") or "") for line in list(exc.build_log)[-20:])
        raise errors.PermanentError(f"Could not {action}: {exc.msg}\n{tail}") from exc
    except docker.errors.APIError as exc:
        raise errors.PermanentError(f"Could not {action}: the Docker engine said: {exc.explanation or exc}") from exc
