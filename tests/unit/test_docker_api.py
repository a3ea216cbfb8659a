"""The Docker driver's standard-library read side against a stand-in engine on a unix socket:
whatever the engine answers, `observe` returns containers or a sentence, never a traceback."""

from __future__ import annotations

import http.server
import json
import socketserver
import threading

import pytest

from fleetspec import errors
from fleetspec.drivers import docker_api

CONTAINER = {"Id": "abc123", "Name": "/demo-main-0", "Config": {"Image": "sim", "Labels": {}},
             "State": {"Status": "running"}, "NetworkSettings": {"Ports": {}}}


def engine(tmp_path, answers: dict[str, tuple[int, object]]) -> str:
    """A unix-socket HTTP server answering each path prefix with (status, JSON body)."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args) -> None:
            pass

        def do_GET(self) -> None:
            status, body = next((v for k, v in answers.items() if self.path.startswith(k)), (404, {"message": "no"}))
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def address_string(self) -> str:
            return "unix"

    path = str(tmp_path / "docker.sock")
    server = socketserver.ThreadingUnixStreamServer(path, Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return path


def test_containers_are_read_from_list_and_inspect(tmp_path):
    path = engine(tmp_path, {"/containers/json": (200, [{"Id": "abc123"}]), "/containers/abc123/json": (200, CONTAINER)})
    seen = docker_api.SocketDockerDriver(path).observe("demo")
    assert [(c.id, c.name, c.running) for c in seen] == [("abc123", "demo-main-0", True)]


@pytest.mark.parametrize("listed", [[{"Id": "../../etc"}], [{"nope": 1}], ["abc"], [None]])
def test_entries_that_are_not_containers_are_skipped(tmp_path, listed):
    path = engine(tmp_path, {"/containers/json": (200, listed)})
    assert docker_api.SocketDockerDriver(path).observe("demo") == []


def test_a_container_removed_between_list_and_inspect_is_not_there(tmp_path):
    path = engine(tmp_path, {"/containers/json": (200, [{"Id": "abc123"}])})  # inspect answers 404
    assert docker_api.SocketDockerDriver(path).observe("demo") == []


@pytest.mark.parametrize(("status", "body", "words"), [
    (200, {"not": "a list"}, "not a list of containers"),
    (500, {"message": "daemon is shutting down"}, "daemon is shutting down"),
])
def test_a_strange_answer_is_a_sentence(tmp_path, status, body, words):
    path = engine(tmp_path, {"/containers/json": (status, body)})
    with pytest.raises(errors.FleetspecError, match=words):
        docker_api.SocketDockerDriver(path).observe("demo")


def test_an_answer_that_is_not_json_is_a_sentence(tmp_path):
    class Raw(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args) -> None:
            pass

        def address_string(self) -> str:
            return "unix"

        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Length", "5")
            self.end_headers()
            self.wfile.write(b"hello")

    path = str(tmp_path / "raw.sock")
    server = socketserver.ThreadingUnixStreamServer(path, Raw)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    with pytest.raises(errors.PermanentError, match="answer was unusable"):
        docker_api.SocketDockerDriver(path).observe("demo")
