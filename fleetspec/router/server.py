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
import json
import logging
import os
import pathlib
import time
import urllib.parse
from collections.abc import Mapping

from fleetspec import errors
from fleetspec.engine_api import contract
from fleetspec.router import admin, httpio, metrics, openai, runtime_state, upstreams
from fleetspec.routing import config as config_mod
from fleetspec.routing import table

log = logging.getLogger("fleetspec.router")

NO_HEALTHY_REPLICA = "no-healthy-replica"  # the chosen specialist's servers are all down
WATCH_SECONDS = 0.5
UPSTREAM_TIMEOUT = 600.0  # an engine may take minutes to finish a long non-streamed answer
EXTENSIONS_HEADER = "x-fleetspec-extensions"
_HEADER_SAFE = " -_.@()[]/:+,"
_CREDENTIALS = frozenset({"authorization", "proxy-authorization"})


class _NotSent(Exception):
    """The engine never answered: nothing reached the client, so another replica may take it."""


class _BrokenBody(Exception):
    """The engine failed in the middle of an answer the client already started receiving."""


class Router:
    def __init__(self, config_path: str | pathlib.Path, env: Mapping[str, str] | None = None):
        self.config_path = pathlib.Path(config_path)
        self.env = os.environ if env is None else env
        self.metrics = metrics.RouterMetrics()
        self.pool = httpio.Pool()
        self.upstreams = upstreams.Upstreams(self.pool, on_health=self._health_changed)
        self.runtime: runtime_state.MemoryState = runtime_state.MemoryState()  # replaced by load()
        self.ignored: list[tuple[runtime_state.ClusterOverride, str]] = []  # mappings the config does not allow
        self.stats = admin.Stats()
        self.config: config_mod.RouterConfig | None = None
        self.table: table.RoutingTable | None = None
        self.loaded_at: float | None = None
        self._stamp: tuple | None = None
        self._serving = False

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
        fresh = config_mod.load(self.config_path, self.env)
        self.runtime = runtime_state.for_config(fresh.redis, fresh.spec.name, fresh.refresh_seconds)
        self._install(fresh)

    async def reload(self, force: bool = False) -> tuple[bool, str]:
        """Re-read the config when the file changed (always with force). A bad file is reported and
        the running config stays. Parsing runs in a worker thread so traffic keeps flowing."""
        stamp = self._file_stamp()
        if not force and (stamp is None or stamp == self._stamp):
            return True, "unchanged"
        self._stamp = stamp
        try:
            fresh = await asyncio.to_thread(config_mod.load, self.config_path, self.env)
        except errors.FleetspecError as exc:
            self.metrics.reloads.inc("error")
            log.error("keeping the running router config: %s", exc)
            return False, str(exc)
        if not runtime_state.same_store(self.runtime, fresh.redis, fresh.spec.name):
            await self._switch_store(fresh)
        self._install(fresh)
        self.metrics.reloads.inc("ok")
        log.info("router config loaded from %s (%s)", self.config_path, fresh.hash[:12])
        return True, "loaded"

    def _install(self, fresh: config_mod.RouterConfig) -> None:
        self.config = fresh
        self._runtime_changed()
        self.upstreams.api_key = fresh.engine_api_key
        self.upstreams.configure(fresh.upstreams)
        self.loaded_at = time.time()

    async def _switch_store(self, fresh: config_mod.RouterConfig) -> None:
        """The config now names another store (or none): follow that one from here on."""
        old = self.runtime
        self.runtime = runtime_state.for_config(fresh.redis, fresh.spec.name, fresh.refresh_seconds)
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

    # -- serving -----------------------------------------------------------------------------------

    async def serve(self, host: str, port: int, ready: asyncio.Event | None = None) -> None:
        if self.config is None:
            self.load()
        self._serving = True
        await asyncio.gather(self.upstreams.refresh(), self.runtime.start(self._runtime_changed))
        server = await asyncio.start_server(self._connection, host, port, limit=httpio.MAX_HEAD_BYTES, backlog=1024)
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
            await self.upstreams.refresh()

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                try:
                    request = await httpio.read_request(reader, writer)
                except httpio.ProtocolError as exc:
                    await _send_json(writer, exc.status, openai.error(exc.status, str(exc)), keep_alive=False)
                    return
                if request is None:
                    return
                if not await self._dispatch(request, writer) or not request.keep_alive:
                    return
        except (ConnectionError, asyncio.IncompleteReadError, _BrokenBody):
            pass  # the client left, or the engine broke an answer already under way: drop the connection
        except asyncio.CancelledError:
            pass  # shutting down: asyncio's stream callback would log a cancelled handler as an error
        finally:
            writer.close()

    async def _dispatch(self, request: httpio.Request, writer: asyncio.StreamWriter) -> bool:
        """Answer one request; False when the connection must close afterwards."""
        path, keep = request.path, request.keep_alive
        key = self.config.client_api_key
        if key is not None and path.startswith("/v1/") and not admin.authorized(key, request.headers.get("authorization")):
            return await _send_json(writer, 401, openai.error(401, "This router needs an API key: send "
                                                                   "`Authorization: Bearer <key>`."),
                                    keep_alive=keep, extra=[("WWW-Authenticate", "Bearer")])
        if request.method == "POST" and path in ("/v1/chat/completions", "/v1/completions"):
            return await self._proxy(request, writer, chat=path.endswith("chat/completions"))
        if path.startswith("/admin/"):
            status, body = await admin.handle(self, request)
            return await _send_json(writer, status, body, keep_alive=keep,
                                    extra=[("WWW-Authenticate", "Bearer")] if status == 401 else ())
        if request.method == "GET" and path == "/v1/models":
            return await _send_json(writer, 200, self._models(), keep_alive=keep)
        if request.method == "GET" and path == "/health":
            healthy = sum(1 for r in self.upstreams.replicas.values() if r.healthy)
            # Still 200 when Redis is down: the router routes on with what it last read.
            return await _send_json(writer, 200, {"status": "ok", "fleet": self.config.spec.name,
                                                  "config_hash": self.config.hash, "healthy_upstreams": healthy,
                                                  "upstreams": len(self.upstreams.replicas),
                                                  "runtime_state": self.runtime.health()}, keep_alive=keep)
        if request.method == "GET" and path == "/metrics":
            self.metrics.runtime_state(self.runtime.health(), len(self.runtime.overrides) - len(self.ignored),
                                       len(self.ignored), getattr(self.runtime, "syncs", None))
            data = self.metrics.render().encode()
            writer.write(httpio.response_head(200, [("Content-Type", "text/plain; version=0.0.4; charset=utf-8"),
                                                    ("Content-Length", str(len(data)))]) + data)
            await writer.drain()
            return keep
        return await _send_json(writer, 404, {"detail": "Not Found"}, keep_alive=keep)

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

    async def _proxy(self, request: httpio.Request, writer: asyncio.StreamWriter, chat: bool) -> bool:
        started = time.perf_counter()
        config, routing = self.config, self.table  # this request's view, whatever reloads happen
        try:
            body = json.loads(request.body)
        except ValueError:
            body = None
        if not isinstance(body, dict):
            return await _send_json(writer, 400, openai.error(400, "The request body must be a JSON object."),
                                    keep_alive=request.keep_alive)
        sticky = request.headers.get(routing.sticky_key.lower()) if routing.sticky_key else None
        extensions = [e.strip() for e in request.headers.get(EXTENSIONS_HEADER, "").split(",") if e.strip()]
        model = body.get("model") if isinstance(body.get("model"), str) else None
        prompt = openai.prompt_text(body, chat)
        ticked = time.perf_counter()
        decision = routing.decide(prompt, extensions=extensions, explicit_model=model, sticky_key=sticky,
                                  explain=False, embed=False)
        self.metrics.decisions.observe(time.perf_counter() - ticked)
        if routing.wants_embedding(decision):
            # Milliseconds of model time: in a worker thread (torch releases the GIL), never on the loop.
            ticked = time.perf_counter()
            decision = await asyncio.to_thread(routing.by_embedding, decision, prompt, sticky)
            self.metrics.embeddings.observe(time.perf_counter() - ticked)
        if decision.rejected:
            return await self._reject(writer, decision, request.keep_alive)
        hosts = config.hosts(decision.specialist)
        replica = self.upstreams.choose(decision.served_name, hosts)
        if replica is None and decision.specialist is not None and routing.fallback == "base":
            decision, hosts = _base_instead(decision, routing), config.hosts(None)
            replica = self.upstreams.choose(decision.served_name, hosts)
        self.stats.record(decision)
        if decision.fallback_reason:
            self.metrics.fallbacks.inc(decision.fallback_reason)
        body["model"] = decision.served_name
        payload = json.dumps(body, ensure_ascii=False).encode()
        status, keep = await self._forward(request, writer, payload, decision, hosts, replica)
        labels = (decision.specialist or metrics.BASE_LABEL, decision.version or "")
        self.metrics.requests.inc(*labels, str(status))
        self.metrics.latency.observe(time.perf_counter() - started, *labels)
        return keep

    async def _reject(self, writer, decision: table.Decision, keep_alive: bool) -> bool:
        if decision.fallback_reason == table.UNKNOWN_MODEL:
            model = decision.matched[0] if decision.matched else ""
            body = openai.error(404, f"The model `{model}` does not exist. Valid aliases: "
                                + ", ".join(sorted(self.table.specialists)), param="model")
            self.metrics.requests.inc(metrics.BASE_LABEL, "", "404")
            return await _send_json(writer, 404, body, keep_alive=keep_alive)
        self.metrics.fallbacks.inc(decision.fallback_reason)
        self.stats.record(decision)
        self.metrics.requests.inc(metrics.BASE_LABEL, "", "400")
        message = (f"No specialist matches this prompt ({decision.fallback_reason}) and the fleet's "
                   "routing.fallback is `reject`. Name a model explicitly, or set routing.fallback to `base`.")
        return await _send_json(writer, 400, openai.error(400, message), keep_alive=keep_alive)

    async def _forward(self, request, writer, payload: bytes, decision: table.Decision, hosts: frozenset[str],
                       replica: upstreams.Replica | None) -> tuple[int, bool]:
        """Send to `replica`, moving on to the next one while engines refuse the connection."""
        tried: list[upstreams.Replica] = []
        while replica is not None:
            current = replica
            current.inflight += 1
            try:
                status = await self._exchange(current, request, writer, payload, decision)
                return status, request.keep_alive
            except _NotSent as exc:
                self.metrics.upstream_errors.inc(current.server, str(current.upstream.replica), "connect")
                self.upstreams.mark_down(current, str(exc))
                tried.append(current)
                replica = self.upstreams.choose(decision.served_name, hosts, exclude=tried)
            except _BrokenBody:
                self.metrics.upstream_errors.inc(current.server, str(current.upstream.replica), "broken-body")
                raise
            finally:
                current.inflight -= 1
        what = decision.specialist or "the base model"
        message = (f"No healthy engine replica serves {what} right now; `fleetspec status` shows which "
                   "replicas are down.")
        await _send_json(writer, 503, openai.error(503, message), keep_alive=request.keep_alive)
        return 503, request.keep_alive

    async def _exchange(self, replica: upstreams.Replica, request, writer, payload: bytes,
                        decision: table.Decision) -> int:
        conn, head = await self._send_upstream(replica, request, payload)
        if head.status >= 500:
            self.metrics.upstream_errors.inc(replica.server, str(replica.upstream.replica), f"http-{head.status}")
        headers = [(k, v) for k, v in head.headers if k.lower() not in httpio.HOP_BY_HOP]
        headers += _decision_headers(decision)
        if not request.keep_alive:
            headers.append(("Connection", "close"))
        try:
            await _relay(conn, head, headers, writer)
        except (ConnectionError, asyncio.IncompleteReadError, httpio.ProtocolError) as exc:
            conn.close()
            if isinstance(exc, httpio.ProtocolError) or not writer.is_closing():
                raise _BrokenBody(str(exc)) from None
            raise
        if head.keep_alive:
            self.pool.release(conn)
        else:
            conn.close()
        return head.status

    async def _send_upstream(self, replica: upstreams.Replica, request, payload: bytes):
        """(connection, response head). A pooled connection the engine already closed is retried
        once on a fresh one; any other failure before the head arrives is _NotSent."""
        # The client's credentials are for the router; the engines get the fleet's own key, so a client
        # can never reach an engine with a key of its choosing (or without the router's).
        forwarded = [(k, v) for k, v in request.headers.items() if k not in httpio.HOP_BY_HOP and k not in _CREDENTIALS]
        forwarded += contract.auth_headers(self.config.engine_api_key)
        host = f"{replica.address[0]}:{replica.address[1]}"
        data = httpio.request_bytes(request.method, request.target, host, forwarded, payload)
        while True:
            try:
                conn = await self.pool.acquire(replica.address)
            except (OSError, TimeoutError) as exc:
                raise _NotSent(f"{exc.__class__.__name__}: {exc}") from None
            try:
                conn.writer.write(data)
                await conn.writer.drain()
                async with asyncio.timeout(UPSTREAM_TIMEOUT):
                    head = await httpio.read_response_head(conn.reader)
                return conn, head
            except (OSError, asyncio.IncompleteReadError, httpio.ProtocolError, TimeoutError) as exc:
                conn.close()
                if not conn.reused:
                    raise _NotSent(f"{exc.__class__.__name__}: {exc}") from None


