"""Where each server replica runs, as the compilers need it: a small view of the planner's result.

Compilers take `Slot`s instead of the whole FleetPlan so they stay testable with plain values and
do not change when the plan report grows.
"""

from __future__ import annotations

import dataclasses

from fleetspec.spec import models


@dataclasses.dataclass(frozen=True)
class Slot:
    server: str
    replica: int
    gpus: tuple[int, ...]  # device ids on the host, from placement
    weights_gib: float | None = None  # weights of the whole replica, for startup budgets


def from_plan(plan) -> list[Slot]:
    """Slots of a `planner.report.FleetPlan`, in server then replica order."""
    slots = []
    for server in plan.servers:
        for replica in server.replicas:
            slots.append(Slot(server.name, replica.index, tuple(replica.gpus), _weights_gib(replica)))
    return slots


def _weights_gib(replica) -> float | None:
    budget = getattr(replica, "budget", None)
    if budget is None or not replica.gpus:
        return None
    if budget.stages:  # pipeline stages hold different shares; each has len(gpus) / stages GPUs
        per_stage_gpus = len(replica.gpus) / len(budget.stages)
        return round(sum(st.weights for st in budget.stages) * per_stage_gpus / (1 << 30), 2)
    return round(budget.weights * len(replica.gpus) / (1 << 30), 2)


def sequential(spec: models.FleetSpec) -> list[Slot]:
    """Placement-free slots (GPUs numbered in order), for tests and targets that ignore GPU ids."""
    slots, next_gpu = [], 0
    for server in spec.servers:
        for replica in range(server.replicas):
            gpus = tuple(range(next_gpu, next_gpu + server.gpus_per_replica))
            next_gpu += server.gpus_per_replica
            slots.append(Slot(server.name, replica, gpus))
    return slots


def by_key(slots: list[Slot]) -> dict[tuple[str, int], Slot]:
    return {(s.server, s.replica): s for s in slots}
