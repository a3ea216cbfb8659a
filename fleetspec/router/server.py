"""The router: an OpenAI-compatible proxy in front of the fleet's engines.

`model: "auto"` (or the fleet's name) is routed by the table; a specialist name goes to its active
version (or its split); the request's `model` is rewritten to the served adapter name and sent to a
healthy replica of a server hosting it, preferring replicas that already hold the adapter.
Responses stream back as they arrive (SSE passes through chunk by chunk) with headers naming the
specialist, version and rule.

The config file is re-read when it changes (or on `POST /admin/reload`). Each request keeps the
config and table it started with, so a reload never disturbs requests in flight.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import os
import pathlib
import resource
import time
from collections.abc import Awaitable, Callable, Mapping

from fleetspec import errors
from fleetspec.engine_api import contract
from fleetspec.router import (
    admin,
    answer,
    discovery,
    fastpath,
    gaplog,
    httpio,
    httpjson,
    httplimits,
    metrics,
    ondemand,
    openai,
    residency,
    runtime_state,
    streams,
    upstreams,
)
from fleetspec.router import redis_compat as redis_layout
from fleetspec.routing import config as config_mod
from fleetspec.routing import table

log = logging.getLogger("fleetspec.router")

NO_HEALTHY_REPLICA = "no-healthy-replica"  # the chosen specialist's servers are all down
ADAPTER_UNAVAILABLE = "adapter-unavailable"  # replicas are up, but none serves it or could load it in time
PREVIOUS_VERSION = "previous-version"  # routing.fallback: previous sent it to the specialist's previous_version
OUTSIDE_SCOPE = "not-on-this-server"  # an Ingress server path (/tasks/...) and a specialist that server lacks
# How often one request is decided again with a config that replaced the one it started with, when an
# engine said it no longer serves the adapter (apply unloaded the old version just after the switch).
REDECIDE_LIMIT = 2
WATCH_SECONDS = 0.1  # one stat() of the config file; apply waits for it, so it bounds a route change
LINGER_S = 1.0  # after an error answer, how long unread request bytes are drained so the client sees it
LINGER_BYTES = 1024 * 1024
SMALL_BODY = 256 * 1024  # engine answers up to this size (with a length) reach the client in one write
EXTENSIONS_HEADER = "x-fleetspec-extensions"
_CREDENTIALS = frozenset({"authorization", "proxy-authorization"})


class _NotSent(Exception):
    """The engine never answered: nothing reached the client, so another replica may take it."""


class _BrokenBody(Exception):
    """The engine failed in the middle of an answer the client already started receiving."""

    def __init__(self, message: str, kind: str = "broken-body"):
        super().__init__(message)
        self.kind = kind  # the upstream_errors label: broken-body, stalled


class _Missing(Exception):
    """The engine answered 404 for the adapter: it does not serve it (any more). Nothing reached the
    client and the engine queued nothing, so another replica (or a load) may take the request."""


class _Stale(Exception):
    """An engine no longer serves the adapter this request was decided for, and a newer config has
    replaced the one the request started with: decide it again with the config the router serves now."""


class _NoAnswer(Exception):
    """The engine had the request but gave no usable answer (closed, silent, garbled). The request
    is not sent again: the engine may have acted on it. `status` goes to the client."""

    def __init__(self, status: int, message: str, kind: str):
        super().__init__(message)
        self.status, self.kind = status, kind


class _Client:
    """The writing side of one client connection, and what the request being answered needs of it:
    HEAD answers carry no body, HTTP/1.0 keep-alive answers say so, and a client that stops reading
    is dropped after the write timeout instead of holding an engine stream forever."""

    __slots__ = ("stream", "write_timeout", "request", "must_close", "sent")

    def __init__(self, stream: streams.Stream, write_timeout: float):
        self.stream, self.write_timeout = stream, write_timeout
        self.request: httpio.Request | None = None
        self.must_close = False  # set when an answer could only be framed by closing the connection
        self.sent = False  # bytes of an answer to the current request went out

    def write(self, data: bytes) -> None:
        self.sent = True
        self.stream.write(data)

    async def drain(self) -> None:
        try:
            await self.stream.drain(self.write_timeout)
        except TimeoutError:
            raise ConnectionResetError(f"the client read nothing for {self.write_timeout:g} s") from None

    def is_closing(self) -> bool:
        return self.stream.is_closing()

    def persistence(self, keep_alive: bool) -> list[tuple[str, str]]:
        """The Connection header an answer needs: close, or keep-alive for an HTTP/1.0 client."""
        if not keep_alive or self.must_close:
            return [("Connection", "close")]
        if self.request is not None and self.request.version < (1, 1):
            return [("Connection", "keep-alive")]
        return []

    @property
    def head_only(self) -> bool:
        return self.request is not None and self.request.method == "HEAD"


# A request the fast path began, and the coroutine that answers it (Router.dispatch, or Router.resume).
_First = tuple[httpio.Request, Callable[[httpio.Request, _Client], Awaitable[bool]]]


class Router:
    def __init__(self, config_path: str | pathlib.Path, env: Mapping[str, str] | None = None,
                 limits: httplimits.Limits | None = None, resolver: discovery.Resolver | None = None):
        self.config_path = pathlib.Path(config_path)
        self.resolver = resolver  # DNS server for `discover` upstreams; None: the system's (cluster DNS in a pod)
        self._discoveries: dict[tuple[str, int], discovery.Discovery] = {}
        self.env = os.environ if env is None else env
        self.limits = limits or httplimits.Limits()
        # FLEETSPEC_ROUTER_FAST_PATH=off answers every request on the coroutine path (to compare, or to rule
        # the fast path out); the answers are the same either way (fastpath.py).
        self.fast_path = self.env.get("FLEETSPEC_ROUTER_FAST_PATH", "on") != "off"
        self.budget = httplimits.BodyBudget(self.limits.max_inflight_body_bytes)
        self.connections = 0  # client connections open now (bounded by limits.max_connections)
        self.metrics = metrics.RouterMetrics()
        # One idle engine connection per client connection at most: each holds one engine connection at a time.
        self.pool = httpio.Pool(connect_timeout=self.limits.upstream_connect_s, max_idle=self.limits.max_connections)
        self.upstreams = upstreams.Upstreams(self.pool, on_health=self._health_changed)
        self.runtime: runtime_state.MemoryState = runtime_state.MemoryState()  # replaced by load()
        self.loader = ondemand.Loader(self.pool, self.metrics, self._engine_headers, lambda: self.runtime.warmed)
        self.ignored: list[tuple[runtime_state.ClusterOverride, str]] = []  # mappings the config does not allow
        self.stats = admin.Stats()
        self.config: config_mod.RouterConfig | None = None
        self.table: table.RoutingTable | None = None
        self.loaded_at: float | None = None
        self.document = None  # the config file's document as last read (what `config` was parsed from)
        self._stamp: tuple | None = None
        self._serving = False
        self._promised: list[tuple[str, str, frozenset[str]]] = []  # what /health checks is served

    # -- config ------------------------------------------------------------------------------------

    def _file_stamp(self) -> tuple | None:
        try:
            st = self.config_path.stat()
        except OSError:
            return None
        return st.st_mtime_ns, st.st_size, st.st_ino

    def load(self) -> None:
        """The first load: raises FleetspecError when the config is unusable."""
        self._stamp = self._file_stamp()
        self.document = config_mod.read(self.config_path)
        fresh = config_mod.parse(self.document, self.env, str(self.config_path))
        self.runtime = runtime_state.for_config(fresh.redis, fresh.spec.name, fresh.refresh_seconds,
                                                 redis_layout.plain_map(fresh))
        self._install(fresh)

    async def reload(self, force: bool = False) -> tuple[bool, str]:
        """Re-read the config when the file changed (always with force). A bad file is reported and
        the running config stays. Parsing runs in a worker thread so traffic keeps flowing."""
        stamp = self._file_stamp()
        if not force and (stamp is None or stamp == self._stamp):
            return True, "unchanged"
        self._stamp = stamp
        try:
            document, fresh = await asyncio.to_thread(self._read_config)
        except errors.FleetspecError as exc:
            self.metrics.reloads.inc("error")
            log.error("keeping the running router config: %s", exc)
            return False, str(exc)
        if not runtime_state.same_store(self.runtime, fresh.redis, fresh.spec.name, redis_layout.plain_map(fresh)):
            await self._switch_store(fresh)
        # A new config follows an apply step (a replaced replica, new adapters, a drain): read every
        # replica's health and adapters before the new table takes requests, not at the next period.
        self.upstreams.api_key = fresh.engine_api_key
        pods = await self._pods(fresh.upstreams)
        self.upstreams.configure(pods)
        await self.upstreams.refresh()
        await self._adopt(document, fresh, pods)
        self.metrics.reloads.inc("ok")
        log.info("router config loaded from %s (%s)", self.config_path, fresh.hash[:12])
        return True, "loaded"

    def _read_config(self) -> tuple[object, config_mod.RouterConfig]:
        document = config_mod.read(self.config_path)
        return document, config_mod.parse(document, self.env, str(self.config_path))

    async def _adopt(self, document, fresh: config_mod.RouterConfig, pods) -> None:
        """Serve a new config (a multi-process coordinator first has every process serve it)."""
        self.document = document
        self._install(fresh, pods)

    def _install(self, fresh: config_mod.RouterConfig, upstreams_now=None) -> None:
        self.config = fresh
        self._promised = _always_served(fresh)
        self._runtime_changed()
        self.upstreams.api_key = fresh.engine_api_key
        self.upstreams.configure(fresh.upstreams if upstreams_now is None else upstreams_now)
        self.loaded_at = time.time()

    async def _pods(self, listed) -> list[config_mod.Upstream]:
        """The upstreams with each `discover` entry replaced by one replica per pod its DNS name
        resolves to (sorted by address). Until a name has resolved once, the entry stays as it is;
        after that, a failed lookup keeps the last answer (`discovery.Discovery`)."""
        out: list[config_mod.Upstream] = []
        for upstream in listed:
            if not upstream.discover:
                out.append(upstream)
                continue
            host, port = httpio.address_of(upstream.url)
            watch = self._discoveries.get((host, port))
            if watch is None:
                watch = self._discoveries[(host, port)] = discovery.Discovery(host, port, self.resolver, ttl_s=0.0)
            try:
                urls = await asyncio.to_thread(watch.current)
            except discovery.DiscoveryError as exc:
                log.warning("cannot resolve the pods of %s yet (%s); sending to %s as it is", upstream.server, exc,
                            upstream.url)
                out.append(upstream)
                continue
            out += [dataclasses.replace(upstream, replica=i, url=url, discover=False) for i, url in enumerate(urls)]
        return out

    async def _switch_store(self, fresh: config_mod.RouterConfig) -> None:
        """The config now names another store (or none): follow that one from here on."""
        old = self.runtime
        self.runtime = runtime_state.for_config(fresh.redis, fresh.spec.name, fresh.refresh_seconds,
                                                 redis_layout.plain_map(fresh))
        self.runtime.warmed = old.warmed
        await old.stop()
        if self._serving:
            await self.runtime.start(self._runtime_changed)
        log.info("runtime cluster mappings now live in %s", fresh.redis.display() if fresh.redis else "memory")

    def _runtime_changed(self) -> None:
        """Lay the runtime mappings over the config's table (after an admin call, a change another
        replica published, or a config reload)."""
        routing, ignored = runtime_state.effective(self.config.table, self.runtime.overrides.values())
        known = {o.key for o, _ in self.ignored}
        fresh = [(o, why) for o, why in ignored if o.key not in known]
        for override, why in fresh[:5]:
            log.warning("ignoring runtime mapping %s → %s of rule %s: %s", override.cluster, override.target,
                        override.rule, why)
        if len(fresh) > 5:
            log.warning("ignoring %d more runtime mappings; GET /admin/state lists them all", len(fresh) - 5)
        self.table, self.ignored = routing, ignored

    async def set_cluster_overrides(self, ref: table.RuleRef, entries: Mapping[str, str]) -> None:
        """Raises runtime_state.Unavailable when the shared store cannot take the change."""
        now = time.time()
        await self.runtime.set_overrides(
            runtime_state.ClusterOverride(ref.index, ref.name, cluster, target, now) for cluster, target in entries.items())

    async def clear_cluster_overrides(self) -> int:
        return await self.runtime.clear_overrides()

    def _health_changed(self, replica: upstreams.Replica) -> None:
        up = replica.upstream
        self.metrics.upstream_up.set(up.server, str(up.replica), up.url, value=1.0 if replica.healthy else 0.0)
        if replica.healthy:
            self.loader.forget_lost(replica)

    def _lost(self, replica: upstreams.Replica, served: str) -> None:
        """The engine answered 404 for an adapter: it no longer serves it."""
        replica.lost(served)

    def _engine_headers(self) -> list[tuple[str, str]]:
        return [contract.JSON, *contract.auth_headers(self.config.engine_api_key)]

    def cache_capacity(self, replica: upstreams.Replica) -> int:
        """Adapters one engine keeps ready: its server's max_cpu_loras, else max_loras (vLLM's default)."""
        server = self.config.spec.server(replica.server)
        lora = server.lora if server is not None else None
        return (lora.max_cpu_loras or lora.max_loras) if lora is not None else 0

    def _health(self) -> dict:
        """/health: 200 while the router routes (Redis down included: it routes on with what it last
        read); `degraded` names the specialists that must be served at all times and are served nowhere."""
        replicas = self.upstreams.replicas.values()
        unserved = residency.unserved(replicas, self._promised)
        rows = [{"server": r.server, "replica": r.upstream.replica, "url": r.upstream.url,
                 "healthy": r.healthy, "draining": r.draining, "inflight": r.inflight,
                 "inflight_by_model": dict(sorted(r.busy.items())), "adapters": sorted(r.adapters), "last_error": r.last_error, "agent": r.agent_json()}
                for r in replicas]
        # The agents' problems (a refused ConfigMap, an agent that does not answer) are shown, not acted
        # on: the pod keeps its last good set and routing follows what each engine serves.
        agent_problems = [f"{row['server']}/{row['replica']} ({row['url']}): {row['agent']['problem']}"
                          for row in rows if row["agent"] and row["agent"]["problem"]]
        return {"status": "degraded" if unserved else "ok", "fleet": self.config.spec.name,
                "config_hash": self.config.hash, "healthy_upstreams": sum(1 for r in replicas if r.healthy),
                "upstreams": len(self.upstreams.replicas), "unserved": unserved, "agent_problems": agent_problems,
                "replicas": rows, "runtime_state": self.runtime.health()}

    # -- serving -----------------------------------------------------------------------------------

    async def serve(self, host: str, port: int, ready: asyncio.Event | None = None) -> None:
        if self.config is None:
            self.load()
        self._serving = True
        self.upstreams.configure(await self._pods(self.config.upstreams))
        await asyncio.gather(self.upstreams.refresh(), self.runtime.start(self._runtime_changed))
        raise_file_limit(self.limits.max_connections)
        server = await fastpath.start_server(self, host, port, backlog=1024)
        tasks = [asyncio.create_task(self._watch()), asyncio.create_task(self._refresh_loop())]
        log.info("fleetspec router for fleet %s listening on http://%s:%d", self.config.spec.name, host, port)
        if ready is not None:
            ready.set()
        try:
            async with server:
                await server.serve_forever()
        finally:
            for task in tasks:
                task.cancel()
            self._serving = False
            await self.runtime.stop()
            self.pool.close()

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(WATCH_SECONDS)
            await self.reload()

    async def _refresh_loop(self) -> None:
        while True:
            await asyncio.sleep(self.config.refresh_seconds)
            if any(u.discover for u in self.config.upstreams):
                self.upstreams.configure(await self._pods(self.config.upstreams))  # pods come and go
            await self.upstreams.refresh()
            self._replicas_changed()

    def _replicas_changed(self) -> None:
        """Health or residency changed (a coordinator tells its serving processes)."""

    def totals(self) -> metrics.RouterMetrics:
        """The metrics of everything this router serves (a coordinator adds its processes')."""
        return self.metrics

    async def serve_connection(self, stream: streams.Stream, counted: bool = False, first: _First | None = None,
                               take_back: Callable[[], bool] | None = None) -> None:
        """Answer one client connection's requests until it closes. The fast path (fastpath.py) hands
        a connection over here already counted, with the request it began (`first`: the request, and
        what answers it) or with none, for what it does not do itself; `take_back()` between requests
        returns the connection to it (True: it answers the connection from now on)."""
        client = _Client(stream, self.limits.write_timeout_s)
        kept = False
        try:
            if stream.write_paused:
                await client.drain()  # the client had not read the fast path's last answer yet
            if not counted and self.connections >= self.limits.max_connections:
                self.metrics.refused.inc("connections")
                message = (f"The router has {self.connections} client connections open, its limit "
                           "(--max-connections); retry shortly.")
                await send_json(client, 503, openai.error(503, message), keep_alive=False,
                                 extra=[("Retry-After", str(self.limits.retry_after_s))])
                await _linger(stream)
                return
            if not counted:
                self.connections += 1
                counted = True
            requests = httpio.RequestReader(stream, self.limits, self.budget)
            while True:
                client.request, client.sent = None, False
                respond = self.dispatch
                try:
                    if first is not None:
                        (request, respond), first = first, None
                    else:
                        request = await requests.next()
                except httpio.ProtocolError as exc:
                    self.metrics.refused.inc(str(exc.status))
                    await send_json(client, exc.status, openai.error(exc.status, str(exc)), keep_alive=False,
                                     extra=exc.headers)
                    await _linger(stream)
                    return
                if request is None:
                    return
                client.request = request
                try:
                    keep = await respond(request, client)
                finally:
                    self.budget.release(request.held)
                if not keep or not request.keep_alive or client.must_close:
                    return
                if take_back is not None and take_back():
                    kept = True
                    return
        except (ConnectionError, asyncio.IncompleteReadError, _BrokenBody):
            pass  # the client left, or the engine broke an answer already under way: drop the connection
        except asyncio.CancelledError:
            pass  # shutting down: asyncio's stream callback would log a cancelled handler as an error
        except Exception as exc:  # a bug must cost one connection, never the router or a traceback per request
            log.error("answering a client failed (%s: %s); its connection is closed", exc.__class__.__name__, exc)
            log.debug("the failure in full", exc_info=True)
            if not client.sent:
                with contextlib.suppress(Exception):
                    await send_json(client, 500, openai.error(500, "The router failed to answer this request; "
                                                                    "its log says why."), keep_alive=False)
        finally:
            if counted and not kept:
                self.connections -= 1
            if not kept:
                stream.close()

    def client_authorized(self, request: httpio.Request) -> bool:
        """Whether the request may use the API: the fleet sets no client key, or the request has it."""
        key = self.config.client_api_key
        return key is None or admin.authorized(key, request.headers.get("authorization"))

    async def dispatch(self, request: httpio.Request, writer: _Client) -> bool:
        """Answer one request; False when the connection must close afterwards."""
        path, keep = request.path, request.keep_alive
        method = "GET" if request.method == "HEAD" else request.method  # HEAD: the GET answer without its body
        if path.startswith("/v1/") and not self.client_authorized(request):
            return await send_json(writer, 401, openai.error(401, "This router needs an API key: send "
                                                                   "`Authorization: Bearer <key>`."),
                                    keep_alive=keep, extra=[("WWW-Authenticate", "Bearer")])
        scope = None
        if path.count("/") >= 3 and not path.startswith(("/v1/", "/admin/")):
            # An Ingress path (/chatbot/v1/..., seed 003): scope the request, and strip the prefix.
            segment, _, rest = path[1:].partition("/")
            scope = _scope(segment, self.config) if rest.startswith("v1/") else None
            if scope is not None:
                query = request.target.partition("?")[2]
                request.target = path = "/" + rest + (f"?{query}" if query else "")
        if request.method == "POST" and path in ("/v1/chat/completions", "/v1/completions"):
            return await self._proxy(request, writer, chat=path.endswith("chat/completions"), scope=scope)
        if path.startswith("/admin/") or (method == "GET" and path in ("/health", "/metrics")):
            return await self._operate(request, writer)
        if method == "GET" and path == "/v1/models":
            return await send_json(writer, 200, self._models(), keep_alive=keep)
        return await send_json(writer, 404, {"detail": "Not Found"}, keep_alive=keep)

    async def _operate(self, request: httpio.Request, writer: _Client) -> bool:
        """/admin/*, /health and /metrics: what the router knows of the fleet, and changes to it.
        (A serving process of a multi-process router sends these to its coordinator instead.)"""
        path, keep = request.path, request.keep_alive
        if path.startswith("/admin/"):
            status, body = await admin.handle(self, request)
            return await send_json(writer, status, body, keep_alive=keep,
                                    extra=[("WWW-Authenticate", "Bearer")] if status == 401 else ())
        if path == "/health":
            return await send_json(writer, 200, self._health(), keep_alive=keep)
        data = self._metrics_text().encode()
        head = httpio.response_head(200, [("Content-Type", "text/plain; version=0.0.4; charset=utf-8"),
                                          ("Content-Length", str(len(data))), *writer.persistence(keep)])
        writer.write(head if writer.head_only else head + data)
        await writer.drain()
        return keep

    def _gauges(self) -> None:
        """Copy what is true now into the gauges, just before they are read."""
        self.metrics.runtime_state(self.runtime.health(), len(self.runtime.overrides) - len(self.ignored),
                                   len(self.ignored), getattr(self.runtime, "syncs", None))
        self.metrics.agents(self.upstreams.replicas.values())
        self.metrics.connections.set(value=self.connections)
        self.metrics.body_bytes.set(value=self.budget.held)

    def _metrics_text(self) -> str:
        self._gauges()
        return self.totals().render()

    def _models(self) -> dict:
        routing, created = self.table, int(self.loaded_at or 0)
        base = routing.base_served_name

        def card(model_id: str, root: str | None, parent: str | None) -> dict:
            return {"id": model_id, "object": "model", "created": created, "owned_by": "fleetspec",
                    "root": root, "parent": parent}

        cards = [card(table.AUTO, None, None), card(base, base, None)]
        for name, specialist in sorted(routing.specialists.items()):
            cards.append(card(name, routing.served.get((name, specialist.version)), base))
        return {"object": "list", "data": cards}

    # -- the proxy ---------------------------------------------------------------------------------

    async def _proxy(self, request: httpio.Request, writer: _Client, chat: bool,
                     scope: _Scope | None = None) -> bool:
        started = time.perf_counter()
        try:
            body = httpjson.loads(request.body, self.limits.max_json_depth)
        except httpjson.TooDeep as exc:
            return await send_json(writer, 400, openai.error(400, str(exc)), keep_alive=request.keep_alive)
        except ValueError:
            body = None
        if not isinstance(body, dict):
            return await send_json(writer, 400, openai.error(400, "The request body must be a JSON object."),
                                    keep_alive=request.keep_alive)
        model = body.get("model") if isinstance(body.get("model"), str) else None
        if scope is not None and scope.model is not None and not (model or "").startswith(f"{scope.model}@"):
            model = scope.model  # /chatbot/... means the chatbot specialist (a chatbot@version stays)
        prompt = openai.prompt_text(body, chat)
        return await self._route_and_forward(request, writer, body, prompt, model, scope, started)

    async def _route_and_forward(self, request: httpio.Request, writer: _Client, body: dict, prompt: str,
                                 model: str | None, scope: _Scope | None, started: float, first_attempt: int = 0
                                 ) -> bool:
        for attempt in range(first_attempt, REDECIDE_LIMIT + 1):
            # This request's view, whatever reloads happen; taken again only when an engine said the
            # adapter it was decided for is gone and a newer config has been loaded since (_Stale).
            config, routing = self.config, self.table
            if scope is not None and scope.server is not None:
                config = _ServerScoped(config, scope.server)
            wanted = await self._decide(request, routing, prompt, model, record=attempt == 0)
            if wanted.rejected:
                return await self._reject(writer, wanted, request.keep_alive)
            if wanted.specialist is not None and not config.hosts(wanted.specialist):
                wanted = _base_instead(wanted, routing, OUTSIDE_SCOPE)  # /tasks/... and a chat specialist
            decision, replica = await self._place(wanted, config, routing)
            if decision.rejected:
                self._count(decision)
                self.metrics.requests.inc(wanted.specialist, wanted.version or "", "503")
                return await self._unservable(writer, wanted, decision, request.keep_alive)
            try:
                status, keep, decision = await self._forward(request, writer, body, wanted, decision, replica,
                                                             config, routing, may_redecide=attempt < REDECIDE_LIMIT)
            except _Stale:
                continue
            break
        return self.finish(decision, status, keep, started)

    async def resume(self, request: httpio.Request, writer: _Client, sent: fastpath.Sent) -> bool:
        """Go on with a request the fast path sent to an engine and could not finish from its
        callbacks (the answer is not a small, whole, ordinary one): as if this path had sent it."""
        try:
            status, keep, decision = await self._forward(
                request, writer, sent.body, sent.decision, sent.decision, sent.replica, sent.config, sent.routing,
                may_redecide=True, sent=sent)
        except _Stale:
            return await self._route_and_forward(request, writer, sent.body, sent.prompt, sent.model, None,
                                                 sent.started, first_attempt=1)
        return self.finish(decision, status, keep, started=sent.started)

    def finish(self, decision: table.Decision, status: int, keep: bool, started: float) -> bool:
        self._count(decision)  # once per request: the decision that answered it
        labels = (decision.specialist or metrics.BASE_LABEL, decision.version or "")
        self.metrics.requests.inc(*labels, str(status))
        self.metrics.latency.observe(time.perf_counter() - started, *labels)
        return keep

    def _count(self, decision: table.Decision) -> None:
        self.stats.record(decision)
        if decision.fallback_reason:
            self.metrics.fallbacks.inc(decision.fallback_reason)

    def route_request(self, request: httpio.Request, routing: table.RoutingTable, prompt: str,
                      model: str | None) -> tuple[table.Decision, list[str], str | None]:
        """The table's decision without the embedding tier, the extensions it was asked for, and the
        sticky key."""
        sticky = request.headers.get(routing.sticky_key.lower()) if routing.sticky_key else None
        named = request.headers.get(EXTENSIONS_HEADER)
        extensions = [e.strip() for e in named.split(",") if e.strip()] if named else []
        ticked = time.perf_counter()
        decision = routing.decide(prompt, extensions=extensions, explicit_model=model, sticky_key=sticky,
                                  explain=False, embed=False)
        self.metrics.decisions.observe(time.perf_counter() - ticked)
        return decision, extensions, sticky

    async def _decide(self, request: httpio.Request, routing: table.RoutingTable, prompt: str, model: str | None,
                      record: bool) -> table.Decision:
        decision, extensions, sticky = self.route_request(request, routing, prompt, model)
        if routing.wants_embedding(decision):
            # Milliseconds of model time: in a worker thread (torch releases the GIL), never on the loop.
            ticked = time.perf_counter()
            decision = await asyncio.to_thread(routing.by_embedding, decision, prompt, sticky)
            self.metrics.embeddings.observe(time.perf_counter() - ticked)
        if record:
            gaplog.record(self, decision, prompt, extensions)  # queued only: the writer runs in the background
        return decision

    # -- where a request goes ----------------------------------------------------------------------

    async def _place(self, wanted: table.Decision, config, routing, tried: list | None = None,
                     down: list | None = None) -> tuple[table.Decision, upstreams.Replica | None]:
        """The replica for a decision, its adapter loaded first where it must be (residency); when
        the specialist cannot be served, routing.fallback decides: its previous version, the base
        model, or a rejected decision. `tried` replicas are not chosen for the wanted adapter again;
        of them, only the `down` ones (they refused the connection) are skipped for anything else:
        an engine that lacks one adapter still serves the base model and its other adapters."""
        tried, exclude = tried or [], down or []
        if wanted.specialist is None:
            return wanted, self.upstreams.choose(wanted.served_name, config.hosts(None), adapter=False,
                                                 exclude=exclude).replica
        replica, reason = await self._adapter_replica(wanted, config, tried)
        if replica is not None:
            return wanted, replica
        if routing.fallback == "previous":
            previous = routing.specialists[wanted.specialist].previous_version
            served = routing.served.get((wanted.specialist, previous)) if previous else None
            if served is not None and previous != wanted.version:
                held = self.upstreams.choose(served, config.hosts(wanted.specialist), exclude=exclude).replica
                if held is not None:
                    return dataclasses.replace(wanted, version=previous, served_name=served,
                                               fallback_reason=PREVIOUS_VERSION), held
        if routing.fallback == "reject":
            return dataclasses.replace(wanted, served_name=None, rejected=True, fallback_reason=reason), None
        base = _base_instead(wanted, routing, reason)
        return base, self.upstreams.choose(base.served_name, config.hosts(None), adapter=False, exclude=exclude).replica

    async def _adapter_replica(self, wanted: table.Decision, config, exclude: list
                               ) -> tuple[upstreams.Replica | None, str]:
        """A replica that serves the wanted adapter, loading it onto one within on_demand_timeout_s
        when none does. (None, fallback reason) when that fails."""
        served, hosts, path, policy, may_load = self._placement(wanted, config)
        deadline = time.monotonic() + config.spec.routing.on_demand_timeout_s
        tried, reason = list(exclude), None
        while True:
            choice = self.upstreams.choose(served, hosts, may_load=may_load, policy=policy, exclude=tried)
            replica = choice.replica
            if replica is None:
                if reason is None and not residency.candidates(self.upstreams.replicas.values(), hosts, set()):
                    return None, NO_HEALTHY_REPLICA
                return None, ADAPTER_UNAVAILABLE
            labels = (replica.server, str(replica.upstream.replica))
            if not choice.load:
                self.metrics.adapter_cache.inc(*labels, "hit")
                return replica, ""
            self.metrics.adapter_cache.inc(*labels, "miss")
            remaining = deadline - time.monotonic()
            failed = "no time left" if remaining <= 0 else await self.loader.ensure(
                replica, wanted.specialist, wanted.version, served, path, self.cache_capacity(replica), remaining)
            if failed is None:
                return replica, ""
            reason = failed
            tried.append(replica)

    def _placement(self, wanted: table.Decision, config):
        """What residency.choose needs for the wanted adapter: its served name, the servers hosting
        it, its path, the fleet's affinity policy, and whether a replica may load it now."""
        served, hosts = wanted.served_name, config.hosts(wanted.specialist)
        path = config.adapter_path(wanted.specialist, wanted.version)
        settings = config.spec.routing
        policy = residency.Policy(settings.affinity, settings.spill_inflight)

        def may_load(replica) -> bool:
            return path is not None and self.cache_capacity(replica) > 0 and self.loader.may_load(replica, served)

        return served, hosts, path, policy, may_load

    def resident_replica(self, wanted: table.Decision, config) -> upstreams.Replica | None:
        """The replica _place would choose when that needs no adapter load and no fallback; None when
        it would need either (the fast path leaves those to _place)."""
        if wanted.specialist is None:
            return self.upstreams.choose(wanted.served_name, config.hosts(None), adapter=False).replica
        served, hosts, _, policy, may_load = self._placement(wanted, config)
        choice = self.upstreams.choose(served, hosts, may_load=may_load, policy=policy)
        return None if choice.load else choice.replica

    async def _unservable(self, writer, wanted: table.Decision, decision: table.Decision, keep_alive: bool) -> bool:
        """routing.fallback: reject, and the specialist cannot be served now: 503, saying why."""
        why = ("every replica that hosts it is down" if decision.fallback_reason == NO_HEALTHY_REPLICA
               else "no engine serves this version and loading it failed or took too long")
        message = (f"Specialist {wanted.specialist} (version {wanted.version}) cannot be served right now: {why}. "
                   "The fleet's routing.fallback is `reject`; `fleetspec status` shows the replicas.")
        return await send_json(writer, 503, openai.error(503, message), keep_alive=keep_alive,
                                extra=[("Retry-After", "1"), ("x-fleetspec-fallback", decision.fallback_reason)])

    async def _reject(self, writer, decision: table.Decision, keep_alive: bool) -> bool:
        if decision.fallback_reason == table.UNKNOWN_MODEL:
            model = decision.matched[0] if decision.matched else ""
            body = openai.error(404, f"The model `{model}` does not exist. Valid aliases: "
                                + ", ".join(sorted(self.table.specialists)), param="model")
            self.metrics.requests.inc(metrics.BASE_LABEL, "", "404")
            return await send_json(writer, 404, body, keep_alive=keep_alive)
        self.metrics.fallbacks.inc(decision.fallback_reason)
        self.stats.record(decision)
        self.metrics.requests.inc(metrics.BASE_LABEL, "", "400")
        message = (f"No specialist matches this prompt ({decision.fallback_reason}) and the fleet's "
                   "routing.fallback is `reject`. Name a model explicitly, or set routing.fallback to `base`.")
        return await send_json(writer, 400, openai.error(400, message), keep_alive=keep_alive)

    async def _forward(self, request, writer, body: dict, wanted: table.Decision, decision: table.Decision,
                       replica: upstreams.Replica | None, config, routing, may_redecide: bool = False,
                       sent: fastpath.Sent | None = None) -> tuple[int, bool, table.Decision]:
        """Send to `replica`; while engines refuse the connection or say they lack the adapter
        (nothing reached the client yet), place the request again without them. An adapter gone
        while a newer config is loaded raises _Stale (when `may_redecide`): the request was decided
        for a version apply has since moved away from. `sent`: the fast path has claimed `replica`
        and sent the request on this connection, with this deadline for the answer's head."""
        tried: list[upstreams.Replica] = []
        down: list[upstreams.Replica] = []
        while replica is not None:
            current, served = replica, decision.served_name
            payload = b""
            if sent is None:
                payload = self.claim(current, served, body)
            try:
                status = await self._exchange(current, request, writer, payload, decision, sent)
                return status, request.keep_alive, decision
            except _NotSent as exc:
                self.metrics.upstream_errors.inc(current.server, str(current.upstream.replica), "connect")
                self.upstreams.mark_down(current, str(exc))
                down.append(current)
            except _Missing:
                self.metrics.upstream_errors.inc(current.server, str(current.upstream.replica), "adapter-missing")
                log.warning("engine %s no longer serves %s; routing its requests elsewhere", current.upstream.url, served)
                self._lost(current, served)
                if may_redecide and self.table is not routing:
                    raise _Stale() from None
            except _NoAnswer as exc:
                self.metrics.upstream_errors.inc(current.server, str(current.upstream.replica), exc.kind)
                await send_json(writer, exc.status, openai.error(exc.status, str(exc)), keep_alive=request.keep_alive)
                return exc.status, request.keep_alive, decision
            except _BrokenBody as exc:
                self.metrics.upstream_errors.inc(current.server, str(current.upstream.replica), exc.kind)
                raise
            finally:
                self.unclaim(current, served)
            sent = None
            tried.append(current)
            decision, replica = await self._place(wanted, config, routing, tried=tried, down=down)
            if decision.rejected:
                await self._unservable(writer, wanted, decision, request.keep_alive)
                return 503, request.keep_alive, decision
        what = decision.specialist or "the base model"
        message = (f"No healthy engine replica serves {what} right now; `fleetspec status` shows which "
                   "replicas are down.")
        await send_json(writer, 503, openai.error(503, message), keep_alive=request.keep_alive,
                         extra=[("Retry-After", "1")])
        return 503, request.keep_alive, decision

    def claim(self, replica: upstreams.Replica, served: str, body: dict) -> bytes:
        """Count a request against the replica (and the adapter it holds) until _unclaim; the body
        to send it, naming the served adapter."""
        body["model"] = served
        replica.inflight += 1
        replica.busy[served] += 1
        self.loader.used(replica, served)
        return json.dumps(body, ensure_ascii=False).encode()

    def unclaim(self, replica: upstreams.Replica, served: str) -> None:
        replica.inflight -= 1
        replica.busy[served] -= 1
        if not replica.busy[served]:
            del replica.busy[served]

    async def _exchange(self, replica: upstreams.Replica, request, writer, payload: bytes,
                        decision: table.Decision, sent: fastpath.Sent | None = None) -> int:
        if sent is None:
            conn, head = await self._send_upstream(replica, request, payload)
        else:
            conn, head = sent.conn, sent.head or await self._answer_head(sent.conn, request, sent.deadline)
        if head.status >= 500:
            self.metrics.upstream_errors.inc(replica.server, str(replica.upstream.replica), f"http-{head.status}")
        headers = answer.headers(head, decision)
        early = None
        if head.status == 404 and decision.specialist is not None and head.length is not None \
                and head.length <= SMALL_BODY:
            early = await _read_small(conn, head, self.limits.upstream_idle_s)
            if contract.model_missing(404, early.decode("utf-8", "replace")):
                if head.keep_alive:
                    self.pool.release(conn)
                else:
                    conn.close()
                raise _Missing()
        try:
            await _relay(conn, head, headers, writer, self.limits.upstream_idle_s, early)
        except (ConnectionError, asyncio.IncompleteReadError, httpio.ProtocolError, httpio.Stalled) as exc:
            conn.close()
            if isinstance(exc, httpio.Stalled):
                raise _BrokenBody(str(exc), "stalled") from None
            if isinstance(exc, httpio.ProtocolError) or not writer.is_closing():
                raise _BrokenBody(str(exc)) from None
            raise
        except BaseException:
            conn.close()
            raise
        if head.keep_alive:
            self.pool.release(conn)
        else:
            conn.close()
        return head.status

    async def _send_upstream(self, replica: upstreams.Replica, request, payload: bytes):
        """(connection, response head). Failing to connect is _NotSent (another replica may take
        the request); a pooled connection that fails while the request is written is replaced once.
        Once the request is out, a missing answer is _NoAnswer: the request is never sent twice."""
        request_head = self.upstream_head(replica, request, len(payload))
        fresh_only = False
        while True:
            try:
                conn = await self.pool.acquire(replica.address, fresh_only)
            except (OSError, TimeoutError) as exc:
                raise _NotSent(f"{exc.__class__.__name__}: {exc}") from None
            # One deadline for writing the request and reading the answer's head: an engine that stops
            # reading a large body holds the request no longer than one that never answers.
            deadline = asyncio.get_running_loop().time() + self.limits.upstream_first_byte_s
            try:
                await httpio.write_request(conn.stream, request_head, payload, deadline)
            except TimeoutError:
                conn.close()
                raise _NoAnswer(504, f"The engine did not read the request within {self.limits.upstream_first_byte_s:g} "
                                     "s (--upstream-first-byte-s).", "first-byte-timeout") from None
            except OSError as exc:
                conn.close()  # the engine had closed this connection: it read nothing of the request
                if not conn.reused:
                    raise _NotSent(f"{exc.__class__.__name__}: {exc}") from None
                fresh_only = True
                continue
            except BaseException:
                conn.close()
                raise
            return conn, await self._answer_head(conn, request, deadline)

    def upstream_head(self, replica: upstreams.Replica, request: httpio.Request, length: int) -> bytes:
        # The client's credentials are for the router; the engines get the fleet's own key, so a client
        # can never reach an engine with a key of its choosing (or without the router's).
        forwarded = [(k, v) for k, v in request.forwardable() if k not in _CREDENTIALS]
        forwarded += contract.auth_headers(self.config.engine_api_key)
        host = f"{replica.address[0]}:{replica.address[1]}"
        return httpio.request_head(request.method, request.target, host, forwarded, length)

    async def _answer_head(self, conn: httpio.Connection, request: httpio.Request, deadline: float
                           ) -> httpio.ResponseHead:
        """The head of the engine's answer to a request sent on `conn`; a missing one is _NoAnswer."""
        try:
            return await httpio.read_response_head(conn.stream, request.method, deadline)
        except TimeoutError:
            conn.close()
            raise _NoAnswer(504, f"The engine did not start answering within {self.limits.upstream_first_byte_s:g} "
                                 "s (--upstream-first-byte-s).", "first-byte-timeout") from None
        except (OSError, asyncio.IncompleteReadError) as exc:
            conn.close()
            raise _NoAnswer(502, f"The engine closed the connection without answering ({exc}).",
                            "no-answer") from None
        except httpio.ProtocolError as exc:
            conn.close()
            raise _NoAnswer(502, str(exc), "bad-answer") from None
        except BaseException:
            conn.close()
            raise


async def _read_small(conn: httpio.Connection, head: httpio.ResponseHead, idle_s: float) -> bytes:
    """A body of known, small length, whole."""
    try:
        return await conn.stream.read_exactly(head.length, asyncio.get_running_loop().time() + idle_s)
    except TimeoutError:
        conn.close()
        raise _NoAnswer(504, f"The engine stopped sending its answer for {idle_s:g} s.", "stalled") from None
    except asyncio.IncompleteReadError:
        conn.close()
        raise _NoAnswer(502, "The engine closed the connection in the middle of its answer.", "broken-body") from None


async def _relay(conn: httpio.Connection, head: httpio.ResponseHead, headers: list, writer: _Client,
                 idle_s: float, body: bytes | None = None) -> None:
    """Copy the engine's answer to the client: small bodies in one write, others piece by piece,
    chunked for HTTP/1.1 clients and delimited by closing the connection for HTTP/1.0 ones. `body`:
    the small body, when the caller has read it already."""
    request = writer.request
    keep = request.keep_alive if request is not None else False
    if head.status in (204, 304):  # no body and no length (RFC 9110 §8.6, §15.3.5)
        writer.write(httpio.response_head(head.status, [*headers, *writer.persistence(keep)]))
        await writer.drain()
        return
    if head.length is not None and head.length <= SMALL_BODY:
        if body is None:
            body = await _read_small(conn, head, idle_s)
        head_bytes = httpio.response_head(head.status, [*headers, ("Content-Length", str(len(body))),
                                                        *writer.persistence(keep)])
        writer.write(head_bytes if writer.head_only else head_bytes + body)
        await writer.drain()
        return
    http11 = request is None or request.version >= (1, 1)
    if head.length is not None:
        framing = [("Content-Length", str(head.length))]
    elif http11:
        framing = [("Transfer-Encoding", "chunked")]
    else:
        writer.must_close, framing = True, []  # HTTP/1.0 knows no chunked: the end of the body is the close
    writer.write(httpio.response_head(head.status, [*headers, *framing, *writer.persistence(keep)]))
    if writer.head_only:
        await writer.drain()
        return
    chunked = head.length is None and http11
    async for piece in httpio.response_body(conn.stream, head, idle_s):
        writer.write(httpio.chunk(piece) if chunked else piece)
        await writer.drain()
    if chunked:
        writer.write(httpio.LAST_CHUNK)
    await writer.drain()


def _base_instead(decision: table.Decision, routing: table.RoutingTable, reason: str) -> table.Decision:
    return table.Decision(None, None, routing.base_served_name, table.FALLBACK, fallback_reason=reason,
                          matched=(decision.specialist,), cluster=decision.cluster)


@dataclasses.dataclass(frozen=True)
class _Scope:
    """What an Ingress path prefix pins: a specialist or the base model (`model`), or a server."""

    model: str | None = None
    server: str | None = None


def _scope(segment: str, config) -> _Scope | None:
    """`/chatbot` → the chatbot specialist, `/base` → the base model, `/tasks` → the tasks server
    (seed 003's Ingress paths); None for a segment that names none of them."""
    if config.spec.specialist(segment) is not None:
        return _Scope(model=segment)
    if segment == "base":
        return _Scope(model=config.table.base_served_name)
    if config.spec.server(segment) is not None:
        return _Scope(server=segment)
    return None


class _ServerScoped:
    """A router config seen through one server's Ingress path: only that server hosts anything."""

    def __init__(self, config, server: str):
        self._config, self._only = config, frozenset({server})

    def hosts(self, specialist: str | None) -> frozenset[str]:
        return self._config.hosts(specialist) & self._only

    def __getattr__(self, name: str):
        return getattr(self._config, name)


def _always_served(config) -> list[tuple[str, str, frozenset[str]]]:
    """(specialist, served name, servers) for every preloaded specialist's live versions: what the
    fleet promises is served at all times (on-demand ones are loaded when asked for)."""
    wanted = []
    for specialist in config.spec.specialists:
        if not specialist.preload:
            continue
        split = config.table.splits.get(specialist.name)
        hosts = config.hosts(specialist.name)
        for version in ({v for _, v in split.ranges} if split else {specialist.version}):
            served = config.table.served.get((specialist.name, version))
            if served is not None and hosts:
                wanted.append((specialist.name, served, hosts))
    return wanted


async def send_json(writer: _Client, status: int, body, keep_alive: bool, extra=()) -> bool:
    data = json.dumps(body).encode()
    headers = [("Content-Type", "application/json"), ("Content-Length", str(len(data))), *extra,
               *writer.persistence(keep_alive)]
    head = httpio.response_head(status, headers)
    writer.write(head if writer.head_only else head + data)
    with contextlib.suppress(ConnectionError):
        await writer.drain()
    return keep_alive


def raise_file_limit(connections: int) -> None:
    """Each client connection may hold an engine connection too: ask for enough file descriptors
    that the connection cap, not the operating system, is what refuses clients."""
    wanted = 2 * connections + 256
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= wanted:
        return
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        soft = target
    if soft < wanted:
        log.warning("only %d file descriptors are allowed; --max-connections %d needs about %d, so the system "
                    "may refuse connections first (raise `ulimit -n`)", soft, connections, wanted)


async def _linger(stream: streams.Stream) -> None:
    """Close after an error answer without losing it: a socket closed with unread bytes sends a
    reset that can destroy the answer before the client reads it, so the router stops writing and
    discards what the client still sends, for a bounded time and size."""
    with contextlib.suppress(Exception):
        if stream.can_write_eof():
            stream.write_eof()
        deadline, discarded = asyncio.get_running_loop().time() + LINGER_S, 0
        while discarded < LINGER_BYTES and (data := await stream.read(65536, deadline)):
            discarded += len(data)
