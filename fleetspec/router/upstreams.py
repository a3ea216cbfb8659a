"""The engine replicas behind the router: which are healthy, which adapters each one holds, and
which one a request goes to (the rules are `router.residency`'s).

Each replica's `/health` and `/v1/models` are read (vLLM lists loaded adapters there) every
`refresh_seconds`, and at once when a new config arrives (apply's changes). A replica that
refuses a connection is marked down at once, so the next request goes elsewhere without waiting
for the next check; an engine that answers 404 for an adapter loses it from its list at once.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import itertools
import logging
import time
from collections.abc import Iterable

from fleetspec import errors
from fleetspec.engine_api import contract
from fleetspec.router import httpio, residency
from fleetspec.routing import config as config_mod

log = logging.getLogger("fleetspec.router")


@dataclasses.dataclass(eq=False)
class Replica:
    upstream: config_mod.Upstream
    address: tuple[str, int]
    healthy: bool | None = None  # None: not checked yet
    models: frozenset[str] = frozenset()  # served names from its last /v1/models
    adapters: frozenset[str] = frozenset()  # the adapters among them
    inflight: int = 0
    busy: collections.Counter = dataclasses.field(default_factory=collections.Counter)  # in flight by served name
    checked_at: float | None = None
    last_error: str | None = None

    @property
    def server(self) -> str:
        return self.upstream.server

    @property
    def draining(self) -> bool:
        return self.upstream.draining

    def holds(self, served_name: str) -> None:
        self.models, self.adapters = self.models | {served_name}, self.adapters | {served_name}

    def lost(self, served_name: str) -> None:
        self.models, self.adapters = self.models - {served_name}, self.adapters - {served_name}

    def to_json(self) -> dict:
        return {**self.upstream.to_json(), "draining": self.draining, "healthy": self.healthy,
                "models": sorted(self.models), "inflight": self.inflight, "checked_at": self.checked_at,
                "last_error": self.last_error}


class Upstreams:
    def __init__(self, pool: httpio.Pool, on_health=None, timeout: float = 2.0):
        self.pool = pool
        self.api_key: str | None = None  # the engines' key, from the router config
        self.timeout = timeout
        self.replicas: dict[str, Replica] = {}  # by URL
        self._turn = itertools.count()
        self._on_health = on_health or (lambda replica: None)

    def configure(self, upstreams: Iterable[config_mod.Upstream]) -> None:
        """Adopt a new upstream list; replicas that stay keep their health and model knowledge."""
        fresh: dict[str, Replica] = {}
        for upstream in upstreams:
            known = self.replicas.get(upstream.url)
            if known is not None:
                known.upstream = upstream
                fresh[upstream.url] = known
            else:
                fresh[upstream.url] = Replica(upstream, httpio.address_of(upstream.url))
        self.replicas = fresh

    def choose(self, served_name: str, servers: frozenset[str], *, adapter: bool = True,
               may_load=lambda replica: False, policy: residency.Policy = residency.STRICT,
               exclude: Iterable[Replica] = ()) -> residency.Choice:
        """Where a request for `served_name` goes now (`residency.choose`), round-robin among equals."""
        return residency.choose(self.replicas.values(), served_name, servers, adapter=adapter, may_load=may_load,
                                policy=policy, exclude=exclude, tiebreak=next(self._turn))

    def mark_down(self, replica: Replica, reason: str) -> None:
        if replica.healthy is not False:
            log.warning("engine %s (%s replica %d) is down: %s", replica.upstream.url, replica.server,
                        replica.upstream.replica, reason)
        replica.healthy, replica.last_error = False, reason
        self._on_health(replica)

    async def refresh(self) -> None:
        await asyncio.gather(*(self.check(r) for r in list(self.replicas.values())))

    async def check(self, replica: Replica) -> None:
        url = replica.upstream.url
        try:
            status, _ = await httpio.fetch(self.pool, url, "GET", contract.HEALTH, timeout=self.timeout)
            if status != 200:
                raise ConnectionError(f"{contract.HEALTH} answered {status}")
            status, body = await httpio.fetch(self.pool, url, "GET", contract.MODELS,
                                              headers=contract.auth_headers(self.api_key), timeout=self.timeout)
            view = contract.models_view(url, status, body.decode("utf-8", "replace"))
            replica.models, replica.adapters = view.names, frozenset(view.adapters)
        except (TimeoutError, OSError, httpio.ProtocolError, errors.FleetspecError) as exc:
            self.mark_down(replica, f"{exc.__class__.__name__}: {exc}" if str(exc) else exc.__class__.__name__)
        else:
            if replica.healthy is not True:
                log.info("engine %s (%s replica %d) is healthy", url, replica.server, replica.upstream.replica)
            replica.healthy, replica.last_error = True, None
            self._on_health(replica)
        replica.checked_at = time.time()

    async def run(self, interval: float) -> None:
        while True:
            await self.refresh()
            await asyncio.sleep(interval)
