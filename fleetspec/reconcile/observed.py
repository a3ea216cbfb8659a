"""Observed state: what actually runs, re-read from the runtime and the engines on every call.

Nothing here trusts a record of what was applied: containers are found by label, adapters by
asking each engine's `/v1/models` (adapters are the cards with a `parent`).
"""

from __future__ import annotations

import dataclasses

from fleetspec.compile import desired
from fleetspec.drivers import base

Key = tuple[str, int]  # (server, replica)


@dataclasses.dataclass(frozen=True)
class ObservedReplica:
    container: base.ObservedContainer
    base_url: str | None
    healthy: bool
    adapters: dict[str, str] | None  # served name → path as loaded; None when the engine did not answer
    # Why a running engine is not healthy (what /health or /v1/models answered instead), for `status`.
    problem: str | None = None

    def to_json(self) -> dict:
        return {
            "container": self.container.to_json(),
            "base_url": self.base_url,
            "healthy": self.healthy,
            "adapters": self.adapters,
            "problem": self.problem,
        }


@dataclasses.dataclass(frozen=True)
class ObservedState:
    fleet: str
    replicas: dict[Key, ObservedReplica]
    strays: tuple[base.ObservedContainer, ...] = ()  # fleet containers no replica slot explains
    router: base.ObservedContainer | None = None
    router_config_hash: str | None = None  # what the running router says it serves

    def to_json(self) -> dict:
        return {
            "fleet": self.fleet,
            "replicas": [{"server": k[0], "replica": k[1], **r.to_json()} for k, r in sorted(self.replicas.items())],
            "strays": [c.to_json() for c in self.strays],
            "router": self.router.to_json() if self.router else None,
            "router_config_hash": self.router_config_hash,
        }


NOT_PROBED = (None, False, None, None)  # a container that does not run has no engine to ask


def assemble(fleet: str, containers: list[base.ObservedContainer], probe) -> ObservedState:
    """Group containers into replica slots; `probe(container) -> (base_url, healthy, adapters, problem)`.

    When two containers claim one slot (a crash mid-replace, one started by hand), the one with the
    slot's own name wins, then a running one, then the newest; the others become strays that the plan
    removes. Preferring the own name matters: a replace re-creates that name, so it must be the one
    the replace removes first.
    """
    slots: dict[Key, list[base.ObservedContainer]] = {}
    strays: list[base.ObservedContainer] = []
    router = None
    for container in containers:
        if container.role == "router":
            if router is None:
                router = container
            else:
                strays.append(container)
        elif container.server is None or container.replica is None:
            strays.append(container)
        else:
            slots.setdefault((container.server, container.replica), []).append(container)
    replicas: dict[Key, ObservedReplica] = {}
    for key, candidates in sorted(slots.items()):
        own_name = desired.container_name(fleet, *key)
        candidates.sort(key=lambda c: (c.name == own_name, c.running, c.started_at or ""), reverse=True)
        chosen, *rest = candidates
        strays.extend(rest)
        base_url, healthy, adapters, problem = probe(chosen) if chosen.running else NOT_PROBED
        replicas[key] = ObservedReplica(chosen, base_url, healthy, adapters, problem)
    return ObservedState(fleet, replicas, tuple(strays), router)


def from_desired(want) -> ObservedState:
    """The state a fleet would be in had `want` been applied exactly: for diffing two fleet files
    (`fleetspec plan NEW --against OLD`) without anything running."""
    replicas = {}
    for key, replica in want.replicas.items():
        container = base.ObservedContainer(
            id=f"planned:{replica.container.name}", name=replica.container.name, image=replica.container.image,
            status=base.RUNNING, health=None, fleet=want.fleet, server=key[0], replica=key[1],
            spec_hash=replica.container.spec_hash(), role="engine",
        )
        replicas[key] = ObservedReplica(container, None, True, dict(replica.adapters))
    router = None
    if want.router is not None:
        router = base.ObservedContainer(
            id=f"planned:{want.router.name}", name=want.router.name, image=want.router.image, status=base.RUNNING,
            health=None, fleet=want.fleet, server=None, replica=None, spec_hash=want.router.spec_hash(), role="router",
        )
    return ObservedState(want.fleet, replicas, router=router, router_config_hash=want.router_config_hash())
