"""A reconcile plan: ordered actions, each with a reason and how disruptive it is. Pure data.

The plan is what `fleetspec plan` prints and what `fleetspec apply` executes, so reviewers read
exactly what will run. Order is part of the contract (DESIGN §6): new servers first, then adapters,
then the router switch, then unloads of old versions, then removals.
"""

from __future__ import annotations

import dataclasses
import enum


class Kind(enum.StrEnum):
    CREATE = "create"
    REPLACE = "replace"
    LOAD_ADAPTER = "load-adapter"
    UPDATE_ROUTER = "update-router"
    UNLOAD_ADAPTER = "unload-adapter"
    REMOVE = "remove"


class Disruption(enum.StrEnum):
    NONE = "none"  # something new appears; nothing running is touched
    HOT = "hot"  # changes a live server without restarting it
    RESTART = "restart"  # a running server stops (replaced or removed)


ORDER = (Kind.CREATE, Kind.REPLACE, Kind.LOAD_ADAPTER, Kind.UPDATE_ROUTER, Kind.UNLOAD_ADAPTER, Kind.REMOVE)
SYMBOLS = {Kind.CREATE: "+", Kind.REPLACE: "~", Kind.LOAD_ADAPTER: "+", Kind.UPDATE_ROUTER: "~",
           Kind.UNLOAD_ADAPTER: "-", Kind.REMOVE: "-"}
DISRUPTION = {Kind.CREATE: Disruption.NONE, Kind.REPLACE: Disruption.RESTART, Kind.LOAD_ADAPTER: Disruption.HOT,
              Kind.UPDATE_ROUTER: Disruption.HOT, Kind.UNLOAD_ADAPTER: Disruption.HOT,
              Kind.REMOVE: Disruption.RESTART}


@dataclasses.dataclass(frozen=True)
class Action:
    kind: Kind
    target: str  # "main/0" for a replica, "router" for the router, a container name for orphans
    reason: str
    server: str | None = None
    replica: int | None = None
    adapter: str | None = None  # served adapter name for load/unload
    path: str | None = None  # adapter path for loads; for unloads, the path it was loaded from
    container_id: str | None = None  # for replace/remove of an observed container
    changes: tuple[str, ...] = ()  # human lines: "--max-model-len 4096 → 8192"

    @property
    def disruption(self) -> Disruption:
        return DISRUPTION[self.kind]

    @property
    def symbol(self) -> str:
        return SYMBOLS[self.kind]

    def describe(self) -> str:
        subject = f"{self.adapter} on {self.target}" if self.adapter else self.target
        return f"{self.symbol} {self.kind.value} {subject}: {self.reason}"

    def to_json(self) -> dict:
        data = {k: v for k, v in dataclasses.asdict(self).items() if v not in (None, ())}
        data["kind"] = self.kind.value
        data["disruption"] = self.disruption.value
        return data


@dataclasses.dataclass(frozen=True)
class Interruption:
    """A server whose every running replica restarts in this plan (one replica): while it starts,
    nothing serves it. `up_to_s` is its startup budget, the longest apply waits for it."""

    server: str
    up_to_s: int

    def describe(self) -> str:
        return (f"{self.server} has one replica, so its requests fail while it restarts: up to {self.up_to_s} s "
                "(its startup budget). Give it a second replica to restart without interrupting serving.")

    def to_json(self) -> dict:
        return {"server": self.server, "up_to_s": self.up_to_s, "message": self.describe()}


@dataclasses.dataclass(frozen=True)
class ReconcilePlan:
    fleet: str
    actions: tuple[Action, ...]
    notes: tuple[str, ...] = ()  # things the plan noticed but does not act on (drift it cannot fix)
    interruptions: tuple[Interruption, ...] = ()

    @property
    def has_changes(self) -> bool:
        return bool(self.actions)

    def of_kind(self, kind: Kind) -> list[Action]:
        return [a for a in self.actions if a.kind is kind]

    @property
    def restarts(self) -> int:
        return sum(a.disruption is Disruption.RESTART for a in self.actions)

    def summary(self) -> str:
        counts = {kind: len(self.of_kind(kind)) for kind in Kind}
        return (
            f"Plan: {counts[Kind.CREATE]} to create, {counts[Kind.REPLACE]} to replace, "
            f"{counts[Kind.REMOVE]} to remove, {counts[Kind.LOAD_ADAPTER]} adapter"
            f"{'s' * (counts[Kind.LOAD_ADAPTER] != 1)} to load, {counts[Kind.UNLOAD_ADAPTER]} to unload"
            + (", router to update" if counts[Kind.UPDATE_ROUTER] else "")
            + "."
        )

    def to_json(self) -> dict:
        return {
            "fleet": self.fleet,
            "changes": self.has_changes,
            "summary": self.summary(),
            "restarts": self.restarts,
            "actions": [a.to_json() for a in self.actions],
            "notes": list(self.notes),
            "interruptions": [i.to_json() for i in self.interruptions],
        }


def ordered(actions: list[Action]) -> tuple[Action, ...]:
    """Actions in execution order; stable within a kind (servers and replicas in spec order).

    A created or replaced replica's adapter loads follow it at once, before the next replica is
    touched: a rolling replace then never has two replicas of a server without their adapters."""
    rank = {kind: i for i, kind in enumerate(ORDER)}
    by_kind = sorted(actions, key=lambda a: rank[a.kind])
    restarted = {a.target for a in by_kind if a.kind in (Kind.CREATE, Kind.REPLACE)}
    follow: dict[str, list[Action]] = {}
    for action in by_kind:
        if action.kind is Kind.LOAD_ADAPTER and action.target in restarted:
            follow.setdefault(action.target, []).append(action)
    out: list[Action] = []
    for action in by_kind:
        if action.kind is Kind.LOAD_ADAPTER and action.target in restarted:
            continue
        out.append(action)
        if action.kind in (Kind.CREATE, Kind.REPLACE):
            out.extend(follow.pop(action.target, ()))
    return tuple(out)


def replica_steps(actions: tuple[Action, ...]) -> list[tuple[Action, ...]]:
    """The plan cut into steps: a created or replaced replica with the loads that follow it, or a
    run of other actions. Apply drains, replaces and reloads one step at a time."""
    steps: list[list[Action]] = []
    for action in actions:
        starts = action.kind in (Kind.CREATE, Kind.REPLACE)
        joins_replica = (action.kind is Kind.LOAD_ADAPTER and steps and steps[-1][0].kind in (Kind.CREATE, Kind.REPLACE)
                         and steps[-1][0].target == action.target)
        if joins_replica or (steps and not starts and steps[-1][0].kind not in (Kind.CREATE, Kind.REPLACE)):
            steps[-1].append(action)
        else:
            steps.append([action])
    return [tuple(step) for step in steps]
