"""Values derived from a FleetSpec that several stages need to agree on (ports, GPU ids, defaults).

Pure functions of the spec; compile, planner and reconcile call these instead of re-deriving.
"""

from __future__ import annotations

from fleetspec.spec import models


def vllm_version_tuple(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in version.split("."))


def default_gpu_memory_utilization(vllm_version: str) -> float:
    # vLLM raised the default from 0.9 (0.11, vllm/config/cache.py:43) to 0.92 (0.33,
    # vllm/config/cache.py:215). The exact release in between is not confirmed; 0.12 is assumed.
    return 0.92 if vllm_version_tuple(vllm_version) >= (0, 12) else 0.9


def utilization(spec: models.FleetSpec, server: models.Server) -> float:
    if server.gpu_memory_utilization is not None:
        return server.gpu_memory_utilization
    return default_gpu_memory_utilization(spec.runtime.vllm_version)


def rank_ceiling(rank: int) -> int:
    """The smallest max_lora_rank vLLM accepts that holds an adapter of this rank."""
    for allowed in models.ALLOWED_MAX_LORA_RANKS:
        if allowed >= rank:
            return allowed
    return models.ALLOWED_MAX_LORA_RANKS[-1]


def group_device_ids(groups: list[models.GpuGroup], index: int) -> list[int]:
    """Device ids of one GPU group: its explicit `ids`, else numbered on after the groups before it."""
    group = groups[index]
    if group.ids is not None:
        return list(group.ids)
    start = sum(g.count for g in groups[:index])
    return list(range(start, start + group.count))


def replica_ports(spec: models.FleetSpec) -> dict[tuple[str, int], int]:
    """(server, replica) → host port. Explicit ports count up per replica; the rest share
    consecutive ports from runtime.base_port, skipping every explicitly claimed one."""
    claimed = {s.port + r for s in spec.servers if s.port is not None for r in range(s.replicas)}
    if spec.runtime.router.enabled:
        claimed.add(spec.runtime.router.port)
    ports: dict[tuple[str, int], int] = {}
    next_free = spec.runtime.base_port
    for server in spec.servers:
        for replica in range(server.replicas):
            if server.port is not None:
                ports[(server.name, replica)] = server.port + replica
                continue
            while next_free in claimed:
                next_free += 1
            ports[(server.name, replica)] = next_free
            claimed.add(next_free)
    return ports


def served_adapter_name(specialist_name: str, version: str) -> str:
    """The name vLLM serves one adapter version under (`+` in a version becomes `_`)."""
    return f"{specialist_name}--{version.replace('+', '_')}"


def served_base_name(spec: models.FleetSpec) -> str:
    """The name vLLM serves the base model under: its id, or the fleet name for a local path."""
    model_id = spec.base_model.id
    return spec.name if _is_local_path(model_id) else model_id


def _is_local_path(text: str) -> bool:
    return text.startswith(("/", "./", "../", "~")) or text in (".", "..")
