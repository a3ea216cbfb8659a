"""The router's fast path: the ordinary request, answered from the connections' callbacks.

Nearly every request a fleet's router sees is alike: a small JSON chat or completion request that
arrives whole in one read, for an adapter some replica already holds, which the engine answers with
a small body of known length. For that request, a coroutine per step (read the request, send it,
read the answer, write it) costs more than the work itself (measured: docs/benchmarks.md, "Router
HTTP front"), so here the steps are plain calls made from the Protocol callbacks: the client's bytes
arrive, are parsed, decided and sent on an idle pooled engine connection; the engine's bytes arrive,
are parsed and written to the client. No task, no future, and no timer per request (one per
connection keeps its deadlines).

Everything else goes to the router's coroutine path (`Router.serve_connection`), from the point the
fast path reached: a head or body still to come, pipelined requests, Expect, chunked bodies, HTTP/1.0,
Connection: close, any path but the two completion endpoints, a missing API key, a body that is not a
JSON object, a rejection or fallback, an adapter to load, no idle engine connection, and, once sent,
any answer that is not a small one, whole in the buffer, with status below 500 (404 included: it may
mean the engine lost the adapter). Both paths use the same parser (httpio/httpwire), table, placement, bookkeeping
and answer headers, so a request is answered the same whichever path answers it, and the strictness
of one is the strictness of the other: the fast path answers only what the strict parser accepted,
and leaves every refusal, and its wording, to the coroutine path. A request handed over after the
table decided it is decided again there (its decision time is observed twice); nothing else is
done twice.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import math
import time

from fleetspec.router import answer, gaplog, httpio, httpjson, openai, streams, upstreams
from fleetspec.router.httpwire import ProtocolError
from fleetspec.routing import table

CHAT, COMPLETIONS = "/v1/chat/completions", "/v1/completions"
# Larger request bodies are rare and worth no special care; the coroutine path writes them in slices.
MAX_BODY = 256 * 1024
# Larger answers stream through the coroutine path, piece by piece (the same bound as its one-write answers).
MAX_ANSWER = 256 * 1024
_EARLY_S = 0.001  # a timer that fires this much before its deadline counts as on time

# How requests were answered (the `outcome` of fleetspec_router_fast_path_total).
ANSWERED = "answered"  # here, from the callbacks
UNUSUAL_REQUEST = "unusual-request"  # not one whole small JSON completion request with its key, on HTTP/1.1
UNUSUAL_ROUTE = "unusual-route"  # rejected, out of scope, or for the embedding tier
NOT_RESIDENT = "not-resident"  # no replica holds the adapter (a load, or a fallback, decides)
NO_IDLE_CONNECTION = "no-idle-connection"  # no idle keep-alive connection to the chosen replica
UNUSUAL_ANSWER = "unusual-answer"  # sent, but the answer was not small, whole and below 500 (or was a 404)
IDLE = "idle"  # nothing begun: a connection over the limit, or pipelined bytes (not counted)


@dataclasses.dataclass(eq=False)
class Sent:
    """A request the fast path decided, claimed a replica for and sent, handed over while its
    answer is awaited: what the coroutine path needs to go on as if it had sent it."""

    body: dict
    prompt: str
    model: str | None
    config: object
    routing: table.RoutingTable
    decision: table.Decision  # as the table made it: the fast path takes no fallback
    replica: upstreams.Replica
    conn: httpio.Connection
    deadline: float  # loop time by which the answer's head must have arrived
    started: float  # perf_counter when the request was read
    head: httpio.ResponseHead | None = None  # the answer's head, when it was read here (and taken off the buffer)


class ClientConnection(streams.Stream):
    """One client connection: answered here while its requests are ordinary, by the coroutine path
    from the first one that is not (and from then on)."""

    def __init__(self, router, limit: int):
        super().__init__(limit)
        self.router = router
        self.handed_over = False  # the coroutine path answers the connection until it gives it back
        self.counted = False  # counted in router.connections (and uncounted when it closes)
        self.exchange: _Exchange | None = None  # the request being answered here
        self._idle_at = math.inf
        # Named apart from streams.Stream's own read timer, which the coroutine path uses once handed over.
        self._deadline_timer: asyncio.TimerHandle | None = None
        self._deadline_at = math.inf

    # -- asyncio.Protocol ---------------------------------------------------------------------------

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        router = self.router
        if router.connections >= router.limits.max_connections:
            self.hand_over(IDLE)  # which refuses it, saying why
            return
        router.connections += 1
        self.counted = True
        self._wait_idle()

    def data_received(self, data: bytes) -> None:
        if self.handed_over or self.exchange is not None:
            super().data_received(data)  # buffered for the coroutine path, or for after this answer
            return
        self.buffer += data
        self._answer_next()

    def eof_received(self) -> bool:
        keep = super().eof_received()
        if not self.handed_over and self.exchange is None:
            self.close()  # between requests: the normal end of keep-alive
        return keep

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        self._stop_deadlines()
        if not self.handed_over and self.counted:
            self.counted = False
            self.router.connections -= 1

    # -- requests -----------------------------------------------------------------------------------

    def hand_over(self, why: str, first=None) -> None:
        """Let the coroutine path answer this connection, starting with `first` (a request and what
        answers it) when the fast path had begun one, until it gives the connection back. `why`
        counts the hand-over (fleetspec_router_fast_path_total), so an operator sees which requests
        miss the fast path; "idle" hand-overs (nothing begun) are not counted."""
        if why != IDLE:
            self.router.metrics.fast_path.inc(why)
        self.handed_over = True
        self._stop_deadlines()
        self._loop.create_task(self.router.serve_connection(self, counted=self.counted, first=first,
                                                            take_back=self._take_back if self.counted else None))

    def _take_back(self) -> bool:
        """Between two requests on the coroutine path: answer the connection here again, unless bytes
        of the next request are already here, or the client has finished, or is not reading."""
        if self.buffer or self.ended or self.write_paused or self.is_closing():
            return False
        self.handed_over = False
        self._wait_idle()
        return True

    def _answer_next(self) -> None:
        """Answer the request buffered now, here when it is an ordinary one."""
        request = self._whole_request()
        if request is None:
            self.hand_over(UNUSUAL_REQUEST)
            return
        router = self.router
        if not router.client_authorized(request):
            self.hand_over(UNUSUAL_REQUEST, (request, router.dispatch))
            return
        started = time.perf_counter()
        try:
            body = httpjson.loads(request.body, router.limits.max_json_depth)
        except ValueError:
            body = None
        if not isinstance(body, dict):
            self.hand_over(UNUSUAL_REQUEST, (request, router.dispatch))
            return
        model = body.get("model")
        model = model if isinstance(model, str) else None
        prompt = openai.prompt_text(body, request.target == CHAT)
        config, routing = router.config, router.table
        wanted, extensions, _ = router.route_request(request, routing, prompt, model)
        if wanted.rejected or routing.wants_embedding(wanted) or (
                wanted.specialist is not None and not config.hosts(wanted.specialist)):
            self.hand_over(UNUSUAL_ROUTE, (request, router.dispatch))
            return
        replica = router.resident_replica(wanted, config)
        if replica is None:
            self.hand_over(NOT_RESIDENT, (request, router.dispatch))
            return
        conn = router.pool.idle(replica.address)
        if conn is None:
            self.hand_over(NO_IDLE_CONNECTION, (request, router.dispatch))
            return
        # From here on the request is this path's: recorded once, and handed over only as sent.
        gaplog.record(router, wanted, prompt, extensions)
        if wanted.specialist is not None:
            router.metrics.adapter_cache.inc(replica.server, str(replica.upstream.replica), "hit")
        payload = router.claim(replica, wanted.served_name, body)
        deadline = self._loop.time() + router.limits.upstream_first_byte_s
        sent = Sent(body, prompt, model, config, routing, wanted, replica, conn, deadline, started)
        self.exchange = _Exchange(self, request, sent)
        self._arm(deadline)
        conn.stream.write(router.upstream_head(replica, request, len(payload)) + payload)

    def _whole_request(self) -> httpio.Request | None:
        """The request in the buffer when it is exactly one whole ordinary one (then taken off the
        buffer, its body reserved from the router's budget); None when it is anything else."""
        buffer = self.buffer
        end = buffer.find(b"\r\n\r\n")
        if end <= 0 or end > self.limit:
            return None
        try:
            request, framing = httpio.parse_request_head(bytes(buffer[:end]))
        except ProtocolError:
            return None
        length = framing.length
        if (request.method != "POST" or request.target not in (CHAT, COMPLETIONS) or request.version != (1, 1)
                or not request.keep_alive or length is None or length > MAX_BODY or "expect" in request.headers
                or len(buffer) != end + 4 + length):
            return None
        if not self.router.budget.reserve(length):
            return None
        request.body, request.held = bytes(buffer[end + 4:]), length
        buffer.clear()
        return request

    def answered(self, request: httpio.Request) -> None:
        """The fast path's answer to `request` is written: wait for the next one."""
        self.exchange = None
        self.router.budget.release(request.held)
        if self.is_closing():
            return
        if self.ended and not self.buffer:
            self.close()
        elif self.buffer or self.write_paused:
            self.hand_over(IDLE)  # pipelined requests, or a client that is not reading its answers
        else:
            self._wait_idle()

    def handed_over_sent(self, request: httpio.Request, sent: Sent) -> None:
        self.exchange = None
        self.hand_over(UNUSUAL_ANSWER, (request, functools.partial(self.router.resume, sent=sent)))

    def write_answer(self, data: bytes) -> None:
        if not self.is_closing():
            self.transport.write(data)

    # -- deadlines ----------------------------------------------------------------------------------

    def _wait_idle(self) -> None:
        """Close the connection if no request starts within the idle timeout."""
        self._idle_at = self._loop.time() + self.router.limits.idle_timeout_s
        self._arm(self._idle_at)

    def _arm(self, deadline: float) -> None:
        """One timer per connection keeps both of its deadlines (the wait for the next request, and
        the engine's first byte), armed lazily: a later deadline leaves an earlier timer in place,
        which re-arms itself for the deadline of the moment when it fires. So a request costs no
        timer of its own, only a few a minute per connection."""
        if deadline < self._deadline_at:
            if self._deadline_timer is not None:
                self._deadline_timer.cancel()
            self._deadline_timer, self._deadline_at = self._loop.call_at(deadline, self._on_deadline), deadline

    def _on_deadline(self) -> None:
        self._deadline_timer, self._deadline_at = None, math.inf
        if self.handed_over or self.is_closing():
            return
        exchange = self.exchange
        deadline = exchange.sent.deadline if exchange is not None else self._idle_at
        if self._loop.time() + _EARLY_S < deadline:
            self._arm(deadline)
        elif exchange is not None:
            exchange.hand_over()  # the coroutine path finds the deadline passed: 504
        else:
            self.close()  # idle keep-alive connection: closed without a word, as servers do

    def _stop_deadlines(self) -> None:
        if self._deadline_timer is not None:
            self._deadline_timer.cancel()
        self._deadline_timer, self._deadline_at = None, math.inf


class _Exchange:
    """One request sent to an engine from the fast path, until its answer is written to the client
    or the request is handed over."""

    __slots__ = ("client", "request", "sent")

    def __init__(self, client: ClientConnection, request: httpio.Request, sent: Sent):
        self.client, self.request, self.sent = client, request, sent
        sent.conn.stream.listener = self.engine_spoke

    def engine_spoke(self) -> None:
        """Bytes, the end or a loss on the engine connection: answer when the whole answer is here."""
        sent = self.sent
        stream = sent.conn.stream
        buffer = stream.buffer
        end = buffer.find(b"\r\n\r\n")
        if end < 0 or end + 4 > stream.limit:
            if stream.ended or len(buffer) > stream.limit:
                self.hand_over()  # closed before a whole head, or a head over the limit: answered there
            return
        try:
            head = httpio.parse_response_head(bytes(buffer[:end]), "POST")
        except ProtocolError:
            head = None
        if head is None:
            self.hand_over()  # malformed, or an interim 1xx: read again there, which words the 502 or skips it
            return
        total = end + 4 + (head.length or 0)
        if (head.status >= 500 or head.status in (204, 304) or head.length is None or head.length > MAX_ANSWER
                or (head.status == 404 and sent.decision.specialist is not None) or len(buffer) < total):
            # Failed, bodiless, streamed, large, perhaps a lost adapter, or a body still to come (which
            # the coroutine path reads under --upstream-idle-s). It goes on from the body: the head
            # is not read twice.
            del buffer[:end + 4]
            sent.head = head
            self.hand_over()
            return
        data = bytes(buffer[end + 4:total])
        del buffer[:total]
        self._release_engine()
        router, replica, decision = self.client.router, sent.replica, sent.decision
        router.unclaim(replica, decision.served_name)
        if head.keep_alive:
            router.pool.release(sent.conn)
        else:
            sent.conn.close()
        fields = answer.headers(head, decision)
        fields.append(("Content-Length", str(len(data))))
        self.client.write_answer(httpio.response_head(head.status, fields) + data)
        router.finish(decision, head.status, True, sent.started)
        router.metrics.fast_path.inc(ANSWERED)
        self.client.answered(self.request)

    def hand_over(self) -> None:
        """The coroutine path takes the request from here: the answer's head is awaited on the same
        connection, by the same deadline, with the replica still claimed."""
        self._release_engine()
        self.client.handed_over_sent(self.request, self.sent)

    def _release_engine(self) -> None:
        self.sent.conn.stream.listener = None


async def start_server(router, host: str, port: int, *, backlog: int = 1024, reuse_port: bool = False
                       ) -> asyncio.Server:
    """The router's listening socket: each client connection a ClientConnection, or, with the fast
    path switched off (router.fast_path), answered on the coroutine path alone."""
    limit = router.limits.max_head_bytes
    if not router.fast_path:
        return await streams.start_server(router.serve_connection, host, port, limit=limit, backlog=backlog,
                                          reuse_port=reuse_port)
    loop = asyncio.get_running_loop()
    return await loop.create_server(lambda: ClientConnection(router, limit), host, port, backlog=backlog,
                                    reuse_port=reuse_port or None)
