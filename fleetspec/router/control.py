"""The wire between a multi-process router's coordinator and its serving processes: one local
socket pair per process, carrying JSON messages each framed by a 4-byte big-endian length.

Messages on one channel arrive in the order they were sent, and each side handles them one at a
time: a reply to a `ping` therefore proves that everything sent before it has been applied. That
ordering is what lets the coordinator answer an admin call only once every process routes by it.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import struct

MAX_MESSAGE_BYTES = 256 << 20  # a router config of 10,000 specialists is a few MiB; this is far past it
_LENGTH = struct.Struct(">I")


class ChannelClosed(Exception):
    """The other process closed its end (it exited, or is shutting down)."""


class Channel:
    """One end of a control connection: send messages, receive them, and ask questions that the
    other side answers with a `reply` carrying the same id."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self.reader, self.writer = reader, writer
        self._ids = itertools.count(1)
        self._waiting: dict[int, asyncio.Future] = {}

    @classmethod
    async def over(cls, sock) -> Channel:
        reader, writer = await asyncio.open_unix_connection(sock=sock, limit=1 << 20)
        return cls(reader, writer)

    def send(self, message: dict) -> None:
        data = json.dumps(message, separators=(",", ":")).encode()
        if len(data) > MAX_MESSAGE_BYTES:
            raise ValueError(f"a control message of {len(data) >> 20} MiB is past the {MAX_MESSAGE_BYTES >> 20} MiB cap")
        if not self.writer.is_closing():
            self.writer.write(_LENGTH.pack(len(data)) + data)

    async def drain(self) -> None:
        try:
            await self.writer.drain()
        except (ConnectionError, RuntimeError) as exc:
            raise ChannelClosed(str(exc)) from None

    async def receive(self) -> dict:
        """The next message that is not a reply (replies go to whoever asked); ChannelClosed at the end."""
        while True:
            try:
                size = _LENGTH.unpack(await self.reader.readexactly(_LENGTH.size))[0]
                if size > MAX_MESSAGE_BYTES:
                    raise ChannelClosed(f"a control message claims {size} bytes, past the cap")
                message = json.loads(await self.reader.readexactly(size))
            except (asyncio.IncompleteReadError, ConnectionError) as exc:
                self._fail_waiting()
                raise ChannelClosed(str(exc) or "the other end closed") from None
            if message.get("op") == "reply":
                future = self._waiting.pop(message.get("id"), None)
                if future is not None and not future.done():
                    future.set_result(message.get("body"))
                continue
            return message

    async def ask(self, message: dict, timeout: float) -> object:
        """Send `message` with a fresh id and wait (bounded) for the other side's reply body.
        TimeoutError when none comes in time, ChannelClosed when the channel ends first. The reply
        is read by this side's `receive` loop, which must be running (each side runs one)."""
        ident = next(self._ids)
        future = asyncio.get_running_loop().create_future()
        self._waiting[ident] = future
        try:
            self.send({**message, "id": ident})
            async with asyncio.timeout(timeout):
                return await future
        finally:
            self._waiting.pop(ident, None)

    def reply(self, request: dict, body: object) -> None:
        self.send({"op": "reply", "id": request.get("id"), "body": body})

    def close(self) -> None:
        self._fail_waiting()
        self.writer.close()

    def _fail_waiting(self) -> None:
        for future in self._waiting.values():
            if not future.done():
                future.set_exception(ChannelClosed("the other end closed"))
        self._waiting.clear()
