"""A router of several processes (`runtime.router.processes` > 1, or `serve --processes N`).

One Python process routes about 15,000 small requests/s on one core (docs/benchmarks.md); a machine
with more cores runs N serving processes (`serving_process`) that share the port through
SO_REUSEPORT, and this coordinator, which serves no client itself but owns everything that must be
one thing for the whole router:

- the config: it reads the file, and a new config is served only once every process has confirmed
  it (their config hash), so `/health`'s `config_hash`, which `apply` waits for before it moves an
  alias, names a table that every process routes by;
- the runtime cluster mappings (in memory, or followed from Redis), the replicas' health and
  adapters, and the record of adapters loaded on demand: it sends each change to every process,
  and an admin call is answered only after a `ping` to every process proves they apply it;
- on-demand loads: one load per engine and adapter for the whole router, whichever process asked;
- /admin, /health and /metrics: answered from the totals of every process (their counters, their
  requests in flight and when each last used an adapter, asked of them at that moment).

A serving process that exits is started again (with back-off); its last reported counters are kept
in the totals, so /metrics never goes backwards.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import signal
import socket
import sys
import time

from fleetspec.router import admin, control, gaplog, httpio, httplimits, metrics, ondemand, server

log = logging.getLogger("fleetspec.router")

MAX_PROCESSES = 64
READY_TIMEOUT_S = 120.0  # a serving process imports, parses the config and binds: seconds, not minutes
CONFIG_TIMEOUT_S = 60.0  # parsing a config of 10,000 specialists takes a few seconds on a busy core
REPORT_TIMEOUT_S = 5.0
PING_TIMEOUT_S = 5.0
STOP_TIMEOUT_S = 5.0
RESTART_DELAYS_S = (0.5, 1.0, 2.0, 5.0)  # after a serving process exits; a process up for a minute starts over
STABLE_S = 60.0


class StartupFailed(Exception):
    """The serving processes could not all start; the message says why, for the operator."""


@dataclasses.dataclass(eq=False)
class Worker:
    index: int
    process: asyncio.subprocess.Process | None = None
    channel: control.Channel | None = None
    ready: asyncio.Future | None = None
    config_hash: str | None = None  # the config it confirmed last
    report: dict | None = None  # its last answer to `report`
    started_at: float = 0.0
    restarts: int = 0

    @property
    def live(self) -> bool:
        return self.channel is not None and self.ready is not None and self.ready.done() \
            and not self.ready.exception()


class _Captured(server._Client):
    """The client side of a request a serving process relayed: the answer's bytes, to send back."""

    __slots__ = ("data",)

    def __init__(self, request: httpio.Request):
        super().__init__(None, 0.0)
        self.request, self.data = request, bytearray()

    def write(self, data: bytes) -> None:
        self.sent = True
        self.data += data

    async def drain(self) -> None:
        pass

    def is_closing(self) -> bool:
        return False


