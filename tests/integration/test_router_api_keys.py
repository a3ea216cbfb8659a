"""API keys through the router, with real processes: a sim engine started with `--api-key` (it
enforces the key as vLLM does), and an upstream that records every header it receives.

The router has its own client key and the engines have theirs: a client must show the router's
key, and never reaches an engine with a key of its own choosing.
"""

from __future__ import annotations

import contextlib
import http.server
import json
import os
import subprocess
import sys
import threading
import time

import httpx
import pytest
from netkit import free_port

from fleetspec.routing import config
from fleetspec.spec import models

ENGINE_KEY = "engine-secret-7f3a"
CLIENT_KEY = "client-secret-91bc"
BASE = "fleetspec/tiny-test-llama"


def fleet_spec() -> models.FleetSpec:
    return models.FleetSpec.model_validate({
        "name": "keys",
        "base_model": {"id": BASE, "max_model_len": 1024},
        "gpus": [{"type": "sim"}],
        "servers": [{"name": "main"}],
        "runtime": {"engine_api_key": "${KEYS_ENGINE_KEY}", "router": {"api_key": "${KEYS_CLIENT_KEY}"}},
    })


def wait_for(condition, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.HTTPError):
            last = condition()
            if last:
                return last
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last: {last!r})")


class Recorder(http.server.BaseHTTPRequestHandler):
    """An engine stand-in that answers like vLLM and remembers the headers of every request."""

    seen: list[dict] = []

    def do_GET(self):  # noqa: N802 - http.server's naming
        Recorder.seen.append({k.lower(): v for k, v in self.headers.items()} | {":path": self.path})
        body = {"object": "list", "data": [{"id": BASE, "root": BASE, "parent": None}]}
        self._json(200, body if self.path == "/v1/models" else {})

    def do_POST(self):  # noqa: N802
        Recorder.seen.append({k.lower(): v for k, v in self.headers.items()} | {":path": self.path})
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self._json(200, {"id": "x", "object": "text_completion", "model": BASE, "choices": []})

    def _json(self, status, body):
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


@contextlib.contextmanager
def recorder():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Recorder)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@contextlib.contextmanager
def process(argv, env, log):
    proc = subprocess.Popen(argv, env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT)
    try:
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@contextlib.contextmanager
def router_before(upstream: str, tmp_path, env_overrides: dict):
    path = tmp_path / "router.json"
    document = config.document(fleet_spec(), [config.Upstream("main", 0, upstream)], refresh_seconds=0.2)
    path.write_text(config.dumps(document))
    port = free_port()
    env = {**os.environ, "KEYS_ENGINE_KEY": ENGINE_KEY, "KEYS_CLIENT_KEY": CLIENT_KEY, **env_overrides}
    argv = [sys.executable, "-m", "fleetspec.router", "serve", "--config", str(path), "--port", str(port)]
    with process(argv, env, tmp_path / "router.log"):
        url = f"http://127.0.0.1:{port}"
        wait_for(lambda: httpx.get(url + "/health", timeout=1).json()["healthy_upstreams"] == 1, 30, "the router")
        yield url


def complete(url: str, key: str | None) -> httpx.Response:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return httpx.post(url + "/v1/completions", json={"model": BASE, "prompt": "hi", "max_tokens": 1},
                      headers=headers, timeout=30)


@pytest.fixture
def keyed_sim(tmp_path):
    port = free_port()
    env = {**os.environ, "FLEETSPEC_SIM_STARTUP_SECONDS": "0", "VLLM_API_KEY": ENGINE_KEY}
    argv = [sys.executable, "-m", "fleetspec.sim", "serve", BASE, "--port", str(port), "--max-model-len", "1024"]
    with process(argv, env, tmp_path / "sim.log"):
        url = f"http://127.0.0.1:{port}"
        wait_for(lambda: httpx.get(url + "/health", timeout=1).status_code == 200, 30, "the keyed sim")
        yield url


def test_the_router_wants_its_own_key_and_sends_the_engines_key(keyed_sim, tmp_path):
    assert complete(keyed_sim, None).status_code == 401  # the engine really enforces its key
    with router_before(keyed_sim, tmp_path, {}) as router:
        assert complete(router, None).status_code == 401
        assert complete(router, "wrong").status_code == 401
        assert complete(router, ENGINE_KEY).status_code == 401, "the engines' key must not open the router"
        answer = complete(router, CLIENT_KEY)
        assert answer.status_code == 200, answer.text
        assert httpx.get(router + "/health", timeout=5).status_code == 200  # health stays open
    assert complete(keyed_sim, CLIENT_KEY).status_code == 401  # and the router's key does not open the engine


def test_a_client_authorization_header_never_reaches_an_engine(tmp_path):
    Recorder.seen.clear()
    with recorder() as upstream, router_before(upstream, tmp_path, {}) as router:
        assert complete(router, CLIENT_KEY).status_code == 200
    forwarded = [h for h in Recorder.seen if h[":path"] == "/v1/completions"]
    assert forwarded and all(h.get("authorization") == f"Bearer {ENGINE_KEY}" for h in forwarded)
    models_checks = [h for h in Recorder.seen if h[":path"] == "/v1/models"]
    assert models_checks and all(h.get("authorization") == f"Bearer {ENGINE_KEY}" for h in models_checks)
    assert all(CLIENT_KEY not in json.dumps(h) for h in Recorder.seen)


def test_a_router_without_the_engines_key_in_its_environment_refuses_to_start(tmp_path):
    path = tmp_path / "router.json"
    path.write_text(config.dumps(config.document(fleet_spec(), [config.Upstream("main", 0, "http://127.0.0.1:9")])))
    env = {k: v for k, v in os.environ.items() if k != "KEYS_ENGINE_KEY"} | {"KEYS_CLIENT_KEY": CLIENT_KEY}
    done = subprocess.run([sys.executable, "-m", "fleetspec.router", "serve", "--config", str(path), "--port",
                           str(free_port())], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode != 0
    assert "runtime.engine_api_key refers to ${KEYS_ENGINE_KEY}" in done.stderr + done.stdout
