"""The router as a real process in front of two real sim engines (all subprocesses).

Replica 0 holds python--1.0.0 and sql--1.0.0 is only on replica 1, so a request routed to the wrong
replica would fail with the engine's 404: a 200 proves the router chose where the adapter lives.
"""

from __future__ import annotations

import contextlib
import json
import os
import pathlib
import shutil
import socket
import subprocess
import sys
import textwrap
import time

import httpx
import pytest
from netkit import free_port

from fleetspec.routing import config
from fleetspec.spec import models

ROOT = pathlib.Path(__file__).resolve().parents[2]
TOKEN = "itest-token"
BASE = "fleetspec/tiny-test-llama"
TOKEN_SECONDS = 0.04  # per generated token in the sims, so streams take visible time

FLEET = textwrap.dedent("""\
    name: itest
    base_model: {id: fleetspec/tiny-test-llama, max_model_len: 2048}
    gpus: [{type: sim, count: 1}]
    servers:
      - name: main
        replicas: 2
        gpu_memory_utilization: 0.45
        lora: {max_loras: 2, max_cpu_loras: 4, max_lora_rank: 8}
    specialists:
      - name: python
        version: 1.0.0
        path: ADAPTERS/python/1.0.0
        keywords: [pytest, django]
        extensions: [.py]
        versions: [{version: 2.0.0, path: ADAPTERS/python/2.0.0}]
      - {name: sql, version: 1.0.0, path: ADAPTERS/sql/1.0.0, keywords: [sql, postgres]}
      - {name: shell, version: 1.0.0, path: ADAPTERS/shell/1.0.0, keywords: [bash]}
    routing:
      fallback: base
      sticky_key: x-user-id
      rules:
        - {name: tracebacks, regex: 'Traceback \\(most recent call last\\)', to: python}
        - {name: signals, specialist_signals: true}
        - name: ensemble
          hash_clusters: {num_clusters: 10, prefix: c}
      splits:
        - specialist: python
          weights: {1.0.0: 50, 2.0.0: 50}
    runtime:
      router: {admin_token: "${ITEST_ROUTER_TOKEN}"}
    """)




def wait_for(condition, timeout: float = 20.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            last = condition()
            if last:
                return last
        except httpx.HTTPError as exc:
            last = exc
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last: {last!r})")


@contextlib.contextmanager
def processes():
    started: list[subprocess.Popen] = []
    try:
        yield started
    finally:
        for proc in started:
            if proc.poll() is None:
                proc.terminate()
        for proc in started:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def start_sim(started: list, port: int, modules: list[str], log: pathlib.Path) -> str:
    env = {**os.environ, "VLLM_ALLOW_RUNTIME_LORA_UPDATING": "true", "FLEETSPEC_SIM_STARTUP_SECONDS": "0",
           "FLEETSPEC_SIM_TOKEN_SECONDS": str(TOKEN_SECONDS)}
    argv = [sys.executable, "-m", "fleetspec.sim", "serve", BASE, "--port", str(port), "--enable-lora",
            "--max-loras", "2", "--max-cpu-loras", "4", "--max-lora-rank", "8", "--lora-modules", *modules]
    started.append(subprocess.Popen(argv, env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT))
    url = f"http://127.0.0.1:{port}"
    wait_for(lambda: httpx.get(url + "/health", timeout=1).status_code == 200, what=f"sim on {port}")
    return url


def start_router(started: list, config_path: pathlib.Path, port: int, log: pathlib.Path, token: str | None = TOKEN,
                 processes: int = 1):
    env = {**os.environ}
    env.pop("ITEST_ROUTER_TOKEN", None)
    if token:
        env["ITEST_ROUTER_TOKEN"] = token
    argv = [sys.executable, "-m", "fleetspec.router", "serve", "--config", str(config_path), "--port", str(port),
            "--processes", str(processes)]
    started.append(subprocess.Popen(argv, env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT))
    url = f"http://127.0.0.1:{port}"
    wait_for(lambda: httpx.get(url + "/health", timeout=1).json()["healthy_upstreams"] == 2, what="router")
    return url


def write_config(path: pathlib.Path, spec: models.FleetSpec, upstreams: list[str]) -> None:
    items = [config.Upstream("main", i, url) for i, url in enumerate(upstreams)]
    doc = config.document(spec, items, refresh_seconds=0.2)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(config.dumps(doc))
    tmp.replace(path)  # atomic, as the compiler and reconciler write it


@pytest.fixture(scope="module")
def fleet(tmp_path_factory):
    """Two sims and a router; yields a namespace of URLs, paths and the spec."""
    yield from bring_up(tmp_path_factory, router_processes=1)


