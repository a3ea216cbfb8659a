"""Byte streams over asyncio Protocols, where every read and drain takes a deadline: the router's
one way to read and write a socket, towards clients and towards engines.

Why not asyncio's StreamReader/StreamWriter under `asyncio.timeout`: measured side by side
(bench/bench_router_wrk.py, docs/benchmarks.md), one `asyncio.timeout` block around each read
cost more than parsing the request (Python 3.11: a timer handle, a context manager and the task's
cancel bookkeeping, each time), and a proxied request reads four times. Here a read that finds its
bytes already buffered (the common case: a small request or answer arrives in one segment) costs
no timer at all, and a read that has to wait shares one timer per stream, armed lazily: a later
deadline leaves an earlier timer in place, which re-arms itself for the real deadline when it fires.

The reading side mirrors StreamReader (the same exceptions: IncompleteReadError at an early end,
LimitOverrunError past `limit`, and TimeoutError at the deadline); writing goes straight to the
transport, and `drain` waits only while the transport has asked the writer to pause.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Awaitable, Callable

# A timer that fires this much before the deadline (the loop's clock granularity) counts as on time.
_EARLY_S = 0.001


class Stream(asyncio.Protocol):
    """One TCP connection: bytes received and not yet read in `buffer`, writes to the transport."""

    def __init__(self, limit: int = 64 * 1024):
        self.limit = limit  # longest line read_until accepts; reading pauses above twice this unread
        self.buffer = bytearray()
        self.transport: asyncio.Transport | None = None
        self._loop = asyncio.get_running_loop()
        self._eof = False
        self._lost = False
        self._paused = False  # reading paused: the reader is behind by more than 2 x limit
        self._write_paused = False
        self._waiter: asyncio.Future | None = None
        self._deadline: float | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = math.inf
        self._drain_waiter: asyncio.Future | None = None
        # Called instead of waking a reader when bytes, the end or a loss arrive: the router's fast
        # path reads an engine's answer from the callbacks, with no coroutine waiting (fastpath.py).
        self.listener: Callable[[], None] | None = None

    # -- asyncio.Protocol ---------------------------------------------------------------------------

    def connection_made(self, transport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        self._notify()
        if not self._paused and len(self.buffer) > 2 * self.limit:
            try:
                self.transport.pause_reading()
            except NotImplementedError:
                return
            self._paused = True

    def eof_received(self) -> bool:
        self._eof = True
        self._notify()
        return True  # keep the transport open: the answer to what was read still goes out

    def connection_lost(self, exc: Exception | None) -> None:
        self._eof = self._lost = True
        self._notify()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        waiter, self._drain_waiter = self._drain_waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_exception(ConnectionResetError("Connection lost"))

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        waiter, self._drain_waiter = self._drain_waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # -- reading ------------------------------------------------------------------------------------

    def at_eof(self) -> bool:
        return self._eof and not self.buffer

    @property
    def ended(self) -> bool:
        """The peer has finished sending, or the connection is gone; what it sent may still be buffered."""
        return self._eof

    @property
    def write_paused(self) -> bool:
        """The transport holds more than it wants: the peer is not reading as fast as it is written to."""
        return self._write_paused

    async def fill(self, deadline: float | None) -> bool:
        """Wait until some bytes are buffered (True) or the peer has finished sending (False)."""
        while not self.buffer:
            if self._eof:
                return False
            await self._wait(deadline)
        return True

    async def read_until(self, separator: bytes, deadline: float | None, limit: int | None = None) -> bytes:
        """Bytes up to and including `separator`. LimitOverrunError when it is not within `limit`."""
        limit = self.limit if limit is None else limit
        start = 0
        while True:
            found = self.buffer.find(separator, start)
            if found >= 0:
                end = found + len(separator)
                if end > limit:
                    raise asyncio.LimitOverrunError("separator found beyond the limit", found)
                return self._take(end)
            if len(self.buffer) > limit:
                raise asyncio.LimitOverrunError("separator not found within the limit", len(self.buffer))
            if self._eof:
                partial = self._take(len(self.buffer))
                raise asyncio.IncompleteReadError(partial, None)
            start = max(0, len(self.buffer) - len(separator) + 1)
            await self._wait(deadline)

    async def read_exactly(self, n: int, deadline: float | None) -> bytes:
        while len(self.buffer) < n:
            if self._eof:
                partial = self._take(len(self.buffer))
                raise asyncio.IncompleteReadError(partial, n)
            await self._wait(deadline)
        return self._take(n)

    async def read(self, n: int, deadline: float | None) -> bytes:
        """Up to `n` bytes as soon as any are here; b"" once the peer has finished sending."""
        if not self.buffer and not await self.fill(deadline):
            return b""
        return self._take(min(n, len(self.buffer)))

    def _take(self, n: int) -> bytes:
        if n == len(self.buffer):
            data = bytes(self.buffer)
            self.buffer.clear()
        else:
            data = bytes(self.buffer[:n])
            del self.buffer[:n]
        if self._paused and len(self.buffer) <= self.limit:
            self._paused = False
            self.transport.resume_reading()
        return data

    async def _wait(self, deadline: float | None) -> None:
        if self._paused:
            self._paused = False
            self.transport.resume_reading()
        waiter = self._loop.create_future()
        self._waiter, self._deadline = waiter, deadline
        if deadline is not None and deadline < self._timer_at:
            if self._timer is not None:
                self._timer.cancel()
            self._timer, self._timer_at = self._loop.call_at(deadline, self._on_timer), deadline
        try:
            await waiter
        finally:
            self._waiter = None

    def _on_timer(self) -> None:
        self._timer, self._timer_at = None, math.inf
        waiter, deadline = self._waiter, self._deadline
        if waiter is None or waiter.done() or deadline is None:
            return  # nobody waits, or without a deadline: the next wait arms what it needs
        if self._loop.time() + _EARLY_S >= deadline:
            waiter.set_exception(TimeoutError())
        else:  # armed for an earlier deadline than the one waited on now
            self._timer, self._timer_at = self._loop.call_at(deadline, self._on_timer), deadline

    def _notify(self) -> None:
        if self.listener is not None:
            self.listener()
        else:
            self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # -- writing ------------------------------------------------------------------------------------

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.transport.write(data)

    async def drain(self, timeout: float | None = None) -> None:
        """Return once the transport takes more; ConnectionResetError when the connection is gone,
        TimeoutError when the peer has not read for `timeout` seconds."""
        if self._lost or self.transport.is_closing():
            raise ConnectionResetError("Connection lost")
        if not self._write_paused:
            return
        waiter = self._drain_waiter = self._loop.create_future()
        handle = None if timeout is None else self._loop.call_later(timeout, _expire, waiter)
        try:
            await waiter
        finally:
            if handle is not None:
                handle.cancel()

    def write_buffer_size(self) -> int:
        return self.transport.get_write_buffer_size()

    def is_closing(self) -> bool:
        return self.transport is None or self.transport.is_closing()

    def can_write_eof(self) -> bool:
        return self.transport.can_write_eof()

    def write_eof(self) -> None:
        self.transport.write_eof()

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


def _expire(waiter: asyncio.Future) -> None:
    if not waiter.done():
        waiter.set_exception(TimeoutError())


class _Accepted(Stream):
    """A client connection a server accepted; its handler runs as a task from the first moment."""

    def __init__(self, handler: Callable[[Stream], Awaitable[None]], limit: int):
        super().__init__(limit)
        self._handler = handler
        self._task: asyncio.Task | None = None

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        self._task = self._loop.create_task(self._handler(self))


async def start_server(handler: Callable[[Stream], Awaitable[None]], host: str, port: int, *, limit: int,
                       backlog: int = 1024, reuse_port: bool = False) -> asyncio.Server:
    """A listening server that runs `handler(stream)` for each connection (asyncio.start_server's
    counterpart for Streams)."""
    loop = asyncio.get_running_loop()
    return await loop.create_server(lambda: _Accepted(handler, limit), host, port, backlog=backlog,
                                    reuse_port=reuse_port or None)


async def open_connection(host: str, port: int, *, limit: int, timeout: float) -> Stream:
    """A connection to host:port; OSError or TimeoutError when it cannot be made within `timeout`."""
    loop = asyncio.get_running_loop()
    _, stream = await asyncio.wait_for(loop.create_connection(lambda: Stream(limit), host, port), timeout)
    return stream
