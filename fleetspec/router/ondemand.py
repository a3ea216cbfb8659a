"""Loading adapters onto engines while a request waits: `preload: false` specialists, adapters a
replica lost, and spill-over onto another replica (`routing.affinity: spill`).

- One load per (engine, adapter) at a time: requests that need the same load wait on the first.
- A load that failed is not retried for `RETRY_AFTER_FAILURE_S` on that engine, so a broken adapter
  costs one engine call, not one per request (the fallback policy answers meanwhile).
- The router keeps its own loads within the server's adapter cache (`max_cpu_loras`, else
  `max_loras`): before loading past it, it unloads the adapter it loaded that was used least
  recently and has no request in flight. Adapters the reconciler loaded (`preload: true`) are
  never unloaded here: they are fleet.yaml's desired state.

vLLM's unload drops the name at once but frees the GPU slot only when its LRU evicts the adapter
(vllm-project/vllm#54839); what the router bounds is the set of names each engine serves.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Awaitable, Callable

from fleetspec import errors
from fleetspec.engine_api import contract
from fleetspec.router import httpio

log = logging.getLogger("fleetspec.router")

RETRY_AFTER_FAILURE_S = 30.0
LOAD_TIMEOUT_S = 600.0  # the engine call itself; a request waits only routing.on_demand_timeout_s
UNLOAD_TIMEOUT_S = 30.0


@dataclasses.dataclass(frozen=True)
class Loaded:
    """An adapter this router loaded onto one engine (seed 000's warm cache entry)."""

    url: str
    server: str
    replica: int
    served_name: str
    specialist: str
    version: str
    at: float


def join_flight(flights: dict, key, start: Callable[[], Awaitable]) -> asyncio.Task:
    """The load under way for `key`, or a new one from `start()`: one flight per engine and adapter,
    however many requests want it."""
    flight = flights.get(key)
    if flight is None:
        flight = flights[key] = asyncio.create_task(start())
        flight.add_done_callback(lambda _: flights.pop(key, None))
    return flight


class Loader:
    def __init__(self, pool: httpio.Pool, metrics, headers: Callable[[], list[tuple[str, str]]],
                 records: Callable[[], dict]):
        self.pool, self.metrics, self.headers = pool, metrics, headers
        # (url, served name) → Loaded, least recently used first (the router's runtime state owns it).
        self._records = records
        self._flights: dict[tuple[str, str], asyncio.Task] = {}
        self._failed: dict[tuple[str, str], tuple[float, str]] = {}
        # Called before choosing what to evict: a multi-process router's coordinator first learns what
        # its serving processes have in flight and used last (they hold the requests, it holds the loads).
        self.before_evict: Callable[[], Awaitable[None]] | None = None

    def may_load(self, replica, served_name: str) -> bool:
        failed = self._failed.get((replica.upstream.url, served_name))
        return failed is None or failed[0] <= time.monotonic()

    def failure(self, replica, served_name: str) -> str | None:
        failed = self._failed.get((replica.upstream.url, served_name))
        return failed[1] if failed is not None and failed[0] > time.monotonic() else None

    def used(self, replica, served_name: str) -> None:
        """A request went to this adapter on this engine: it is the most recently used now."""
        records, key = self._records(), (replica.upstream.url, served_name)
        if key in records:
            records[key] = records.pop(key)  # dicts keep insertion order: the end is the newest

    def forget_lost(self, replica) -> None:
        """Drop the record of loads the engine no longer serves (it restarted, or someone unloaded them)."""
        records, url = self._records(), replica.upstream.url
        for key in [k for k in records if k[0] == url and k[1] not in replica.adapters]:
            del records[key]

    async def ensure(self, replica, specialist: str, version: str, served_name: str, path: str,
                     capacity: int, timeout_s: float) -> str | None:
        """Load `served_name` onto `replica` (or wait for the load under way), for at most
        `timeout_s`. None once it serves the adapter; otherwise the reason, for the fallback."""
        flight = join_flight(self._flights, (replica.upstream.url, served_name),
                             lambda: self._load(replica, specialist, version, served_name, path, capacity))
        try:
            async with asyncio.timeout(timeout_s):
                return await asyncio.shield(flight)
        except TimeoutError:
            return (f"loading {served_name} onto {replica.upstream.url} took longer than {timeout_s:g} s "
                    "(routing.on_demand_timeout_s); it goes on in the background")

    async def _load(self, replica, specialist: str, version: str, served_name: str, path: str,
                    capacity: int) -> str | None:
        url, labels = replica.upstream.url, (replica.server, str(replica.upstream.replica))
        await self._make_room(replica, capacity)
        started = time.perf_counter()
        try:
            status, answer = await httpio.fetch(self.pool, url, "POST", contract.LOAD,
                                                contract.load_body(served_name, path), self.headers(),
                                                timeout=LOAD_TIMEOUT_S)
            text = answer.decode("utf-8", "replace")
            if status != 200 and not contract.already_loaded(status, text):
                raise contract.refusal(url, contract.LOAD, status, text, f"load adapter {served_name} from {path}")
        except (TimeoutError, OSError, httpio.ProtocolError, errors.FleetspecError) as exc:
            reason = str(exc) if isinstance(exc, errors.FleetspecError) else f"{exc.__class__.__name__}: {exc}"
            self._failed[(url, served_name)] = (time.monotonic() + RETRY_AFTER_FAILURE_S, reason)
            self.metrics.adapter_loads.inc(*labels, "failed")
            log.warning("could not load %s onto %s on demand: %s", served_name, url, reason)
            return reason
        self.metrics.adapter_loads.inc(*labels, "loaded")
        self.metrics.adapter_load_seconds.observe(time.perf_counter() - started, *labels)
        self._failed.pop((url, served_name), None)
        replica.holds(served_name)
        self._records()[(url, served_name)] = Loaded(url, replica.server, replica.upstream.replica, served_name,
                                                 specialist, version, time.time())
        log.info("loaded %s onto %s on demand in %.2f s", served_name, url, time.perf_counter() - started)
        return None

    async def _make_room(self, replica, capacity: int) -> None:
        """Unload this router's least recently used idle adapters until one more fits `capacity`."""
        url = replica.upstream.url
        if len(replica.adapters) >= capacity and self.before_evict is not None:
            await self.before_evict()
        while len(replica.adapters) >= capacity:
            idle = [key for key in self._records() if key[0] == url and not replica.busy.get(key[1])
                    and key[1] in replica.adapters]
            if not idle:
                return  # everything is preloaded or busy: vLLM's own LRU makes room in its cache
            served_name = idle[0][1]
            if await self.unload(replica, served_name) is not None:
                return
            self.metrics.adapter_evictions.inc(replica.server, str(replica.upstream.replica))

    async def unload(self, replica, served_name: str) -> str | None:
        """Unload one adapter this router loaded. None when done; else why not."""
        url = replica.upstream.url
        try:
            status, answer = await httpio.fetch(self.pool, url, "POST", contract.UNLOAD,
                                                contract.unload_body(served_name), self.headers(),
                                                timeout=UNLOAD_TIMEOUT_S)
            contract.unload_outcome(url, served_name, status, answer.decode("utf-8", "replace"))
        except (TimeoutError, OSError, httpio.ProtocolError, errors.FleetspecError) as exc:
            return str(exc) if isinstance(exc, errors.FleetspecError) else f"{exc.__class__.__name__}: {exc}"
        self._records().pop((url, served_name), None)
        replica.lost(served_name)
        return None