def bring_up(tmp_path_factory, router_processes: int):
    work = tmp_path_factory.mktemp("router")
    adapters = work / "adapters"
    shutil.copytree(ROOT / "adapters", adapters)
    shutil.copytree(adapters / "python/1.0.0", adapters / "python/2.0.0")
    spec = models.FleetSpec.model_validate(
        __import__("yaml").safe_load(FLEET.replace("ADAPTERS", str(adapters))))
    with processes() as started:
        sim0 = start_sim(started, free_port(), [f"python--1.0.0={adapters}/python/1.0.0"], work / "sim0.log")
        sim1 = start_sim(started, free_port(), [f"sql--1.0.0={adapters}/sql/1.0.0",
                                                f"python--2.0.0={adapters}/python/2.0.0"], work / "sim1.log")
        config_path = work / "router.json"
        write_config(config_path, spec, [sim0, sim1])
        router = start_router(started, config_path, free_port(), work / "router.log", processes=router_processes)
        yield type("Fleet", (), {"router": router, "sims": (sim0, sim1), "config_path": config_path,
                                 "spec": spec, "work": work, "adapters": adapters, "processes": router_processes})


def complete(router: str, prompt: str, model: str = "auto", headers=None, **extra) -> httpx.Response:
    body = {"model": model, "prompt": prompt, "max_tokens": 2, **extra}
    return httpx.post(f"{router}/v1/completions", json=body, headers=headers or {}, timeout=30)


def chat(router: str, text: str, model: str = "auto", headers=None) -> httpx.Response:
    body = {"model": model, "messages": [{"role": "system", "content": "be brief"},
                                         {"role": "user", "content": text}], "max_tokens": 2}
    return httpx.post(f"{router}/v1/chat/completions", json=body, headers=headers or {}, timeout=30)


def admin(router: str, method: str, path: str, token: str | None = TOKEN, **kwargs) -> httpx.Response:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.request(method, f"{router}{path}", headers=headers, timeout=30, **kwargs)


# -- routing ------------------------------------------------------------------------------------------


def test_auto_routes_to_the_replica_holding_the_adapter(fleet):
    for n in range(6):
        response = chat(fleet.router, f"postgres index question {n}")
        assert response.status_code == 200, response.text
        assert response.headers["x-fleetspec-specialist"] == "sql"
        assert response.headers["x-fleetspec-version"] == "1.0.0"
        assert response.headers["x-fleetspec-rule"] == "signals"
        assert response.json()["model"] == "sql--1.0.0"  # the engine saw the served name


def test_split_is_sticky_per_user_and_lands_where_each_version_lives(fleet):
    seen = {}
    for user in ("alice", "bob", "carol", "dave", "erin", "frank"):
        versions = {complete(fleet.router, f"pytest {n}", headers={"x-user-id": user}).headers["x-fleetspec-version"]
                    for n in range(3)}
        assert len(versions) == 1, f"{user} saw {versions}"
        seen[user] = versions.pop()
    assert set(seen.values()) == {"1.0.0", "2.0.0"}
    response = complete(fleet.router, "pytest", headers={"x-user-id": "alice"})
    assert response.status_code == 200 and response.json()["model"] == f"python--{seen['alice']}"


def test_explicit_specialist_version_and_unknown_model(fleet):
    response = complete(fleet.router, "anything", model="python@2.0.0")
    assert (response.status_code, response.headers["x-fleetspec-rule"]) == (200, "explicit")
    assert response.json()["model"] == "python--2.0.0"
    missing = complete(fleet.router, "anything", model="gpt-4")
    assert missing.status_code == 404
    assert missing.json()["error"]["message"].startswith("The model `gpt-4` does not exist.")


def test_fallback_to_base_is_marked(fleet):
    response = complete(fleet.router, "what is the weather like")  # cluster c7 of 10, unmapped
    assert response.status_code == 200
    assert response.headers["x-fleetspec-fallback"] == "cluster-unmapped"
    assert response.headers["x-fleetspec-model"] == BASE
    assert "x-fleetspec-specialist" not in response.headers


def test_models_lists_aliases(fleet):
    ids = [card["id"] for card in httpx.get(f"{fleet.router}/v1/models").json()["data"]]
    assert ids == ["auto", BASE, "python", "shell", "sql"]