async def _relay(conn: httpio.Connection, head: httpio.ResponseHead, headers: list, writer) -> None:
    """Copy the engine's answer to the client: small bodies in one write, others chunk by chunk."""
    if head.length is not None:
        body = await conn.reader.readexactly(head.length) if head.length else b""
        writer.write(httpio.response_head(head.status, [*headers, ("Content-Length", str(len(body)))]) + body)
        await writer.drain()
        return
    writer.write(httpio.response_head(head.status, [*headers, ("Transfer-Encoding", "chunked")]))
    async for piece in httpio.response_body(conn.reader, head):
        writer.write(httpio.chunk(piece))
        await writer.drain()
    writer.write(httpio.LAST_CHUNK)
    await writer.drain()


def _decision_headers(decision: table.Decision) -> list[tuple[str, str]]:
    headers = [("x-fleetspec-model", _header_value(decision.served_name or "")),
               ("x-fleetspec-rule", _header_value(decision.rule.name))]
    if decision.specialist is not None:
        headers += [("x-fleetspec-specialist", decision.specialist), ("x-fleetspec-version", decision.version)]
    if decision.fallback_reason:
        headers.append(("x-fleetspec-fallback", decision.fallback_reason))
    return headers


def _header_value(text: str) -> str:
    """Rule names are free text; headers carry latin-1 only, so anything else is %-encoded."""
    return text if text.isascii() and text.isprintable() else urllib.parse.quote(text, safe=_HEADER_SAFE)


def _base_instead(decision: table.Decision, routing: table.RoutingTable) -> table.Decision:
    return table.Decision(None, None, routing.base_served_name, table.FALLBACK, fallback_reason=NO_HEALTHY_REPLICA,
                          matched=(decision.specialist,), cluster=decision.cluster)


async def _send_json(writer, status: int, body, keep_alive: bool, extra=()) -> bool:
    data = json.dumps(body).encode()
    headers = [("Content-Type", "application/json"), ("Content-Length", str(len(data))), *extra]
    if not keep_alive:
        headers.append(("Connection", "close"))
    writer.write(httpio.response_head(status, headers) + data)
    with contextlib.suppress(ConnectionError):
        await writer.drain()
    return keep_alive
