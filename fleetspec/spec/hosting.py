"""Who hosts whom, indexed once per fleet: the lookups every stage makes per server or specialist.

Every stage asks the same questions ("which servers host this specialist?", "which specialists
does this server host?", "the server named X"). Answered by scanning the lists, each question costs
O(servers) or O(specialists), and asked once per server × specialist pair that made planning
10,000 specialists on 256 servers take most of a minute. The index answers each in time
proportional to the answer, and is built once per FleetSpec (the models are frozen, so it never
goes stale; a `model_copy` is a new object and gets its own index).
"""

from __future__ import annotations

import weakref
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from fleetspec.spec.models import FleetSpec, Server, Specialist


class FleetIndex:
    """Name lookups and the hosting relation of one FleetSpec, both directions, declaration order."""

    def __init__(self, spec: FleetSpec):
        self._servers = list(spec.servers)
        self.server_by_name: dict[str, Server] = {}
        self._positions: dict[str, list[int]] = {}  # a name can repeat; validation reports it
        for position, server in enumerate(self._servers):
            self.server_by_name.setdefault(server.name, server)
            self._positions.setdefault(server.name, []).append(position)
        self.specialist_by_name: dict[str, Specialist] = {}
        for specialist in spec.specialists:
            self.specialist_by_name.setdefault(specialist.name, specialist)
        self._lora_positions = tuple(i for i, s in enumerate(self._servers) if s.lora is not None)
        hosted: list[list[Specialist]] = [[] for _ in self._servers]
        for specialist in spec.specialists:
            for position in self.host_positions(specialist):
                hosted[position].append(specialist)
        self._hosted = hosted
        self._server_position = {id(server): i for i, server in enumerate(self._servers)}

    def host_positions(self, specialist: Specialist) -> tuple[int, ...]:
        """Indexes into spec.servers of the servers hosting `specialist`: the named ones, or every
        LoRA-enabled server when it names none. In spec.servers order."""
        if specialist.servers is None:
            return self._lora_positions
        found = {p for name in specialist.servers for p in self._positions.get(name, ())}
        return tuple(sorted(found))

    def hosts_of(self, specialist: Specialist) -> list[Server]:
        return [self._servers[p] for p in self.host_positions(specialist)]

    def position_of(self, server: Server) -> int | None:
        """`spec.servers.index(server)` without comparing models field by field (an equal server
        that is not one of this spec's own objects is still found, by value)."""
        position = self._server_position.get(id(server))
        if position is None:
            position = next((i for i, s in enumerate(self._servers) if s == server), None)
        return position

    def hosted_by(self, server: Server) -> list[Specialist]:
        """Specialists `server` hosts, in declaration order."""
        position = self.position_of(server)
        return list(self._hosted[position]) if position is not None else []


# id(spec) → (weak reference proving it is still that spec, its index). No lock: single dict
# operations are atomic, and two threads racing only build the same index twice.
_cache: dict[int, tuple[weakref.ref, FleetIndex]] = {}


def index(spec: FleetSpec) -> FleetIndex:
    """The index of `spec`, built on first use and kept as long as the spec lives."""
    key = id(spec)
    cached = _cache.get(key)
    if cached is not None and cached[0]() is spec:
        return cached[1]
    built = FleetIndex(spec)
    _cache[key] = (weakref.ref(spec, lambda ref, key=key: _forget(key, ref)), built)
    return built


def _forget(key: int, ref: weakref.ref) -> None:
    entry = _cache.get(key)
    if entry is not None and entry[0] is ref:
        _cache.pop(key, None)