def test_streaming_passes_through_as_it_is_generated(fleet):
    arrivals = []
    body = {"model": "sql", "prompt": "x", "max_tokens": 8, "stream": True}
    with httpx.stream("POST", f"{fleet.router}/v1/completions", json=body, timeout=30) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        assert response.headers["x-fleetspec-specialist"] == "sql"
        for line in response.iter_lines():
            if line.startswith("data: "):
                arrivals.append((time.monotonic(), line[6:]))
    assert arrivals[-1][1] == "[DONE]"
    events = [json.loads(data) for _, data in arrivals[:-1]]
    assert len(events) == 8 and all(e["model"] == "sql--1.0.0" for e in events)
    # 8 tokens at 40 ms each: a buffering proxy would deliver them all at once. Not more than one
    # token's time is asked for: on a loaded machine a stalled loop rightly passes several events on
    # in one read, but never all eight.
    assert arrivals[-1][0] - arrivals[0][0] >= TOKEN_SECONDS


# -- admin API ----------------------------------------------------------------------------------------


def test_admin_needs_the_bearer_token(fleet):
    assert admin(fleet.router, "GET", "/admin/state", token=None).status_code == 401
    assert admin(fleet.router, "GET", "/admin/state", token="wrong").status_code == 401
    state = admin(fleet.router, "GET", "/admin/state").json()
    assert state["fleet"] == "itest" and state["config_hash"] == config.config_hash(
        json.loads(fleet.config_path.read_text()))


def test_seed_000_cluster_mapping_is_drift_until_cleared(fleet):
    prompt = "what is the weather like"  # sha1 mod 10 = 7
    assert complete(fleet.router, prompt).headers["x-fleetspec-fallback"] == "cluster-unmapped"
    # seed 000's own command: form-encoded cluster_id / adapter_tag
    response = admin(fleet.router, "POST", "/admin/ensemble", data={"cluster_id": "c7", "adapter_tag": "sql"})
    assert response.status_code == 200, response.text
    routed = complete(fleet.router, prompt)
    assert (routed.headers["x-fleetspec-specialist"], routed.headers["x-fleetspec-rule"]) == ("sql", "ensemble")
    state = admin(fleet.router, "GET", "/admin/state").json()
    assert state["drift"] is True
    assert [(c["cluster"], c["specialist"], c["declared"]) for c in state["clusters"]] == [("c7", "sql", None)]
    bad = admin(fleet.router, "POST", "/admin/ensemble/bulk", json={"c1": "sql", "c77": "sql"})
    assert bad.status_code == 400 and "ids run from c0 to c9" in bad.json()["error"]["message"]
    assert admin(fleet.router, "POST", "/admin/clusters/clear").json() == {"cleared": 1}
    assert complete(fleet.router, prompt).headers["x-fleetspec-fallback"] == "cluster-unmapped"
    stats = admin(fleet.router, "GET", "/admin/ensemble/stats").json()
    assert stats["clusters"]["unmapped"]["c7"] >= 2 and stats["miss_rate"] > 0


def test_a_declared_adapter_no_engine_holds_is_loaded_on_demand_then_warm_and_clear(fleet):
    """shell is declared but on no engine: the first request loads it (never the engine's 404)."""
    health = httpx.get(f"{fleet.router}/health").json()
    assert (health["status"], health["unserved"]) == ("degraded", ["shell"])  # a promised specialist, served nowhere
    assert {(r["replica"], r["healthy"]) for r in health["replicas"]} == {(0, True), (1, True)}
    before = httpx.get(f"{fleet.router}/metrics").text
    first = complete(fleet.router, "x", model="shell")
    assert first.status_code == 200, first.text
    assert first.headers["x-fleetspec-model"] == "shell--1.0.0"
    holders = [sim for sim in fleet.sims if "shell--1.0.0" in served(sim)]
    assert len(holders) == 1
    after = httpx.get(f"{fleet.router}/metrics").text
    assert metric(after, "ensemble_cache_misses_total") - metric(before, "ensemble_cache_misses_total") == 1
    assert metric(after, 'fleetspec_router_adapter_loads_total{server="main"') >= 1
    assert "fleetspec_router_adapter_load_seconds_count" in after
    warmed = admin(fleet.router, "POST", "/admin/ensemble/cache/warm", json=["shell"])
    assert warmed.status_code == 200, warmed.text
    assert sorted(r["result"] for r in warmed.json()["results"]) == ["already-loaded", "loaded"]
    assert complete(fleet.router, "x", model="shell").status_code == 200
    assert len(admin(fleet.router, "GET", "/admin/state").json()["warmed"]) == 2
    cleared = admin(fleet.router, "POST", "/admin/cache/clear").json()
    assert [r["result"] for r in cleared["results"]] == ["unloaded", "unloaded"]
    assert {k["served_name"] for k in cleared["kept"]} >= {"python--1.0.0", "sql--1.0.0"}
    assert "vllm-project/vllm#54839" in cleared["note"]
    for sim in fleet.sims:
        assert "shell--1.0.0" not in served(sim)


