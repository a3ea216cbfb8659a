"""The KV cache a replica of vLLM's CPU build gets, as the plan sizes it.

On the CPU build vLLM sizes its KV cache from what the host has free when the worker starts
(`requested_cpu_memory − RSS`, vllm/v1/worker/cpu_worker.py), so two replicas on one host, or any
other process, change each other's cache. fleetspec passes the planned size instead
(--kv-cache-memory-bytes): the engine then holds exactly what `plan` showed.
"""

from __future__ import annotations

from fleetspec.catalog import gpus as catalog_gpus
from fleetspec.catalog import models as catalog_models
from fleetspec.planner import budget, engine
from fleetspec.spec import models as spec_models


def host_facts(spec: spec_models.FleetSpec, server: spec_models.Server) -> catalog_gpus.GpuFacts | None:
    """The `cpu` group this server runs on, or None for a GPU server (or GPUs found at plan time)."""
    if not isinstance(spec.gpus, list):
        return None
    wanted = catalog_gpus.canonical_name(server.gpu_type) if server.gpu_type else None
    for group in spec.gpus:
        if not catalog_gpus.is_host(group.type) or group.memory_gib is None:
            continue
        facts = catalog_gpus.resolve(group)
        if wanted in (None, facts.type):
            return facts
    return None


def planned(spec: spec_models.FleetSpec, server: spec_models.Server) -> budget.GpuBudget | None:
    """One replica's budget on its CPU host; None on GPUs or for a model nobody knows."""
    host = host_facts(spec, server)
    facts = catalog_models.resolve(spec.base_model) if host is not None else None
    if facts is None:
        return None
    return budget.compute(facts, engine.settings_for(spec, server, facts, host), host.total_bytes)


def kv_cache_bytes(spec: spec_models.FleetSpec, server: spec_models.Server) -> int | None:
    """Planned KV-cache bytes of one replica on a CPU host; None on GPUs, or when nothing is left."""
    b = planned(spec, server)
    return b.kv_cache if b is not None and b.kv_cache > 0 else None


def replica_host_bytes(spec: spec_models.FleetSpec, server: spec_models.Server) -> int | None:
    """Host RAM one replica takes on a CPU host: the worker's budget plus the API server and engine core."""
    b = planned(spec, server)
    return None if b is None else b.budget + b.cuda_context
