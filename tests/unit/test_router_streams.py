"""The router's byte streams (fleetspec/router/streams.py) over real loopback sockets: reads that
find their bytes buffered, deadlines kept by one lazily re-armed timer, the end of a stream, the
line limit, and writes that wait only while the peer does not read."""

from __future__ import annotations

import asyncio
import socket
import time

import pytest

from fleetspec.router import streams


async def _pair(limit: int = 1024) -> tuple[streams.Stream, socket.socket, asyncio.Server]:
    """A Stream accepted by a server, and the raw client socket on the other end."""
    accepted: asyncio.Future = asyncio.get_running_loop().create_future()

    async def handler(stream: streams.Stream) -> None:
        accepted.set_result(stream)

    server = await streams.start_server(handler, "127.0.0.1", 0, limit=limit)
    port = server.sockets[0].getsockname()[1]
    client = socket.create_connection(("127.0.0.1", port))
    client.setblocking(False)
    return await asyncio.wait_for(accepted, 5), client, server


def run(coroutine):
    return asyncio.run(coroutine)


def test_reads_take_what_is_buffered_and_wait_for_the_rest():
    async def main():
        stream, client, server = await _pair()
        loop = asyncio.get_running_loop()
        client.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\nBODY")
        assert await stream.read_until(b"\r\n\r\n", loop.time() + 5) == b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"
        loop.call_later(0.05, client.send, b"MORE")
        assert await stream.read_exactly(8, loop.time() + 5) == b"BODYMORE"
        client.close()
        assert await stream.read(10, loop.time() + 5) == b""
        assert stream.at_eof()
        server.close()

    run(main())


def test_a_deadline_is_kept_even_when_an_earlier_timer_was_armed():
    async def main():
        stream, client, server = await _pair()
        loop = asyncio.get_running_loop()
        with pytest.raises(TimeoutError):
            await stream.read_exactly(1, loop.time() + 0.05)
        # The timer re-arms itself for a later deadline: the read waits until then, no longer.
        started = time.monotonic()
        with pytest.raises(TimeoutError):
            await stream.read_exactly(1, loop.time() + 0.3)
        assert 0.25 < time.monotonic() - started < 2.0
        # A read with time left gets its bytes, and a stale timer firing later harms nothing.
        loop.call_later(0.05, client.send, b"x")
        assert await stream.read_exactly(1, loop.time() + 5) == b"x"
        await asyncio.sleep(0.1)
        client.close()
        server.close()

    run(main())


def test_an_early_end_and_a_long_line_are_the_errors_streamreader_raises():
    async def main():
        stream, client, server = await _pair(limit=64)
        loop = asyncio.get_running_loop()
        client.send(b"x" * 100)
        with pytest.raises(asyncio.LimitOverrunError):
            await stream.read_until(b"\r\n", loop.time() + 5)
        stream.buffer.clear()
        client.send(b"partial")
        client.close()
        with pytest.raises(asyncio.IncompleteReadError) as caught:
            await stream.read_exactly(100, loop.time() + 5)
        assert caught.value.partial == b"partial"
        server.close()

    run(main())


def test_reading_pauses_while_the_reader_is_far_behind_and_resumes_when_it_reads():
    async def main():
        stream, client, server = await _pair(limit=1024)
        loop = asyncio.get_running_loop()
        payload = b"y" * (64 * 1024)
        sent = 0
        deadline = time.monotonic() + 5
        while sent < len(payload) and time.monotonic() < deadline:
            try:
                sent += client.send(payload[sent:])
            except BlockingIOError:
                await asyncio.sleep(0.01)
        assert sent == len(payload)
        assert await stream.read_exactly(len(payload), loop.time() + 5) == payload
        client.close()
        server.close()

    run(main())


def test_drain_waits_only_while_the_peer_does_not_read_and_times_out():
    async def main():
        stream, client, server = await _pair()
        await stream.drain(1.0)  # nothing queued: returns at once
        client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        stream.transport.set_write_buffer_limits(high=16 * 1024)
        started = time.monotonic()
        with pytest.raises(TimeoutError):
            for _ in range(1000):
                stream.write(b"z" * 65536)
                await stream.drain(0.2)
        assert time.monotonic() - started < 3.0
        client.close()
        await asyncio.sleep(0.05)
        with pytest.raises(ConnectionResetError):
            for _ in range(100):
                stream.write(b"z")
                await stream.drain(0.2)
                await asyncio.sleep(0.01)
        server.close()

    run(main())