class Coordinator(server.Router):
    def __init__(self, config_path, processes: int, limits: httplimits.Limits | None = None,
                 resolver=None, log_level: str = "info"):
        super().__init__(config_path, limits=limits, resolver=resolver)
        if not 2 <= processes <= MAX_PROCESSES:
            raise ValueError(f"a multi-process router runs 2 to {MAX_PROCESSES} serving processes, not {processes}")
        self.processes, self.log_level = processes, log_level
        self.workers = [Worker(i) for i in range(processes)]
        self.loader.before_evict = self._gather
        self.retired_metrics = metrics.RouterMetrics()  # counts of serving processes that exited
        self.retired_stats = admin.Stats()
        self._address: tuple[str, int] | None = None
        self._sent_replicas: bytes | None = None
        self._replicas_pending = False
        self._tasks: set[asyncio.Task] = set()

    # -- serving -------------------------------------------------------------------------------------

    async def serve(self, host: str, port: int, ready: asyncio.Event | None = None) -> None:
        if self.config is None:
            self.load()
        _probe(host, port)
        self._address = (host, port)
        self._serving = True
        self.upstreams.configure(await self._pods(self.config.upstreams))
        await asyncio.gather(self.upstreams.refresh(), self.runtime.start(self._runtime_changed))
        loop = asyncio.get_running_loop()
        for worker in self.workers:
            worker.ready = loop.create_future()
        supervisors = [asyncio.create_task(self._supervise(w)) for w in self.workers]
        tasks = [asyncio.create_task(self._watch()), asyncio.create_task(self._refresh_loop())]
        try:
            await self._started()
            log.info("fleetspec router for fleet %s listening on http://%s:%d with %d serving processes",
                     self.config.spec.name, host, port, self.processes)
            if ready is not None:
                ready.set()
            await asyncio.gather(*supervisors)
        finally:
            for task in [*tasks, *supervisors, *self._tasks]:
                task.cancel()
            await asyncio.gather(*tasks, *supervisors, return_exceptions=True)
            await self._stop_all()
            self._serving = False
            await self.runtime.stop()
            self.pool.close()

    async def _started(self) -> None:
        """Wait until every serving process listens; StartupFailed names the first that could not."""
        try:
            async with asyncio.timeout(READY_TIMEOUT_S):
                for worker in self.workers:
                    await asyncio.shield(worker.ready)
        except TimeoutError:
            late = [w.index for w in self.workers if not w.live]
            raise StartupFailed(f"serving processes {late} did not start listening within {READY_TIMEOUT_S:g} s; "
                                "their log lines above say why") from None

    async def _supervise(self, worker: Worker) -> None:
        """Run one serving process, and start it again when it exits (after the first start)."""
        delays = iter(RESTART_DELAYS_S)
        while True:
            code = await self._run_worker(worker)
            if not worker.restarts and not worker.ready.done():  # the first start failed: the router cannot serve
                failure = StartupFailed(f"serving process {worker.index} exited with status {code} before it "
                                        "listened; its log lines above say why")
                worker.ready.set_exception(failure)
                raise failure
            self._retire(worker)
            if time.monotonic() - worker.started_at > STABLE_S:
                delays = iter(RESTART_DELAYS_S)
            delay = next(delays, RESTART_DELAYS_S[-1])
            log.error("serving process %d (pid %s) exited with status %s; starting it again in %g s",
                      worker.index, worker.process.pid if worker.process else "?", code, delay)
            await asyncio.sleep(delay)
            worker.restarts += 1
            worker.ready = asyncio.get_running_loop().create_future()

    async def _run_worker(self, worker: Worker) -> int | None:
        ours, theirs = socket.socketpair()
        host, port = self._address
        argv = [sys.executable, "-m", "fleetspec.router", "serve", "--config", str(self.config_path),
                "--host", host, "--port", str(port), "--log-level", self.log_level,
                "--control-fd", str(theirs.fileno()), "--process-index", str(worker.index),
                *self.limits.per_process(self.processes).arguments()]
        try:
            worker.process = await asyncio.create_subprocess_exec(*argv, pass_fds=(theirs.fileno(),))
        finally:
            theirs.close()
        worker.started_at, worker.config_hash, worker.report = time.monotonic(), None, None
        worker.channel = await control.Channel.over(ours)
        listening = asyncio.create_task(self._listen(worker))
        try:
            await self._configure(worker)
            await listening
        except (control.ChannelClosed, TimeoutError, StartupFailed) as exc:
            log.warning("serving process %d: %s", worker.index, exc or exc.__class__.__name__)
        finally:
            listening.cancel()
            worker.channel.close()
            worker.channel = None
            if worker.process.returncode is None:
                await _stop(worker.process)
        return worker.process.returncode

    async def _configure(self, worker: Worker) -> None:
        worker.channel.send({"op": "overrides", "items": self._override_items()})
        answer = await worker.channel.ask(self._config_message(), CONFIG_TIMEOUT_S)
        if "error" in answer:
            raise StartupFailed(f"it could not use the router config: {answer['error']}")
        worker.config_hash = answer["config_hash"]

    async def _listen(self, worker: Worker) -> None:
        """Handle what one serving process sends, until its channel closes."""
        while True:
            message = await worker.channel.receive()
            op = message.get("op")
            if op == "ready":
                if not worker.ready.done():
                    worker.ready.set_result(message.get("pid"))
                log.debug("serving process %d (pid %s) listens", worker.index, message.get("pid"))
            elif op == "down":
                self._replica_down(message)
            elif op == "lost":
                replica = self.upstreams.replicas.get(message.get("url"))
                if replica is not None and message.get("served") in replica.models:
                    self._lost(replica, message["served"])
                    self._replicas_changed()
            elif op == "gaps":
                gap_log = gaplog.for_router(self)
                if gap_log is not None:
                    for line in message.get("lines", ()):
                        gap_log.record(line.encode("utf-8", "surrogatepass"))
            elif op in ("load", "http"):
                self._spawn(self._answer(worker, message))
            else:
                log.warning("ignoring a control message this router version does not know (%s)", op)

    def _spawn(self, coroutine) -> None:
        task = asyncio.create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _answer(self, worker: Worker, message: dict) -> None:
        channel = worker.channel
        try:
            body = await (self._load_for(message) if message["op"] == "load" else self._http_for(message))
        except Exception as exc:  # noqa: BLE001 - a failure answers this one request, never stops the coordinator
            log.error("answering serving process %d's %s failed (%s: %s)", worker.index, message.get("op"),
                      exc.__class__.__name__, exc)
            log.debug("the failure in full", exc_info=True)
            body = {"failed": "the router's coordinator failed to load it; its log says why", "retry_in": None} \
                if message.get("op") == "load" else _error_reply(500, "The router failed to answer this request; "
                                                                      "its log says why.")
        if channel is not None and channel is worker.channel:
            channel.reply(message, body)
            with contextlib.suppress(control.ChannelClosed):
                await channel.drain()

    def _replica_down(self, message: dict) -> None:
        replica = self.upstreams.replicas.get(message.get("url"))
        if replica is not None and replica.healthy is not False:
            self.upstreams.mark_down(replica, str(message.get("reason") or "a serving process could not connect"))
            self._replicas_changed()

    # -- what every process must agree on ------------------------------------------------------------

    def _config_message(self) -> dict:
        return {"op": "config", "document": self.document, "replicas": self._replica_items()}

    def _replica_items(self) -> list[dict]:
        return [{"upstream": r.upstream.to_json(), "healthy": r.healthy, "models": sorted(r.models),
                 "adapters": sorted(r.adapters), "last_error": r.last_error}
                for r in self.upstreams.replicas.values()]

    def _override_items(self) -> list[dict]:
        return [dataclasses.asdict(o) for o in self.runtime.overrides.values()]

    def _attached(self) -> list[Worker]:
        """Processes with an open channel, listening or not yet: a change goes to each, in order, so
        one that is still starting takes it right after its config."""
        return [w for w in self.workers if w.channel is not None]

    def _broadcast(self, message: dict) -> None:
        for worker in self._attached():
            worker.channel.send(message)

    async def _adopt(self, document, fresh, pods) -> None:
        """Every serving process takes the new config before this process answers by it."""
        self.document = document
        message = {"op": "config", "document": document, "replicas": self._replica_items()}
        attached = self._attached()
        results = await asyncio.gather(*(w.channel.ask(message, CONFIG_TIMEOUT_S) for w in attached),
                                       return_exceptions=True)
        for worker, answer in zip(attached, results, strict=True):
            if isinstance(answer, dict) and "config_hash" in answer:
                worker.config_hash = answer["config_hash"]
                continue
            # It parsed what this process parsed, so this is a bug or a dead process: start it afresh
            # rather than let it route by the old table.
            log.error("serving process %d did not take the new config (%s); restarting it", worker.index,
                      answer.get("error") if isinstance(answer, dict) else answer.__class__.__name__)
            if worker.process is not None and worker.process.returncode is None:
                worker.process.kill()
        self._install(fresh, pods)
        self._sent_replicas = None

    def _runtime_changed(self) -> None:
        super()._runtime_changed()
        self._broadcast({"op": "overrides", "items": self._override_items()})

    def _health_changed(self, replica) -> None:
        super()._health_changed(replica)
        self._replicas_changed()

    def _replicas_changed(self) -> None:
        """Send the replicas' health and adapters once per loop turn, and only when they changed."""
        if self._replicas_pending or not self._serving:
            return
        self._replicas_pending = True
        asyncio.get_running_loop().call_soon(self._send_replicas)

    def _send_replicas(self, force: bool = False) -> None:
        self._replicas_pending = False
        items = self._replica_items()
        data = json.dumps(items, separators=(",", ":")).encode()
        if data == self._sent_replicas and not force:
            return
        self._sent_replicas = data
        self._broadcast({"op": "replicas", "replicas": items})

    async def _barrier(self) -> None:
        """Return once every live serving process has applied everything sent to it so far."""
        await asyncio.gather(*(w.channel.ask({"op": "ping"}, PING_TIMEOUT_S) for w in self._attached()),
                             return_exceptions=True)

    # -- totals --------------------------------------------------------------------------------------

    async def _gather(self) -> None:
        """Ask every serving process what only it knows: requests in flight, counters, adapter use."""
        live = self._attached()
        answers = await asyncio.gather(*(w.channel.ask({"op": "report"}, REPORT_TIMEOUT_S) for w in live),
                                       return_exceptions=True)
        stats = admin.Stats()
        stats.absorb(self.retired_stats.snapshot())
        inflight: dict[str, int] = {}
        busy: dict[str, dict[str, int]] = {}
        used: dict[tuple[str, str], float] = {}
        for worker, answer in zip(live, answers, strict=True):
            if not isinstance(answer, dict):
                log.warning("serving process %d did not report within %g s; its last report counts",
                            worker.index, REPORT_TIMEOUT_S)
                answer = worker.report
                if answer is None:
                    continue
            worker.report = answer
            stats.absorb(answer["stats"])
            for url, n in answer["inflight"].items():
                inflight[url] = inflight.get(url, 0) + n
            for url, served in answer["busy"].items():
                row = busy.setdefault(url, {})
                for name, n in served.items():
                    row[name] = row.get(name, 0) + n
            for url, name, at in answer["used"]:
                used[(url, name)] = max(used.get((url, name), 0.0), at)
        self.stats = stats
        for replica in self.upstreams.replicas.values():
            url = replica.upstream.url
            replica.inflight = inflight.get(url, 0)
            replica.busy.clear()
            replica.busy.update(busy.get(url, {}))
        # The least recently used first: the order the loader evicts in (its records keep insertion order).
        warmed = self.runtime.warmed
        for key in sorted(warmed, key=lambda k: used.get(k, 0.0)):
            warmed[key] = warmed.pop(key)

    def _retire(self, worker: Worker) -> None:
        """A serving process exited: keep its last counts in the totals (its in-flight requests went with it)."""
        if worker.report is not None:
            self.retired_metrics.absorb({name: rows for name, rows in worker.report["metrics"].items()
                                         if name not in ("connections", "body_bytes")})
            self.retired_stats.absorb(worker.report["stats"])
            worker.report = None

    def totals(self) -> metrics.RouterMetrics:
        total = metrics.RouterMetrics()
        total.absorb(self.metrics.snapshot())
        total.absorb(self.retired_metrics.snapshot(metrics.SERVING_FAMILIES))
        for worker in self._attached():
            if worker.report is not None:
                total.absorb(worker.report["metrics"])
        return total

    def _health(self) -> dict:
        out = super()._health()
        rows = [{"index": w.index, "pid": w.process.pid if w.process else None, "live": w.live,
                 "config_hash": w.config_hash, "restarts": w.restarts,
                 "connections": (w.report or {}).get("connections"),
                 "requests": ((w.report or {}).get("stats") or {}).get("requests")} for w in self.workers]
        # The config every process routes by; None while any has not confirmed it (apply waits on this).
        out["config_hash"] = self.config.hash if all(r["live"] and r["config_hash"] == self.config.hash
                                                      for r in rows) else None
        out["processes"] = rows
        return out

    # -- answering for the serving processes ---------------------------------------------------------

    async def _http_for(self, message: dict) -> dict:
        request = httpio.Request(message["method"], message["target"], dict(message["headers"]),
                                 message["body"].encode("latin-1"), bool(message["keep_alive"]),
                                 tuple(message["version"]))
        client = _Captured(request)
        await self._gather()
        keep = await self._operate(request, client)
        if request.method == "POST" and request.path.startswith("/admin/"):
            self._send_replicas()
            await self._barrier()  # the answer means: every process routes by this change
        return {"data": client.data.decode("latin-1"), "keep": bool(keep) and not client.must_close}

    async def _load_for(self, message: dict) -> dict:
        replica = self.upstreams.replicas.get(message["url"])
        served = message["served"]
        if replica is None:
            return {"failed": f"{message['url']} is no longer one of the router's engines", "retry_in": None}
        failed = await self.loader.ensure(replica, message["specialist"], message["version"], served,
                                          message["path"], int(message["capacity"]), float(message["timeout"]))
        if failed is None:
            self._send_replicas()  # the process that asked sees the adapter before its answer
        retry = ondemand.RETRY_AFTER_FAILURE_S if failed and self.loader.failure(replica, served) else None
        return {"failed": failed, "retry_in": retry}

    async def _stop_all(self) -> None:
        for worker in self.workers:
            if worker.channel is not None:
                worker.channel.close()
        await asyncio.gather(*(_stop(w.process) for w in self.workers if w.process is not None),
                             return_exceptions=True)


def _error_reply(status: int, message: str) -> dict:
    body = json.dumps({"error": {"message": message, "code": status}}).encode()
    head = httpio.response_head(status, [("Content-Type", "application/json"), ("Content-Length", str(len(body))),
                                         ("Connection", "close")])
    return {"data": (head + body).decode("latin-1"), "keep": False}


def _probe(host: str, port: int) -> None:
    """Fail now, with the OS's reason, when something else holds the port: the serving processes
    bind with SO_REUSEPORT, which another router with that option set would silently share."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the listeners will: TIME_WAIT is no owner
        probe.bind((host, port))


async def _stop(process: asyncio.subprocess.Process) -> None:
    if process.returncode is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        process.send_signal(signal.SIGTERM)
    try:
        async with asyncio.timeout(STOP_TIMEOUT_S):
            await process.wait()
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            process.kill()
        await process.wait()


