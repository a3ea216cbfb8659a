"""One serving process of a multi-process router (`runtime.router.processes` > 1).

It accepts clients on the shared port (SO_REUSEPORT: the kernel spreads connections over the
processes) and routes and proxies them itself, but it owns none of the router's state. The
coordinator (`router.processes`) sends it, in order: the config, each replica's health and
adapters, and the runtime cluster mappings; it applies each message before reading the next, so a
`ping` answered proves everything sent before it is in effect. Everything that changes state goes
the other way: on-demand loads (one flight per engine and adapter for the whole router), an engine
that refused a connection or lost an adapter, routing-gap entries (one writer for the file), and
/admin, /health and /metrics, which the coordinator answers from the state of every process.
What only this process knows (requests in flight, its counters, when it last used an adapter) it
reports when the coordinator asks.

It exits when the coordinator's end of the channel closes: a serving process never routes on alone.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time

from fleetspec.router import (
    admin,
    control,
    fastpath,
    httpio,
    httplimits,
    metrics,
    ondemand,
    runtime_state,
    server,
)
from fleetspec.routing import config as config_mod

log = logging.getLogger("fleetspec.router")

OPERATE_TIMEOUT_S = 30.0  # /health, /metrics and most admin calls, answered by the coordinator
WARM_TIMEOUT_S = admin.WARM_TIMEOUT_S + 30.0  # /admin/warm waits for real loads
LOAD_MARGIN_S = 5.0  # a load asked of the coordinator: its own deadline, plus the round trip


class FollowedState(runtime_state.MemoryState):
    """The coordinator's cluster mappings, as it last sent them (it follows Redis, or keeps them)."""

    backend = "coordinator"

    def apply(self, items: list[dict]) -> None:
        self.overrides = {(o.rule_index, o.cluster): o
                          for o in (runtime_state.ClusterOverride(**item) for item in items)}
        self._on_change()


class RemoteLoader:
    """The loader a serving process sees: loads run in the coordinator, so one load per engine and
    adapter happens for the whole router; this side remembers refusals (to ask once, not per request)
    and when it last sent a request to each adapter (the coordinator evicts the least recent)."""

    def __init__(self, channel: control.Channel):
        self.channel = channel
        self.last_used: dict[tuple[str, str], float] = {}
        self._flights: dict[tuple[str, str], asyncio.Task] = {}
        self._failed: dict[tuple[str, str], tuple[float, str]] = {}

    def may_load(self, replica, served_name: str) -> bool:
        failed = self._failed.get((replica.upstream.url, served_name))
        return failed is None or failed[0] <= time.monotonic()

    def used(self, replica, served_name: str) -> None:
        self.last_used[(replica.upstream.url, served_name)] = time.monotonic()

    def forget_lost(self, replica) -> None:
        pass  # the coordinator keeps the record of loads

    async def ensure(self, replica, specialist: str, version: str, served_name: str, path: str,
                     capacity: int, timeout_s: float) -> str | None:
        key = (replica.upstream.url, served_name)
        flight = ondemand.join_flight(self._flights, key,
                                      lambda: self._ask(key, specialist, version, path, capacity, timeout_s))
        return await asyncio.shield(flight)

    async def _ask(self, key, specialist: str, version: str, path: str, capacity: int, timeout_s: float) -> str | None:
        url, served_name = key
        message = {"op": "load", "url": url, "specialist": specialist, "version": version, "served": served_name,
                   "path": path, "capacity": capacity, "timeout": timeout_s}
        try:
            answer = await self.channel.ask(message, timeout_s + LOAD_MARGIN_S)
        except (TimeoutError, control.ChannelClosed):
            return f"the router's coordinator did not answer for loading {served_name} onto {url}"
        failed = answer.get("failed")
        if failed is not None and answer.get("retry_in"):
            self._failed[key] = (time.monotonic() + float(answer["retry_in"]), failed)
        return failed