def test_an_adapter_unloaded_behind_the_routers_back_never_reaches_a_client_as_404(fleet):
    """The router still believes sim 1 holds python--2.0.0; the engine's 404 makes it load it again
    (nothing had reached the client), and later requests find it there."""
    gone = httpx.post(f"{fleet.sims[1]}/v1/unload_lora_adapter", json={"lora_name": "python--2.0.0"})
    assert gone.status_code == 200, gone.text
    for _ in range(5):
        response = complete(fleet.router, "anything", model="python@2.0.0")
        assert (response.status_code, response.json()["model"]) == (200, "python--2.0.0"), response.text
    assert any("python--2.0.0" in served(sim) for sim in fleet.sims)
    # (Whether the engine's 404 or the router's next /v1/models read noticed first is a race of
    # milliseconds against refresh_seconds=0.2; either way no client saw the 404.)
    # Put the module's fleet back as the other tests expect it: python--2.0.0 on sim 1 only.
    assert admin(fleet.router, "POST", "/admin/cache/clear").status_code == 200
    path = str(fleet.adapters / "python" / "2.0.0")
    back = httpx.post(f"{fleet.sims[1]}/v1/load_lora_adapter", json={"lora_name": "python--2.0.0", "lora_path": path})
    assert back.status_code == 200, back.text


def served(sim: str) -> list[str]:
    return [m["id"] for m in httpx.get(f"{sim}/v1/models").json()["data"]]


def metric(text: str, series: str) -> float:
    """The sum of every sample whose line starts with `series` (0 when there is none)."""
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(series))


# -- metrics ------------------------------------------------------------------------------------------


def test_metrics_count_requests_fallbacks_and_decisions(fleet):
    def value(text: str, series: str) -> float:
        return next((float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(series)), 0.0)

    before = httpx.get(f"{fleet.router}/metrics").text
    for _ in range(3):
        chat(fleet.router, "postgres vacuum")
    complete(fleet.router, "nothing matches this one at all")
    after = httpx.get(f"{fleet.router}/metrics").text
    sql = 'fleetspec_router_requests_total{specialist="sql",version="1.0.0",code="200"}'
    assert value(after, sql) - value(before, sql) == 3
    misses = 'fleetspec_router_fallbacks_total{reason="cluster-unmapped"}'
    assert value(after, misses) - value(before, misses) == 1
    assert value(after, "fleetspec_router_decision_seconds_count") - value(before, "fleetspec_router_decision_seconds_count") == 4
    assert 'fleetspec_router_upstream_healthy{server="main",replica="0"' in after


# -- reloads and failures -----------------------------------------------------------------------------


def test_config_edit_moves_the_split_without_dropping_a_stream_in_flight(fleet):
    user = next(u for u in (f"user-{n}" for n in range(100))
                if complete(fleet.router, "pytest", headers={"x-user-id": u}).headers["x-fleetspec-version"] == "2.0.0")
    old_hash = httpx.get(f"{fleet.router}/health").json()["config_hash"]
    body = {"model": "auto", "prompt": "pytest stream", "max_tokens": 20, "stream": True}
    with httpx.stream("POST", f"{fleet.router}/v1/completions", json=body, headers={"x-user-id": user},
                      timeout=30) as response:
        served = response.headers["x-fleetspec-model"]
        lines = response.iter_lines()
        first = next(lines)
        assert first.startswith("data: ")
        routing = fleet.spec.routing.model_copy(update={"splits": [
            models.Split(specialist="python", weights={"1.0.0": 100, "2.0.0": 0})]})
        write_config(fleet.config_path, fleet.spec.model_copy(update={"routing": routing}), list(fleet.sims))
        wait_for(lambda: httpx.get(f"{fleet.router}/health").json()["config_hash"] != old_hash, what="reload")
        rest = [line for line in lines if line.startswith("data: ")]
    # Nothing dropped: the same events the engine gives when asked directly, to the end.
    direct_body = {**body, "model": served}
    direct = httpx.post(f"{fleet.sims[1]}/v1/completions", json=direct_body, timeout=30).text
    direct_events = [line for line in direct.splitlines() if line.startswith("data: ")]
    assert rest[-1] == "data: [DONE]" and len(rest) + 1 == len(direct_events)
    finish = [json.loads(e[6:])["choices"][0]["finish_reason"] for e in (rest[-2], direct_events[-2])]
    assert finish[0] == finish[1] is not None
    moved = complete(fleet.router, "pytest", headers={"x-user-id": user})
    assert moved.headers["x-fleetspec-version"] == "1.0.0"
    write_config(fleet.config_path, fleet.spec, list(fleet.sims))
    wait_for(lambda: httpx.get(f"{fleet.router}/health").json()["config_hash"] == old_hash, what="restore")


