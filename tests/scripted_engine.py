"""An engine stand-in for protocol tests: it records every request that reaches it, byte for byte,
and answers as the request's prompt says (`mode:204`, `mode:stall-stream`...), so a test can make an
engine misbehave on cue and check exactly what the router let through.

It answers /health and /v1/models like vLLM, so the router's health checks keep it healthy.
"""

from __future__ import annotations

import dataclasses
import json
import re
import socket
import socketserver
import threading
import time

MODEL = "fleetspec/tiny-test-llama"
SSE_HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
FIRST_EVENT = b"9\r\ndata: 0\n\n\r\n"
_MODE = re.compile(r"mode:([a-z0-9-]+)")


@dataclasses.dataclass
class Seen:
    method: str
    path: str
    head: bytes  # the request line and headers exactly as they arrived
    headers: list[tuple[str, str]]
    body: bytes

    def header(self, name: str) -> list[str]:
        return [v for k, v in self.headers if k.lower() == name]


class ScriptedEngine:
    def __init__(self) -> None:
        self.seen: list[Seen] = []
        self.client_gone = threading.Event()  # set when a streamed answer could not be delivered
        self._lock = threading.Lock()
        engine = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                engine._serve(self.request)

        self._server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler, bind_and_activate=False)
        self._server.daemon_threads = True
        self._server.allow_reuse_address = True
        self._server.server_bind()
        self._server.server_activate()
        self.port = self._server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def proxied(self) -> list[Seen]:
        """Requests other than the router's health checks."""
        with self._lock:
            return [s for s in self.seen if s.path not in ("/health", "/v1/models")]

    def forget(self) -> None:
        with self._lock:
            self.seen.clear()
        self.client_gone.clear()

    # -- one connection ------------------------------------------------------------------------------

    def _serve(self, sock: socket.socket) -> None:
        sock.settimeout(30)
        buffer = b""
        try:
            while True:
                while b"\r\n\r\n" not in buffer:
                    data = sock.recv(65536)
                    if not data:
                        return
                    buffer += data
                head, buffer = buffer.split(b"\r\n\r\n", 1)
                lines = head.decode("latin-1").split("\r\n")
                method, path, _ = lines[0].split(" ", 2)
                headers = [(k.strip(), v.strip()) for k, _, v in (line.partition(":") for line in lines[1:])]
                if ("x-engine", "no-read") in ((k.lower(), v) for k, v in headers):
                    self._no_read(sock, method, path, head, headers)
                    return
                length = int(next((v for k, v in headers if k.lower() == "content-length"), "0"))
                while len(buffer) < length:
                    data = sock.recv(65536)
                    if not data:
                        return
                    buffer += data
                body, buffer = buffer[:length], buffer[length:]
                with self._lock:
                    self.seen.append(Seen(method, path, head, headers, body))
                if not self._answer(sock, method, path, body):
                    return
        except OSError:
            return
        finally:
            sock.close()

    def _no_read(self, sock: socket.socket, method: str, path: str, head: bytes, headers) -> None:
        """An engine that takes the connection and the head but never reads the body: its receive
        window closes, and whoever writes a large body to it waits."""
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        with self._lock:
            self.seen.append(Seen(method, path, head, headers, b""))
        time.sleep(4)  # longer than the router's --upstream-first-byte-s in the tests

    def _answer(self, sock: socket.socket, method: str, path: str, body: bytes) -> bool:
        """Write the answer; False when the connection is to be closed."""
        if path == "/health":
            sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
            return True
        if path == "/v1/models":
            data = json.dumps(
                {"object": "list", "data": [{"id": MODEL, "root": MODEL, "parent": None}]}
            ).encode()
            sock.sendall(
                b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
                % (len(data), data)
            )
            return True
        if method == "HEAD":  # a length that describes the GET answer, and no body
            sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n")
            return True
        try:
            prompt = json.dumps(json.loads(body))
        except ValueError:
            prompt = ""
        match = _MODE.search(prompt)
        mode = match.group(1) if match else "ok"
        return getattr(self, "_mode_" + mode.replace("-", "_"))(sock)

    @staticmethod
    def _mode_ok(sock) -> bool:
        data = json.dumps(
            {
                "id": "cmpl-1",
                "object": "text_completion",
                "model": MODEL,
                "choices": [{"index": 0, "text": "ok", "finish_reason": "length"}],
            }
        ).encode()
        sock.sendall(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
            % (len(data), data)
        )
        return True

    @staticmethod
    def _mode_204(sock) -> bool:
        sock.sendall(b"HTTP/1.1 204 No Content\r\nX-Engine: yes\r\n\r\n")
        return True

    @staticmethod
    def _mode_304(sock) -> bool:
        sock.sendall(b'HTTP/1.1 304 Not Modified\r\nETag: "e1"\r\n\r\n')
        return True

    @staticmethod
    def _mode_stream(sock) -> bool:
        sock.sendall(SSE_HEAD)
        for n in range(3):
            event = b"data: %d\n\n" % n
            sock.sendall(b"%x\r\n%s\r\n" % (len(event), event))
        sock.sendall(b"0\r\n\r\n")
        return True

    @staticmethod
    def _mode_close_mid_stream(sock) -> bool:
        sock.sendall(SSE_HEAD + FIRST_EVENT)
        return False

    @staticmethod
    def _mode_stall_stream(sock) -> bool:
        sock.sendall(SSE_HEAD + FIRST_EVENT)
        time.sleep(4)  # longer than the router's --upstream-idle-s in the tests
        return False

    @staticmethod
    def _mode_stall_after_head(sock) -> bool:
        sock.sendall(SSE_HEAD)
        time.sleep(4)  # longer than the router's --upstream-idle-s in the tests
        return False

    @staticmethod
    def _mode_stall_body(sock) -> bool:
        sock.sendall(
            b'HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{"id": 1'
        )
        time.sleep(4)  # longer than the router's --upstream-idle-s in the tests
        return False

    @staticmethod
    def _mode_silent(sock) -> bool:
        time.sleep(4)  # longer than the router's --upstream-first-byte-s in the tests
        return False

    @staticmethod
    def _mode_close(sock) -> bool:
        return False  # read the request, answer nothing, close

    @staticmethod
    def _mode_interim(sock) -> bool:
        """Interim 1xx answers first (RFC 9110 §15.2), then the real one."""
        sock.sendall(
            b"HTTP/1.1 103 Early Hints\r\nLink: </a>; rel=preload\r\n\r\nHTTP/1.1 100 Continue\r\n\r\n"
        )
        return ScriptedEngine._mode_ok(sock)

    @staticmethod
    def _mode_101(sock) -> bool:
        sock.sendall(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\nRAW"
        )
        return False

    @staticmethod
    def _mode_short_body(sock) -> bool:
        sock.sendall(
            b'HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{"id": 1'
        )
        return False

    @staticmethod
    def _mode_bad_chunk(sock) -> bool:
        sock.sendall(SSE_HEAD + FIRST_EVENT + b"zz\r\ndata: 1\n\n\r\n0\r\n\r\n")
        return False

    @staticmethod
    def _mode_huge_head(sock) -> bool:
        sock.sendall(b"HTTP/1.1 200 OK\r\nX-Big: " + b"y" * 70_000 + b"\r\nContent-Length: 0\r\n\r\n")
        return False

    @staticmethod
    def _mode_over_send(sock) -> bool:
        """A whole answer and, in the same write, the bytes of a second one nobody asked for, on a
        connection kept open: a proxy that pools it would hand them to the next request as its answer."""
        data = json.dumps({"choices": [{"index": 0, "text": "ok", "finish_reason": "length"}]}).encode()
        sock.sendall(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 16\r\n\r\n"
            b'{"smuggled": 1} ' % (len(data), data)
        )
        return True

    def _mode_flood_stream(self, sock) -> bool:
        """A stream as fast as the socket takes it, up to 256 MiB: only a reader keeps up."""
        sock.sendall(SSE_HEAD)
        piece = b"data: " + b"x" * 65_000 + b"\n\n"
        framed = b"%x\r\n%s\r\n" % (len(piece), piece)
        try:
            for _ in range(256 * 1024 * 1024 // len(piece)):
                sock.sendall(framed)
        except OSError:
            self.client_gone.set()  # the router closed our connection: its client stopped reading
        return False

    @staticmethod
    def _mode_bad_header(sock) -> bool:
        sock.sendall(b"HTTP/1.1 200 OK\r\nX-A: b\nContent-Length: 0\r\nContent-Length: 2\r\n\r\nok")
        return False

    def _mode_slow_stream(self, sock) -> bool:
        sock.sendall(SSE_HEAD)
        try:
            for n in range(200):
                event = b"data: %d\n\n" % n
                sock.sendall(b"%x\r\n%s\r\n" % (len(event), event))
                time.sleep(0.02)
        except OSError:
            self.client_gone.set()  # the router closed our connection: the client left
            return False
        return False
