"""The engine replicas behind the router: which are healthy, which adapters each one holds, and
which one a request goes to.

Every `refresh_seconds` each replica's `/health` and `/v1/models` are read (vLLM lists loaded
adapters there). A replica that refuses a connection is marked down at once, so the next request
goes elsewhere without waiting for the next check; the next successful check brings it back.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import logging
import time
from collections.abc import Iterable

from fleetspec import errors
from fleetspec.engine_api import contract
from fleetspec.router import httpio
from fleetspec.routing import config as config_mod

log = logging.getLogger("fleetspec.router")


@dataclasses.dataclass(eq=False)
class Replica:
    upstream: config_mod.Upstream
    address: tuple[str, int]
    healthy: bool | None = None  # None: not checked yet
    models: frozenset[str] = frozenset()  # served names from its last /v1/models
    inflight: int = 0
    checked_at: float | None = None
    last_error: str | None = None

    @property
    def server(self) -> str:
        return self.upstream.server

    def to_json(self) -> dict:
        return {**self.upstream.to_json(), "healthy": self.healthy, "models": sorted(self.models),
                "inflight": self.inflight, "checked_at": self.checked_at, "last_error": self.last_error}


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

    def choose(self, served_name: str, servers: frozenset[str], exclude: Iterable[Replica] = ()) -> Replica | None:
        """A replica of one of `servers` for `served_name`: healthy ones first, those that already
        hold the adapter first among them, then the least busy; round-robin among equals."""
        skip = set(map(id, exclude))
        pool = [r for r in self.replicas.values() if r.server in servers and id(r) not in skip]
        healthy = [r for r in pool if r.healthy] or [r for r in pool if r.healthy is None]
        if not healthy:
            return None
        holding = [r for r in healthy if served_name in r.models] or healthy
        least = min(r.inflight for r in holding)
        ties = [r for r in holding if r.inflight == least]
        return ties[next(self._turn) % len(ties)]

    def mark_down(self, replica: Replica, reason: str) -> None:
        if replica.healthy is not False:
            log.warning("engine %s (%s replica %d) is down: %s", replica.upstream.url, replica.server,
                        replica.upstream.replica, reason)
        replica.healthy, replica.last_error = False, reason
        self._on_health(replica)

    async def refresh(self) -> None:
        await asyncio.gather(*(self._check(r) for r in list(self.replicas.values())))

    async def _check(self, replica: Replica) -> None:
        url = replica.upstream.url
        try:
            status, _ = await httpio.fetch(self.pool, url, "GET", contract.HEALTH, timeout=self.timeout)
            if status != 200:
                raise ConnectionError(f"{contract.HEALTH} answered {status}")
            status, body = await httpio.fetch(self.pool, url, "GET", contract.MODELS,
                                              headers=contract.auth_headers(self.api_key), timeout=self.timeout)
            replica.models = contract.models_view(url, status, body.decode("utf-8", "replace")).names
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
