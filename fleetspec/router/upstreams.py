"""The engine replicas behind the router: which are healthy, which adapters each one holds, and
which one a request goes to (the rules are `router.residency`'s).

Each replica's `/health` and `/v1/models` are read (vLLM lists loaded adapters there) every
`refresh_seconds`, and at once when a new config arrives (apply's changes). A replica that
refuses a connection is marked down at once, so the next request goes elsewhere without waiting
for the next check; an engine that answers 404 for an adapter loses it from its list at once.

Where the upstream names an `agent_port` (Kubernetes pods with the `fleetspec agent` sidecar), the
agent's `/status` is read at the same moment, at the pod's address: its ConfigMap revision, last good
set and problem are shown in /health. They never steer a request (residency comes from /v1/models
alone), and an agent that does not answer is reported as such, never as an engine failure.
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
from fleetspec.agent import view as agent_view
from fleetspec.engine_api import contract
from fleetspec.router import httpio, residency
from fleetspec.routing import config as config_mod

log = logging.getLogger("fleetspec.router")
# Health checks in a row with no answer in time before a serving replica is marked down (a refused
# connection or a bad answer marks it down at once); Kubernetes' readiness probes wait for 3 by default.
SLOW_CHECKS_DOWN = 2


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
    slow_checks: int = 0  # health checks in a row that timed out (a refusal marks it down at once)
    agent: agent_view.AgentView | None = None  # the pod's agent at its last answer
    agent_state: str | None = None  # agent_view's OK, PROBLEM, NOT_READY, UNREACHABLE, BAD_ANSWER; None: no agent
    agent_error: str | None = None  # why the agent could not be read
    agent_checked_at: float | None = None

    @property
    def agent_url(self) -> str | None:
        port = self.upstream.agent_port
        if port is None:
            return None
        host = self.address[0]
        return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"

    def agent_json(self) -> dict | None:
        """What /health shows of the pod's agent; None where the replica has none."""
        url = self.agent_url
        if url is None:
            return None
        seen = self.agent if self.agent_state in (agent_view.OK, agent_view.PROBLEM, agent_view.NOT_READY) else None
        if seen is not None:
            problem = seen.problem()
        elif self.agent_state is None:
            problem = None  # not read yet
        else:
            problem = agent_view.unanswered(url, self.agent_state, self.agent_error or "no answer")
        return {"url": url, "state": self.agent_state, "ready": seen.ready if seen else None,
                "revision": seen.revision if seen else None,
                "last_good": None if seen is None or seen.last_good is None else
                {"revision": seen.last_good_revision, "adapters": list(seen.last_good)},
                "problem": problem, "problem_kind": seen.problem_kind if seen else None,
                "problem_revision": seen.problem_revision if seen else None,
                "checked_at": self.agent_checked_at}

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
        if replica.upstream.agent_port is None:
            await self.check_engine(replica)
        else:
            await asyncio.gather(self.check_engine(replica), self.check_agent(replica))

    async def check_agent(self, replica: Replica) -> None:
        """Read the pod's agent /status (bounded in time and size). Never touches the replica's health."""
        url = replica.agent_url
        state, error, seen = agent_view.OK, None, None
        try:
            status, body = await httpio.fetch(self.pool, url, "GET", agent_view.STATUS_PATH, timeout=self.timeout,
                                              max_bytes=agent_view.MAX_STATUS_BYTES)
            if status != 200:
                raise agent_view.BadStatus(f"{agent_view.STATUS_PATH} answered {status}")
            seen = agent_view.parse(body)
            state = seen.state
        except (TimeoutError, OSError) as exc:
            state, error = agent_view.UNREACHABLE, f"{exc.__class__.__name__}: {exc}" if str(exc) else exc.__class__.__name__
        except (httpio.ProtocolError, agent_view.BadStatus) as exc:
            state, error = agent_view.BAD_ANSWER, str(exc)
        before = replica.agent.problem() if replica.agent is not None else replica.agent_error
        replica.agent, replica.agent_state, replica.agent_error = seen, state, error
        replica.agent_checked_at = time.time()
        after = seen.problem() if seen is not None else error
        if after != before:
            where = f"{replica.server} replica {replica.upstream.replica} ({url})"
            if state in (agent_view.UNREACHABLE, agent_view.BAD_ANSWER):
                log.warning("the agent of %s: %s", where, agent_view.unanswered(url, state, error))
            elif after is not None:
                log.warning("the agent of %s reports: %s", where, after)
            elif before is not None:
                log.info("the agent of %s serves its ConfigMap's adapter set again", where)

    async def check_engine(self, replica: Replica) -> None:
        url = replica.upstream.url
        try:
            status, _ = await httpio.fetch(self.pool, url, "GET", contract.HEALTH, timeout=self.timeout)
            if status != 200:
                raise ConnectionError(f"{contract.HEALTH} answered {status}")
            status, body = await httpio.fetch(self.pool, url, "GET", contract.MODELS,
                                              headers=contract.auth_headers(self.api_key), timeout=self.timeout)
            view = contract.models_view(url, status, body.decode("utf-8", "replace"))
            replica.models, replica.adapters = view.names, frozenset(view.adapters)
        except TimeoutError as exc:
            # A busy engine answers /health late (its API server's loop is tokenizing and streaming);
            # one late answer from a replica that serves is not an outage, and taking the last such
            # replica out would refuse every request until the next check. Refusals count at once.
            replica.slow_checks += 1
            if replica.healthy and replica.slow_checks < SLOW_CHECKS_DOWN:
                log.info("engine %s (%s replica %d) answered no health check within %g s; it stays in "
                         "service unless the next check is late too", url, replica.server,
                         replica.upstream.replica, self.timeout)
            else:
                self.mark_down(replica, f"{exc.__class__.__name__}: {exc}" if str(exc) else
                               f"no answer within {self.timeout:g} s")
        except (OSError, httpio.ProtocolError, errors.FleetspecError) as exc:
            self.mark_down(replica, f"{exc.__class__.__name__}: {exc}" if str(exc) else exc.__class__.__name__)
        else:
            replica.slow_checks = 0
            if replica.healthy is not True:
                log.info("engine %s (%s replica %d) is healthy", url, replica.server, replica.upstream.replica)
            replica.healthy, replica.last_error = True, None
            self._on_health(replica)
        replica.checked_at = time.time()

    async def run(self, interval: float) -> None:
        while True:
            await self.refresh()
            await asyncio.sleep(interval)