def test_a_broken_config_edit_keeps_the_running_config(fleet):
    old_hash = httpx.get(f"{fleet.router}/health").json()["config_hash"]
    fleet.config_path.write_text("{not json")
    reloaded = admin(fleet.router, "POST", "/admin/reload")
    assert reloaded.status_code == 500 and "cannot be read" in reloaded.json()["message"]
    assert httpx.get(f"{fleet.router}/health").json()["config_hash"] == old_hash
    assert chat(fleet.router, "postgres").status_code == 200
    write_config(fleet.config_path, fleet.spec, list(fleet.sims))
    assert admin(fleet.router, "POST", "/admin/reload").json()["reloaded"] is True


def test_admin_api_is_off_without_a_token(tmp_path, fleet):
    spec = fleet.spec.model_copy(update={"runtime": models.Runtime()})
    path = tmp_path / "router.json"
    write_config(path, spec, list(fleet.sims))
    with processes() as started:
        router = start_router(started, path, free_port(), tmp_path / "router.log", token=None)
        response = admin(router, "GET", "/admin/state")
        assert response.status_code == 404 and "admin API is off" in response.json()["error"]["message"]


def test_stopped_engine_loses_no_request(tmp_path, fleet):
    """Base-model traffic over two fresh sims; one is stopped mid-traffic; every request succeeds."""
    with processes() as started:
        sims = [start_sim(started, free_port(), [f"python--1.0.0={fleet.adapters}/python/1.0.0"],
                          tmp_path / f"sim{i}.log") for i in range(2)]
        path = tmp_path / "router.json"
        write_config(path, fleet.spec, sims)
        router = start_router(started, path, free_port(), tmp_path / "router.log")
        statuses = [complete(router, f"plain prompt {n}", model=BASE).status_code for n in range(10)]
        started[1].terminate()
        started[1].wait(timeout=10)
        statuses += [complete(router, f"plain prompt {n}", model=BASE).status_code for n in range(20)]
        assert statuses == [200] * 30
        metrics_text = httpx.get(f"{router}/metrics").text
        assert 'fleetspec_router_upstream_healthy{server="main",replica="1",url="' + sims[1] + '"} 0' in metrics_text


def test_expect_100_continue_is_answered_before_the_body(fleet):
    """curl sends `Expect: 100-continue` for bodies over 1 KiB and waits for the interim answer."""
    body = json.dumps({"model": "auto", "prompt": "postgres " + "x " * 800, "max_tokens": 2}).encode()
    host, port = fleet.router.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: r\r\nContent-Type: application/json\r\n"
                     b"Expect: 100-continue\r\nConnection: close\r\nContent-Length: %d\r\n\r\n" % len(body))
        assert sock.recv(64).startswith(b"HTTP/1.1 100 Continue\r\n\r\n")
        sock.sendall(body)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 200 OK\r\n")
    assert b"x-fleetspec-specialist: sql\r\n" in answer


# -- Ingress path prefixes (seed 003) ----------------------------------------------------------------


def test_an_ingress_prefix_pins_a_specialist_the_base_model_or_a_server(fleet):
    def post(prefix: str, prompt: str, model: str = "auto") -> httpx.Response:
        return httpx.post(f"{fleet.router}{prefix}/v1/completions", timeout=30,
                          json={"model": model, "prompt": prompt, "max_tokens": 2})

    pinned = post("/sql", "nothing about databases")
    assert (pinned.status_code, pinned.headers["x-fleetspec-specialist"], pinned.json()["model"]) == (
        200, "sql", "sql--1.0.0")
    versioned = post("/python", "anything", model="python@2.0.0")
    assert versioned.json()["model"] == "python--2.0.0"
    base = post("/base", "postgres vacuum")
    assert base.status_code == 200 and "x-fleetspec-specialist" not in base.headers
    assert base.json()["model"] == BASE
    scoped = post("/main", "postgres vacuum")  # the one server hosts every specialist
    assert (scoped.status_code, scoped.headers["x-fleetspec-specialist"]) == (200, "sql")
    assert post("/nowhere", "hi").status_code == 404
