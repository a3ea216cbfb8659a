"""A small Redis client over asyncio streams: RESP2, just what the router's shared state needs.

Why not the `redis` package: the router depends on nothing beyond the standard library (see
`httpio`), and it needs a handful of commands (AUTH, SELECT, HGETALL, HSET, DEL, PUBLISH,
SUBSCRIBE, PING). RESP2 is a few lines: every command is an array of bulk strings; replies are
`+simple`, `-error`, `:integer`, `$bulk` (`$-1`: nil) and `*array` (`*-1`: nil), each line ending
in CRLF (https://redis.io/docs/latest/develop/reference/protocol-spec/).

Addresses and URLs (`redis://`, `rediss://`) are parsed by `fleetspec.routing.redis_url`.
"""

from __future__ import annotations

import asyncio
import ssl

from fleetspec.routing import redis_url

MAX_BULK_BYTES = 512 * 1024 * 1024  # Redis's own proto-max-bulk-len default


class RedisError(Exception):
    """Redis answered with an error reply (`-WRONGPASS ...`, `-ERR ...`)."""


class Unavailable(Exception):
    """Redis could not be reached, or the connection broke before the answer came."""


def encode(*args: str | bytes | int | float) -> bytes:
    """One command as a RESP array of bulk strings."""
    out = [b"*%d\r\n" % len(args)]
    for arg in args:
        data = arg if isinstance(arg, bytes) else str(arg).encode()
        out.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(out)


async def read_reply(reader: asyncio.StreamReader):
    """The next reply: str (simple), int, bytes or None (bulk), list or None (array). An error
    reply is returned as a RedisError instance, not raised, so pipelines keep their order."""
    line = await reader.readuntil(b"\r\n")
    kind, rest = line[:1], line[1:-2]
    if kind == b"+":
        return rest.decode()
    if kind == b"-":
        return RedisError(rest.decode(errors="replace"))
    if kind == b":":
        return int(rest)
    if kind == b"$":
        size = int(rest)
        if size < 0:
            return None
        if size > MAX_BULK_BYTES:
            raise Unavailable(f"Redis sent a {size}-byte value, larger than any Redis may hold")
        return (await reader.readexactly(size + 2))[:-2]
    if kind == b"*":
        count = int(rest)
        return None if count < 0 else [await read_reply(reader) for _ in range(count)]
    raise Unavailable(f"Redis sent a reply this client does not understand: {line[:40]!r}")


class Connection:
    """One connection; calls on it are serialized, since replies come back in order."""

    def __init__(self, address: redis_url.Address, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self.address = address
        self.reader, self.writer = reader, writer
        self._lock = asyncio.Lock()

    @classmethod
    async def open(cls, address: redis_url.Address, timeout: float = 2.0) -> Connection:
        """Connected, authenticated and on the right database, or Unavailable / RedisError."""
        context = ssl.create_default_context() if address.tls else None
        try:
            async with asyncio.timeout(timeout):
                reader, writer = await asyncio.open_connection(address.host, address.port, ssl=context)
        except (OSError, TimeoutError) as exc:
            raise Unavailable(f"cannot connect to {address.display()} ({_why(exc)})") from None
        conn = cls(address, reader, writer)
        setup = []
        if address.password is not None:
            setup.append(("AUTH", address.username, address.password) if address.username else ("AUTH", address.password))
        if address.db:
            setup.append(("SELECT", address.db))
        if setup:
            try:
                for reply in await conn.pipeline(setup, timeout):
                    if isinstance(reply, RedisError):
                        raise reply
            except BaseException:
                conn.close()
                raise
        return conn

    async def call(self, *args, timeout: float = 2.0):
        """One command's reply; an error reply is raised as RedisError."""
        (reply,) = await self.pipeline([args], timeout)
        if isinstance(reply, RedisError):
            raise reply
        return reply

    async def pipeline(self, commands: list[tuple], timeout: float = 2.0) -> list:
        """Send several commands at once, then read their replies (errors as RedisError values)."""
        async with self._lock:
            try:
                async with asyncio.timeout(timeout):
                    self.writer.write(b"".join(encode(*c) for c in commands))
                    await self.writer.drain()
                    return [await read_reply(self.reader) for _ in commands]
            except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError, TimeoutError) as exc:
                self.close()  # the stream's position is unknown now: never reuse it
                raise Unavailable(f"{self.address.display()} stopped answering ({_why(exc)})") from None

    async def send(self, *args) -> None:
        """Write a command without waiting for its reply (subscriptions read theirs as messages)."""
        try:
            self.writer.write(encode(*args))
            await self.writer.drain()
        except OSError as exc:
            self.close()
            raise Unavailable(f"{self.address.display()} stopped answering ({_why(exc)})") from None

    async def receive(self):
        """The next reply or pushed message, however long it takes. Callers that also want to do
        something meanwhile keep this in a task, so a half-read message is never abandoned."""
        try:
            return await read_reply(self.reader)
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError) as exc:
            self.close()
            raise Unavailable(f"{self.address.display()} stopped answering ({_why(exc)})") from None

    @property
    def closed(self) -> bool:
        return self.writer.is_closing()

    def close(self) -> None:
        self.writer.close()


def _why(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "timed out"
    if isinstance(exc, asyncio.IncompleteReadError):
        return "the connection closed"
    return getattr(exc, "strerror", None) or str(exc) or exc.__class__.__name__
