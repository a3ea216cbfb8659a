"""Facts compose and Kubernetes outputs share: adapter mounts, the router's image and command.

The router command is the router's own (`python -m fleetspec.router serve --config FILE --host H
--port N`, fleetspec/router/cli.py), reading the config compiled by `compile.router`.
"""

from __future__ import annotations

import functools
import importlib.metadata
import pathlib
import posixpath

from fleetspec.catalog import vllm_flags
from fleetspec.compile import vllm_args
from fleetspec.planner import host as cpu_host
from fleetspec.spec import models

# vLLM's own image of its CPU build (x86-64), per release; the CUDA image cannot run without a GPU.
CPU_IMAGE = "public.ecr.aws/q9t5s3a7/vllm-cpu-release-repo"

ROUTER_CONFIG_DIR = "/etc/fleetspec"
ROUTER_CONFIG_FILE = "router.json"
ROUTER_CONFIG_PATH = f"{ROUTER_CONFIG_DIR}/{ROUTER_CONFIG_FILE}"
ROUTER_CONTAINER_PORT = 8080
HF_CACHE = "/root/.cache/huggingface"  # the vLLM image's Hugging Face cache


def router_image(spec: models.FleetSpec) -> str:
    return spec.runtime.router.image or f"fleetspec/router:{_installed_version()}"


@functools.lru_cache(maxsize=1)
def _installed_version() -> str:
    # Once per process: importlib.metadata scans and parses the installed distributions on every
    # call, and Kubernetes asks once per LoRA server (its agent sidecar runs this image).
    try:
        return importlib.metadata.version("fleetspec")
    except importlib.metadata.PackageNotFoundError:
        return "latest"


def router_argv() -> list[str]:
    return ["python3", "-m", "fleetspec.router", "serve", "--config", ROUTER_CONFIG_PATH,
            "--host", "0.0.0.0", "--port", str(ROUTER_CONTAINER_PORT)]


def startup_seconds(server: models.Server, weights_gib: float | None) -> int:
    """How long a replica may take from start to healthy: the server's own figure, else a budget that
    grows with the weights. Health checks, probes and the reconciler all wait exactly this long."""
    return server.startup_timeout_s or vllm_flags.startup_budget_seconds(weights_gib)


def secret_names(text: str | None) -> list[str]:
    """The VAR of every `${VAR}` in a value."""
    return vllm_args.SECRET_REF.findall(text or "")


def router_env(spec: models.FleetSpec) -> dict[str, str]:
    """The router resolves `${VAR}` in its admin token, Redis URL, client key and the engines' key from its
    own environment, so each
    VAR must reach it as a reference (compose: the operator's env; Kubernetes: the Secret; the
    reconciler: fleetspec's own environment at start)."""
    router = spec.runtime.router
    names = [*secret_names(router.admin_token), *secret_names(router.redis_url), *secret_names(router.api_key),
             *secret_names(spec.runtime.engine_api_key)]
    return {name: f"${{{name}}}" for name in sorted(set(names))}


def adapter_paths(spec: models.FleetSpec, server: models.Server, base_dir: pathlib.Path | None) -> list[str]:
    """Every version's path of every specialist this server hosts (the reconciler may hot-load any)."""
    if server.lora is None:
        return []
    found = []
    for specialist in spec.hosted_by(server):
        for version in specialist.all_versions:
            entry = specialist.version_entry(version)
            if entry is not None:
                found.append(vllm_args.resolve_path(entry.path, base_dir))
    return found


def adapter_roots(spec: models.FleetSpec, server: models.Server, base_dir: pathlib.Path | None) -> list[str]:
    """Directories to mount read-only at the same path, so argv paths mean the same inside.

    `runtime.adapter_roots` when given; otherwise the parent directory of each absolute adapter
    path. Nested directories collapse into their ancestor; Hugging Face ids need no mount."""
    paths = adapter_paths(spec, server, base_dir)
    if not paths:
        return []
    if spec.runtime.adapter_roots:
        candidates = [vllm_args.resolve_path(root, base_dir) for root in spec.runtime.adapter_roots]
    else:
        candidates = [posixpath.dirname(p.rstrip("/")) or "/" for p in paths if p.startswith("/")]
    return _outermost(candidates)


def _outermost(directories: list[str]) -> list[str]:
    unique = sorted({posixpath.normpath(d) for d in directories if d.startswith("/")})
    kept: list[str] = []
    for directory in unique:
        if not any(directory == k or directory.startswith(k.rstrip("/") + "/") for k in kept):
            kept.append(directory)
    return kept


def engine_image(spec: models.FleetSpec, server: models.Server) -> str:
    """The server's image, else vLLM's CUDA image, or its CPU image for a server on a `cpu` host."""
    if server.image or spec.runtime.image:
        return server.image or spec.runtime.image
    if cpu_host.host_facts(spec, server) is not None:
        return f"{CPU_IMAGE}:v{spec.runtime.vllm_version}"
    return spec.runtime.default_image


def on_host(spec: models.FleetSpec, server: models.Server) -> bool:
    """Whether the server runs vLLM's CPU build: no GPU to request, memory to reserve instead."""
    return cpu_host.host_facts(spec, server) is not None