class ServingProcess(server.Router):
    def __init__(self, config_path, channel: control.Channel, index: int, limits: httplimits.Limits | None = None):
        super().__init__(config_path, limits=limits)
        self.channel, self.index = channel, index
        self.runtime = FollowedState()
        self.loader = RemoteLoader(channel)
        self.forward_gaps = self._send_gaps
        self.installed = asyncio.Event()

    # -- what the coordinator sends ------------------------------------------------------------------

    async def follow(self) -> None:
        """Apply the coordinator's messages in order until it closes the channel."""
        while True:
            message = await self.channel.receive()
            op = message.get("op")
            if op == "config":
                answer = await self._take_config(message)
                self.channel.reply(message, answer)
            elif op == "replicas":
                self._take_replicas(message["replicas"])
            elif op == "overrides":
                self.runtime.apply(message["items"])
            elif op == "ping":
                self.channel.reply(message, {"pid": os.getpid()})
            elif op == "report":
                self.channel.reply(message, self.report())
            else:
                log.warning("ignoring a control message this router version does not know (%s)", op)
            await self.channel.drain()

    async def _take_config(self, message: dict) -> dict:
        try:
            fresh = await asyncio.to_thread(config_mod.parse, message["document"], self.env, str(self.config_path))
        except Exception as exc:  # noqa: BLE001 - said to the coordinator, which restarts this process
            return {"error": f"{exc.__class__.__name__}: {exc}"}
        pods = [config_mod.parse_upstream(item["upstream"], "the coordinator's replica list")
                for item in message["replicas"]]
        self.document = message["document"]
        self._install(fresh, pods)
        await self.runtime.start(self._runtime_changed)  # from now on an overrides message re-lays the table
        self._take_replicas(message["replicas"])
        self.installed.set()
        return {"config_hash": fresh.hash}

    def _take_replicas(self, items: list[dict]) -> None:
        self.upstreams.configure(config_mod.parse_upstream(item["upstream"], "the coordinator's replica list")
                                 for item in items)
        for item in items:
            replica = self.upstreams.replicas[item["upstream"]["url"].rstrip("/")]
            replica.healthy, replica.last_error = item["healthy"], item["last_error"]
            if sorted(replica.models) != item["models"]:
                replica.models = frozenset(item["models"])
            if sorted(replica.adapters) != item["adapters"]:
                replica.adapters = frozenset(item["adapters"])

    def report(self) -> dict:
        """What only this process knows, for the coordinator's totals."""
        self.metrics.connections.set(value=self.connections)
        self.metrics.body_bytes.set(value=self.budget.held)
        replicas = self.upstreams.replicas.values()
        return {"index": self.index, "pid": os.getpid(), "config_hash": self.config.hash if self.config else None,
                "connections": self.connections,
                "inflight": {r.upstream.url: r.inflight for r in replicas if r.inflight},
                "busy": {r.upstream.url: dict(r.busy) for r in replicas if r.busy},
                "used": [[url, served, at] for (url, served), at in self.loader.last_used.items()],
                "stats": self.stats.snapshot(), "metrics": self.metrics.snapshot(metrics.SERVING_FAMILIES)}

    # -- what goes to the coordinator ----------------------------------------------------------------

    def _health_changed(self, replica) -> None:
        super()._health_changed(replica)
        if replica.healthy is False:
            self.channel.send({"op": "down", "url": replica.upstream.url, "reason": replica.last_error})

    def _lost(self, replica, served: str) -> None:
        super()._lost(replica, served)
        self.channel.send({"op": "lost", "url": replica.upstream.url, "served": served})

    async def _send_gaps(self, lines: list[bytes]) -> None:
        self.channel.send({"op": "gaps", "lines": [line.decode("utf-8", "surrogatepass") for line in lines]})
        await self.channel.drain()

    async def _operate(self, request: httpio.Request, writer) -> bool:
        """The coordinator answers from every process's state; this process relays its bytes."""
        message = {"op": "http", "method": request.method, "target": request.target, "headers": request.headers,
                   "body": request.body.decode("latin-1"), "keep_alive": request.keep_alive,
                   "version": list(request.version)}
        timeout = WARM_TIMEOUT_S if "warm" in request.path else OPERATE_TIMEOUT_S
        try:
            answer = await self.channel.ask(message, timeout)
        except (TimeoutError, control.ChannelClosed):
            text = (f"The router's coordinator did not answer {request.method} {request.path} within {timeout:g} s; "
                    "its log says why. Routing goes on.")
            return await server.send_json(writer, 504, {"error": {"message": text}}, keep_alive=False)
        writer.write(answer["data"].encode("latin-1"))
        await writer.drain()
        return bool(answer["keep"])

    async def reload(self, force: bool = False) -> tuple[bool, str]:
        return True, "the coordinator reads the config"

    # -- serving -------------------------------------------------------------------------------------

    async def serve(self, host: str, port: int, ready: asyncio.Event | None = None) -> None:
        follow = asyncio.create_task(self.follow())
        try:
            waiting = asyncio.create_task(self.installed.wait())
            await asyncio.wait({follow, waiting}, return_when=asyncio.FIRST_COMPLETED)
            if not self.installed.is_set():
                waiting.cancel()
                await follow  # raises ChannelClosed: the coordinator went before sending a config
            self._serving = True
            server.raise_file_limit(self.limits.max_connections)
            listener = await fastpath.start_server(self, host, port, backlog=1024, reuse_port=True)
            self.channel.send({"op": "ready", "pid": os.getpid(), "config_hash": self.config.hash})
            await self.channel.drain()
            if ready is not None:
                ready.set()
            async with listener:
                serving = asyncio.create_task(listener.serve_forever())
                await asyncio.wait({follow, serving}, return_when=asyncio.FIRST_COMPLETED)
                serving.cancel()
                if follow.done():
                    follow.result()
        except control.ChannelClosed:
            log.info("serving process %d stops: its coordinator closed the control channel", self.index)
        finally:
            follow.cancel()
            self._serving = False
            self.channel.close()
            self.pool.close()


async def run(config_path: str, control_fd: int, index: int, host: str, port: int,
              limits: httplimits.Limits) -> None:
    channel = await control.Channel.over(socket.socket(fileno=control_fd))
    await ServingProcess(config_path, channel, index, limits).serve(host, port)

