"""Which replica takes a request, from what each engine really holds (LoRA affinity).

Pure: it reads the replicas' last known state (health, draining, requests in flight, the served
names from their `/v1/models`) and returns a choice; loading an adapter is the caller's job
(`router.ondemand`). The rules, in order:

- An adapter goes only to a replica that lists it (a replica that does not would answer 404), the
  least busy such replica first. Replicas being drained for a replacement are chosen only when no
  other replica can take the request.
- When no replica holds it, one with the adapter's servers that may load it is asked to (the least
  busy), and the request waits for that load.
- `affinity: spill` also loads it onto another replica once every holder has `spill_inflight`
  requests in flight; `strict` keeps a specialist on the replicas that hold it.
- The base model is served by every healthy replica.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Sequence
from typing import Protocol


class ReplicaView(Protocol):
    server: str
    healthy: bool | None
    models: frozenset[str]
    inflight: int

    @property
    def draining(self) -> bool: ...


@dataclasses.dataclass(frozen=True)
class Choice:
    replica: ReplicaView | None  # None: nothing can serve it now (the fallback policy decides)
    load: bool = False  # the adapter must be loaded onto `replica` before the request goes there


NOTHING = Choice(None)


@dataclasses.dataclass(frozen=True)
class Policy:
    affinity: str = "strict"  # "strict" or "spill"
    spill_inflight: int = 8


STRICT = Policy()


def candidates(replicas: Iterable[ReplicaView], servers: frozenset[str], exclude: set[int]) -> list[ReplicaView]:
    """The replicas of `servers` that may take requests: healthy ones; before the first health check
    has answered for any of them, the unchecked ones (a fresh router must not refuse everything)."""
    pool = [r for r in replicas if r.server in servers and id(r) not in exclude]
    return [r for r in pool if r.healthy] or [r for r in pool if r.healthy is None]


def choose(replicas: Iterable[ReplicaView], served_name: str, servers: frozenset[str], *, adapter: bool,
           may_load: Callable[[ReplicaView], bool], policy: Policy = STRICT,
           exclude: Iterable[object] = (), tiebreak: int = 0) -> Choice:
    """Where a request for `served_name` goes (see the module docstring). `may_load(replica)` says
    whether the adapter may be loaded onto that replica now (it has room, and its last load of this
    adapter did not just fail)."""
    pool = candidates(replicas, servers, set(map(id, exclude)))
    if not pool:
        return NOTHING
    if not adapter:
        return Choice(_least_busy(_ready_first(pool), tiebreak))
    holders = [r for r in pool if served_name in r.models]
    ready_holders = [r for r in holders if not r.draining]
    loadable = [r for r in pool if served_name not in r.models and not r.draining and may_load(r)]
    if ready_holders:
        if (policy.affinity == "spill" and loadable
                and min(r.inflight for r in ready_holders) >= policy.spill_inflight):
            return Choice(_least_busy(loadable, tiebreak), load=True)
        return Choice(_least_busy(ready_holders, tiebreak))
    if loadable:
        return Choice(_least_busy(loadable, tiebreak), load=True)
    if holders:
        return Choice(_least_busy(holders, tiebreak))  # only draining replicas hold it: better late than never
    return NOTHING


def unserved(replicas: Iterable[ReplicaView], wanted: Iterable[tuple[str, str, frozenset[str]]]) -> list[str]:
    """Of (specialist, served name, servers) that must be served at all times, the specialists that
    no healthy replica of their servers lists."""
    healthy = [r for r in replicas if r.healthy]
    return sorted({specialist for specialist, served, servers in wanted
                   if not any(r.server in servers and served in r.models for r in healthy)})


def _ready_first(pool: Sequence[ReplicaView]) -> list[ReplicaView]:
    return [r for r in pool if not r.draining] or list(pool)


def _least_busy(pool: Sequence[ReplicaView], tiebreak: int) -> ReplicaView:
    least = min(r.inflight for r in pool)
    ties = [r for r in pool if r.inflight == least]
    return ties[tiebreak % len(ties)]
