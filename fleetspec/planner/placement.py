"""Which GPUs each server replica gets.

Pure: the inventory (GPU groups) and the demands (replicas × GPUs per replica × utilization) in,
concrete device ids out, or a finding that says what is missing. A GPU is shared by several
replicas only while their gpu_memory_utilization values add up to at most 1.0; one replica's
tensor/pipeline group uses GPUs of a single type, unless its pipeline stages name their own types.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

from fleetspec.catalog import gpus as catalog_gpus
from fleetspec.errors import Diagnostic, Severity
from fleetspec.spec import derived, paths
from fleetspec.spec import models as spec_models

EPSILON = 1e-9


@dataclasses.dataclass(frozen=True)
class GpuSlot:
    id: int
    gpu: catalog_gpus.GpuFacts
    group_index: int


@dataclasses.dataclass(frozen=True)
class Demand:
    server_index: int
    name: str
    replicas: int
    gpus_per_replica: int
    utilization: float
    gpu_type: str | None  # canonical catalog name the server is pinned to, or None
    # Pipeline stages on different GPU types: the canonical type of each stage; one stage takes
    # data x tensor parallel GPUs. Empty when the replica uses one type.
    stage_types: tuple[str, ...] = ()
    tensor_parallel_size: int = 1
    data_parallel_size: int = 1


@dataclasses.dataclass(frozen=True)
class Assignment:
    server_index: int
    replica: int
    gpu_ids: tuple[int, ...]  # in vLLM's rank order: data rank, then pipeline stage, then tensor rank
    gpu: catalog_gpus.GpuFacts  # the first stage's
    stage_gpus: tuple[catalog_gpus.GpuFacts, ...] = ()  # per pipeline stage, when they differ


def inventory(groups: Sequence[spec_models.GpuGroup]) -> tuple[list[GpuSlot], list[Diagnostic]]:
    """Every GPU with its id (`ids`, else numbered in order across groups) and facts."""
    slots: list[GpuSlot] = []
    findings: list[Diagnostic] = []
    for index, group in enumerate(groups):
        try:
            facts = catalog_gpus.resolve(group)
        except catalog_gpus.HostMemoryNeeded:
            findings.append(Diagnostic(
                Severity.ERROR, "host-memory-needed", paths.format_path(("gpus", index, "memory_gib")),
                "a `cpu` group runs vLLM's CPU build in host memory, and fleetspec cannot know how much this "
                "host has",
                "add `memory_gib:` with the host's memory in GiB (`free -g`, the `total` column)",
            ))
            continue
        except catalog_gpus.UnknownGpuType:
            known = ", ".join(catalog_gpus.known_types())
            findings.append(Diagnostic(
                Severity.ERROR, "unknown-gpu-type", paths.format_path(("gpus", index, "type")),
                f"fleetspec does not know the memory of a `{group.type}` GPU",
                f"use one of {known}, or give the card's memory with `memory_gib: <GiB>`",
            ))
            continue
        ids = derived.group_device_ids(list(groups), index)
        slots.extend(GpuSlot(device, facts, index) for device in ids)
    return slots, findings


def place(demands: Sequence[Demand], slots: Sequence[GpuSlot],
          prefer: Callable[[Demand, catalog_gpus.GpuFacts], bool] | None = None,
          ) -> tuple[list[Assignment], list[Diagnostic]]:
    """Assign every replica; `prefer(demand, gpu)` ranks GPU types the replica fits on first."""
    free = {slot.id: 1.0 for slot in slots}
    assignments: list[Assignment] = []
    findings: list[Diagnostic] = []
    for demand in demands:
        for replica in range(demand.replicas):
            chosen = _choose(demand, slots, free, prefer)
            if chosen is None:
                findings.append(_shortage(demand, replica, slots, free))
                break
            for slot in chosen:
                free[slot.id] -= demand.utilization
            stage_gpus = tuple(chosen[k * demand.tensor_parallel_size].gpu for k in range(len(demand.stage_types)))
            assignments.append(Assignment(demand.server_index, replica, tuple(s.id for s in chosen), chosen[0].gpu,
                                          stage_gpus))
    return assignments, findings


def _types_in_order(slots: Sequence[GpuSlot]) -> list[catalog_gpus.GpuFacts]:
    seen: dict[str, catalog_gpus.GpuFacts] = {}
    for slot in slots:
        seen.setdefault(slot.gpu.type, slot.gpu)
    return list(seen.values())


def _choose(demand: Demand, slots: Sequence[GpuSlot], free: dict[int, float],
            prefer: Callable[[Demand, catalog_gpus.GpuFacts], bool] | None) -> list[GpuSlot] | None:
    if demand.stage_types:
        return _choose_stages(demand, slots, free)
    types = [g for g in _types_in_order(slots) if demand.gpu_type in (None, g.type)]
    if prefer is not None:
        types.sort(key=lambda g: not prefer(demand, g))  # stable: inventory order within each rank
    for gpu in types:
        usable = [s for s in slots if s.gpu.type == gpu.type and free[s.id] + EPSILON >= demand.utilization]
        if len(usable) >= demand.gpus_per_replica:
            return _best_fit(usable, free, demand.gpus_per_replica)
    return None


def _best_fit(usable: list[GpuSlot], free: dict[int, float], count: int) -> list[GpuSlot]:
    # Fill GPUs already shared before opening fresh ones, lowest id first.
    return sorted(sorted(usable, key=lambda s: (free[s.id], s.id))[:count], key=lambda s: s.id)


def _choose_stages(demand: Demand, slots: Sequence[GpuSlot], free: dict[int, float]) -> list[GpuSlot] | None:
    """GPUs for a pipeline whose stages sit on different types, in the order vLLM numbers its ranks
    (ParallelConfig's rank layout [data, pipeline, tensor], rank = local device index): for each data
    rank, stage 0's tensor-parallel GPUs, then stage 1's, and so on."""
    per_stage = demand.tensor_parallel_size
    wanted: dict[str, int] = {}
    for gpu_type in demand.stage_types:
        wanted[gpu_type] = wanted.get(gpu_type, 0) + per_stage * demand.data_parallel_size
    picked: dict[str, list[GpuSlot]] = {}
    for gpu_type, count in wanted.items():
        usable = [s for s in slots if s.gpu.type == gpu_type and free[s.id] + EPSILON >= demand.utilization]
        if len(usable) < count:
            return None
        picked[gpu_type] = _best_fit(usable, free, count)
    ordered = []
    for _rank in range(demand.data_parallel_size):
        for gpu_type in demand.stage_types:
            ordered += picked[gpu_type][:per_stage]
            picked[gpu_type] = picked[gpu_type][per_stage:]
    return ordered


def _shortage(demand: Demand, replica: int, slots: Sequence[GpuSlot], free: dict[int, float]) -> Diagnostic:
    if demand.stage_types:
        return _stage_shortage(demand, replica, slots, free)
    kind = f"{demand.gpu_type} " if demand.gpu_type else ""
    pool = [s for s in slots if demand.gpu_type in (None, s.gpu.type)]
    room = sum(1 for s in pool if free[s.id] + EPSILON >= demand.utilization)
    placed = replica
    message = (
        f"replica {replica} of `{demand.name}` needs {demand.gpus_per_replica} {kind}GPU(s) with "
        f"{demand.utilization:.2f} of their memory free, but only {room} such GPU(s) are left"
    )
    if placed:
        hint = f"lower replicas to {placed}, declare more GPUs, or lower gpu_memory_utilization so replicas can share GPUs"
    else:
        hint = "declare more GPUs under `gpus:`, or lower gpu_memory_utilization so servers can share GPUs"
    return Diagnostic(Severity.ERROR, "not-enough-gpus", paths.format_path(("servers", demand.server_index, "replicas")),
                      message, hint)


def _stage_shortage(demand: Demand, replica: int, slots: Sequence[GpuSlot], free: dict[int, float]) -> Diagnostic:
    short = []
    for gpu_type in dict.fromkeys(demand.stage_types):
        count = demand.stage_types.count(gpu_type) * demand.tensor_parallel_size * demand.data_parallel_size
        room = sum(1 for s in slots if s.gpu.type == gpu_type and free[s.id] + EPSILON >= demand.utilization)
        if room < count:
            short.append(f"{count} {gpu_type} GPU(s) ({room} left)")
    message = (f"replica {replica} of `{demand.name}` needs, for its pipeline stages, {' and '.join(short)} with "
               f"{demand.utilization:.2f} of their memory free")
    hint = (f"lower replicas to {replica}, declare more GPUs of those types, or lower gpu_memory_utilization"
            if replica else "declare more GPUs of those types under `gpus:`, or move layers to a stage on another type")
    return Diagnostic(Severity.ERROR, "not-enough-gpus", paths.format_path(("servers", demand.server_index, "replicas")),
                      message, hint)
