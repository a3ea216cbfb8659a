"""What "the fleet is converged" means, in one place, for the full path and the fast path alike.

A fleet is converged when applying its file would do nothing:
- every desired replica slot is held by exactly one container, running, whose spec-hash label is
  the desired hash, and whose engine answers `/v1/models` with exactly the desired adapters
  (same served names, same paths);
- no other container of the fleet runs or lingers (a removed server, a scaled-down replica, a
  duplicate, a second router);
- the router, when the fleet has one, runs the desired container and serves the desired config;
  when it has none, none runs.

`differences` says every way a live fleet falls short, as sentences; none means converged. The
full path (`session.converged`) feeds it the observed state and the desired state; the fast path
(`fastpath.is_noop`) feeds it the desired facts it recorded at the last converged apply and what
it reads itself from the runtime. Standard library only, because the fast path imports it.
`tests/unit/test_reconcile_convergence.py` checks that it agrees with `diff.diff` having nothing
to do.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping


@dataclasses.dataclass(frozen=True)
class WantedReplica:
    slot: str  # "server/replica"
    spec_hash: str
    adapters: Mapping[str, str]  # served name → path


@dataclasses.dataclass(frozen=True)
class Wanted:
    replicas: tuple[WantedReplica, ...]
    router_spec_hash: str | None = None  # None: the fleet has no router
    router_config_hash: str | None = None

    def to_json(self) -> dict:
        return {"replicas": [{"slot": r.slot, "spec_hash": r.spec_hash, "adapters": dict(sorted(r.adapters.items()))}
                             for r in self.replicas],
                "router_spec_hash": self.router_spec_hash, "router_config_hash": self.router_config_hash}

    @classmethod
    def from_json(cls, data: Mapping) -> Wanted:
        return cls(tuple(WantedReplica(r["slot"], r["spec_hash"], dict(r["adapters"])) for r in data["replicas"]),
                   data.get("router_spec_hash"), data.get("router_config_hash"))


@dataclasses.dataclass(frozen=True)
class SeenContainer:
    id: str
    slot: str | None  # "server/replica" from its labels; None for the router or an unlabelled one
    role: str | None
    running: bool
    spec_hash: str | None
    adapters: Mapping[str, str] | None = None  # its engine's answer; None when it did not answer


@dataclasses.dataclass(frozen=True)
class Seen:
    containers: tuple[SeenContainer, ...]
    router_config_hash: str | None = None  # what the running router says it serves


def differences(want: Wanted, seen: Seen) -> list[str]:
    """Every way `seen` differs from a converged fleet for `want`; [] when it is converged."""
    found: list[str] = []
    routers = [c for c in seen.containers if c.role == "router"]
    by_slot: dict[str, list[SeenContainer]] = {}
    for container in seen.containers:
        if container.role != "router":
            by_slot.setdefault(container.slot or "", []).append(container)
    for replica in want.replicas:
        found += _replica_differences(replica, by_slot.pop(replica.slot, []))
    for slot, containers in sorted(by_slot.items()):
        found += [f"{c.id[:12]} is a container of the fleet that no replica slot{f' ({slot})' if slot else ''} "
                  "explains" for c in containers]
    found += _router_differences(want, routers, seen.router_config_hash)
    return found


def _replica_differences(want: WantedReplica, containers: list[SeenContainer]) -> list[str]:
    if not containers:
        return [f"{want.slot} has no container"]
    if len(containers) > 1:
        return [f"{want.slot} is claimed by {len(containers)} containers"]
    container = containers[0]
    if container.spec_hash != want.spec_hash:
        return [f"{want.slot} runs another configuration"]
    if not container.running:
        return [f"{want.slot} is not running"]
    if container.adapters is None:
        return [f"{want.slot}'s engine does not answer /v1/models"]
    if dict(container.adapters) != dict(want.adapters):
        return [f"{want.slot} serves other adapters than the file declares"]
    return []


def _router_differences(want: Wanted, routers: list[SeenContainer], config_hash: str | None) -> list[str]:
    if want.router_spec_hash is None:
        return ["a router runs although the fleet has none"] if routers else []
    if len(routers) != 1:
        return ["no router runs" if not routers else f"{len(routers)} routers run"]
    router = routers[0]
    if not router.running:
        return ["the router is not running"]
    if router.spec_hash != want.router_spec_hash:
        return ["the router runs another configuration"]
    if config_hash != want.router_config_hash:
        return ["the router serves other routes than the file declares"]
    return []


# -- from the full path's own types (duck-typed: importing them would leave the standard library)


def wanted_of(desired) -> Wanted:
    """A compile.desired.DesiredState as the facts convergence compares."""
    replicas = tuple(WantedReplica(f"{key[0]}/{key[1]}", r.container.spec_hash(), dict(r.adapters))
                     for key, r in sorted(desired.replicas.items()))
    if desired.router is None:
        return Wanted(replicas)
    return Wanted(replicas, desired.router.spec_hash(), desired.router_config_hash())


def seen_of(have) -> Seen:
    """A reconcile.observed.ObservedState as the facts convergence compares."""
    containers = [SeenContainer(r.container.id, f"{key[0]}/{key[1]}", r.container.role, r.container.running,
                                r.container.spec_hash, r.adapters) for key, r in sorted(have.replicas.items())]
    containers += [SeenContainer(c.id, None, None, c.running, c.spec_hash) for c in have.strays]
    if have.router is not None:
        containers.append(SeenContainer(have.router.id, None, "router", have.router.running, have.router.spec_hash))
    return Seen(tuple(containers), have.router_config_hash)
