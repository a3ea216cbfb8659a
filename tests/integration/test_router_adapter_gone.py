"""An engine says it no longer serves the adapter a request was routed to (vLLM's 404 "The model
`x` does not exist."), which on real vLLM happens when apply unloads an old version just after the
router moved its specialist to the new one, while requests decided before the switch are on their
way. The router must then answer from what serves now: the new version when a newer config has
been loaded, otherwise another replica, a load, or the fallback on the same engine (an engine that
lacks one adapter still serves the base model).

A router process and a small engine stand-in in this process that answers like vLLM and can change
the router's config at the very moment a request arrives: the race, made deterministic."""

from __future__ import annotations

import http.server
import json
import os
import pathlib
import subprocess
import sys
import threading
import urllib.error
import urllib.request

import pytest
from netkit import free_port
from waiting import wait_for

from fleetspec.routing import config
from fleetspec.spec import models

MODEL = "fleetspec/tiny-test-llama"


def fleet(version: str, fallback: str) -> models.FleetSpec:
    return models.FleetSpec.model_validate({
        "name": "gone", "base_model": {"id": MODEL, "max_model_len": 1024}, "gpus": [{"type": "sim", "count": 1}],
        "servers": [{"name": "main", "lora": {"max_loras": 2, "max_cpu_loras": 4, "max_lora_rank": 8}}],
        "specialists": [{"name": "python", "version": version, "path": f"/adapters/python/{version}",
                         "keywords": ["pytest"],
                         "versions": [{"version": v, "path": f"/adapters/python/{v}"}
                                      for v in ("1.0.0", "2.0.0") if v != version]}],
        "routing": {"fallback": fallback, "on_demand_timeout_s": 5},
    })


class Engine:
    """Serves the base model and the adapters in `served`; refuses every adapter load. `on_request`
    runs (in the engine's thread) before a completion is answered."""

    def __init__(self, served: set[str]):
        self.served, self.asked = set(served), []
        self.on_request = lambda model: None
        engine = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:
                pass

            def do_GET(self) -> None:
                if self.path == "/v1/models":
                    ids = [MODEL, *sorted(engine.served)]
                    self._answer(200, {"object": "list", "data": [{"id": i, "object": "model", "root": i}
                                                                  for i in ids]})
                else:
                    self._answer(200, None)

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])) or b"{}")
                if self.path == "/v1/load_lora_adapter":
                    self._answer(400, {"error": {"message": "Loading this adapter failed", "type": "BadRequestError",
                                                 "param": None, "code": 400}})
                    return
                model = body.get("model")
                engine.asked.append(model)
                engine.on_request(model)
                if model != MODEL and model not in engine.served:
                    self._answer(404, {"error": {"message": f"The model `{model}` does not exist.",
                                                 "type": "NotFoundError", "param": "model", "code": 404}})
                    return
                self._answer(200, {"id": "cmpl-1", "object": "text_completion", "model": model,
                                   "choices": [{"index": 0, "text": "ok", "finish_reason": "length"}]})

            def _answer(self, status: int, body) -> None:
                data = b"" if body is None else json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def http_json(method: str, url: str, body: dict | None = None) -> tuple[int, dict, dict]:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data, {"Content-Type": "application/json"}, method=method)
    try:
        with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310 - our own processes
            return response.status, json.loads(response.read() or b"{}"), {k.lower(): v for k, v in response.headers.items()}
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}"), {k.lower(): v for k, v in exc.headers.items()}
    except OSError:
        return 0, {}, {}


class Setup:
    def __init__(self, work: pathlib.Path, engine: Engine):
        self.work, self.engine, self.path = work, engine, work / "router.json"
        self.url = f"http://127.0.0.1:{free_port()}"
        self.proc = None

    def configure(self, version: str, fallback: str = "base") -> None:
        # A long refresh period: the router learns what the engine serves only from its reloads and
        # from the engine's answers, as between two health checks.
        document = config.document(fleet(version, fallback), [config.Upstream("main", 0, self.engine.url)],
                                   refresh_seconds=600)
        self.path.with_suffix(".tmp").write_text(config.dumps(document))
        self.path.with_suffix(".tmp").replace(self.path)
        if self.proc is None:
            self.proc = subprocess.Popen([sys.executable, "-m", "fleetspec.router", "serve", "--config",
                                          str(self.path), "--port", self.url.rsplit(":", 1)[1]],
                                         stdout=(self.work / "router.log").open("ab"), stderr=subprocess.STDOUT,
                                         env={**os.environ, "NO_COLOR": "1"})
        expected = config.config_hash(document)
        wait_for(lambda: http_json("GET", self.url + "/health")[1].get("config_hash") == expected,
                 f"the router serving python {version}")

    def ask(self) -> tuple[int, dict, dict]:
        return http_json("POST", self.url + "/v1/completions", {"model": "python", "prompt": "pytest", "max_tokens": 2})


@pytest.fixture
def setup(tmp_path):
    engine = Engine({"python--1.0.0", "python--2.0.0"})
    running = Setup(tmp_path, engine)
    yield running
    if running.proc is not None:
        running.proc.terminate()
        running.proc.wait(10)
    engine.close()


def test_a_request_decided_before_a_version_switch_is_served_by_the_new_version(setup):
    setup.configure("1.0.0")

    def switch_then_unload(model: str) -> None:
        # What apply does on a version bump, in the gap between the router's decision and the engine:
        # the router moves to 2.0.0, then the engine unloads 1.0.0.
        if model == "python--1.0.0" and "python--1.0.0" in setup.engine.served:
            setup.configure("2.0.0")
            setup.engine.served.discard("python--1.0.0")

    setup.engine.on_request = switch_then_unload
    status, body, headers = setup.ask()

    assert (status, body.get("model"), headers.get("x-fleetspec-version")) == (200, "python--2.0.0", "2.0.0"), body
    assert setup.engine.asked == ["python--1.0.0", "python--2.0.0"]


def test_an_adapter_gone_from_the_only_engine_falls_back_to_the_base_model_on_that_engine(setup):
    setup.configure("1.0.0")
    setup.engine.served.discard("python--1.0.0")  # gone, and the router has not looked since

    status, body, headers = setup.ask()

    # The engine cannot load it back (it refuses loads), so routing.fallback: base answers, from the
    # same engine: lacking one adapter is no reason to count it out for the base model.
    assert (status, body.get("model"), headers.get("x-fleetspec-fallback")) == (200, MODEL, "adapter-unavailable"), body
    assert setup.engine.asked == ["python--1.0.0", MODEL]


def test_health_counts_requests_in_flight_by_adapter_which_apply_waits_on_before_an_unload(setup):
    from fleetspec.reconcile import router_edge

    setup.configure("1.0.0")
    arrived, release = threading.Event(), threading.Event()

    def hold(model: str) -> None:
        arrived.set()
        release.wait(30)

    setup.engine.on_request = hold
    answered = []
    client = threading.Thread(target=lambda: answered.append(setup.ask()))
    client.start()
    try:
        assert arrived.wait(30)
        assert router_edge._inflight(setup.url, "main", 0, "python--1.0.0") == 1
        assert router_edge._inflight(setup.url, "main", 0, "python--2.0.0") == 0
    finally:
        release.set()
        client.join(30)
    assert answered[0][0] == 200
    wait_for(lambda: router_edge._inflight(setup.url, "main", 0, "python--1.0.0") == 0, "the request to finish")
