"""routing.fallback when a specialist cannot be served: its new version is on no engine and cannot
be loaded (the directory is gone), while the engine still holds the previous version. A router
process and a sim engine, as real subprocesses; the router's config is rewritten between cases
(it re-reads the file), so one engine serves them all."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys
import urllib.error
import urllib.request

import pytest
from netkit import free_port
from waiting import wait_for

from fleetspec.routing import config
from fleetspec.spec import models

ROOT = pathlib.Path(__file__).resolve().parents[2]
MODEL = "fleetspec/tiny-test-llama"


def fleet(fallback: str, adapters: pathlib.Path) -> models.FleetSpec:
    return models.FleetSpec.model_validate({
        "name": "fb", "base_model": {"id": MODEL, "max_model_len": 1024}, "gpus": [{"type": "sim", "count": 1}],
        "servers": [{"name": "main", "lora": {"max_loras": 2, "max_cpu_loras": 4, "max_lora_rank": 8}}],
        "specialists": [{"name": "python", "version": "2.0.0", "path": str(adapters / "python" / "2.0.0"),
                         "previous_version": "1.0.0", "keywords": ["pytest"],
                         "versions": [{"version": "1.0.0", "path": str(ROOT / "adapters/python/1.0.0")}]}],
        "routing": {"fallback": fallback, "on_demand_timeout_s": 5},
    })


def http(method: str, url: str, body: dict | None = None) -> tuple[int, dict, dict]:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data, {"Content-Type": "application/json"}, method=method)
    try:
        with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310 - our own processes
            return response.status, _json(response.read()), {k.lower(): v for k, v in response.headers.items()}
    except urllib.error.HTTPError as exc:
        return exc.code, _json(exc.read()), {k.lower(): v for k, v in exc.headers.items()}
    except OSError:
        return 0, {}, {}


def _json(raw: bytes):
    return json.loads(raw) if raw else {}  # vLLM's /health answers 200 with no body


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    work = tmp_path_factory.mktemp("fallback")
    engine_port, router_port = free_port(), free_port()
    env = {**os.environ, "VLLM_ALLOW_RUNTIME_LORA_UPDATING": "true", "FLEETSPEC_SIM_STARTUP_SECONDS": "0"}
    sim = subprocess.Popen([sys.executable, "-m", "fleetspec.sim", "serve", MODEL, "--port", str(engine_port),
                            "--enable-lora", "--max-loras", "2", "--max-cpu-loras", "4", "--max-lora-rank", "8",
                            "--lora-modules", f"python--1.0.0={ROOT / 'adapters/python/1.0.0'}"],
                           env=env, stdout=(work / "sim.log").open("wb"), stderr=subprocess.STDOUT)
    engine = f"http://127.0.0.1:{engine_port}"
    path = work / "router.json"

    def configure(fallback: str) -> None:
        document = config.document(fleet(fallback, work / "adapters"), [config.Upstream("main", 0, engine)],
                                   refresh_seconds=0.2)
        path.with_suffix(".tmp").write_text(config.dumps(document))
        path.with_suffix(".tmp").replace(path)
        expected = config.config_hash(document)
        wait_for(lambda: http("GET", router + "/health")[1].get("config_hash") == expected, f"fallback {fallback}")

    first = config.document(fleet("base", work / "adapters"), [config.Upstream("main", 0, engine)],
                                    refresh_seconds=0.2)
    path.write_text(config.dumps(first))
    wait_for(lambda: http("GET", engine + "/health")[0] == 200, "the sim")
    proc = subprocess.Popen([sys.executable, "-m", "fleetspec.router", "serve", "--config", str(path),
                             "--port", str(router_port)], stdout=(work / "router.log").open("wb"),
                            stderr=subprocess.STDOUT)
    router = f"http://127.0.0.1:{router_port}"
    wait_for(lambda: http("GET", router + "/health")[1].get("healthy_upstreams") == 1, "the router")
    yield router, configure
    for process in (proc, sim):
        process.terminate()
        process.wait(10)


def ask(router: str) -> tuple[int, dict, dict]:
    return http("POST", router + "/v1/completions", {"model": "python", "prompt": "pytest", "max_tokens": 2})


def test_previous_serves_the_previous_version_and_says_so(setup):
    router, configure = setup
    configure("previous")
    status, body, headers = ask(router)
    assert (status, body["model"], headers["x-fleetspec-version"]) == (200, "python--1.0.0", "1.0.0"), body
    assert headers["x-fleetspec-fallback"] == "previous-version"
    metrics = urllib.request.urlopen(router + "/metrics", timeout=5).read().decode()
    assert 'fleetspec_router_fallbacks_total{reason="previous-version"}' in metrics
    assert 'fleetspec_router_adapter_loads_total{server="main",replica="0",result="failed"}' in metrics


def test_base_serves_the_base_model_and_says_why(setup):
    router, configure = setup
    configure("base")
    status, body, headers = ask(router)
    assert (status, body["model"]) == (200, MODEL), body
    assert headers["x-fleetspec-fallback"] == "adapter-unavailable" and "x-fleetspec-specialist" not in headers


def test_reject_answers_503_in_a_sentence(setup):
    router, configure = setup
    configure("reject")
    status, body, headers = ask(router)
    assert status == 503 and headers["retry-after"] == "1"
    assert body["error"]["message"].startswith("Specialist python (version 2.0.0) cannot be served right now")
    health = http("GET", router + "/health")[1]
    assert (health["status"], health["unserved"]) == ("degraded", ["python"])
