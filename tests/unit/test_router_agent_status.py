"""The router reading each pod's `fleetspec agent` /status (issue 19 item 1): a real agent's endpoints
on 127.0.0.1, read by the router's Upstreams; an agent that does not answer, answers garbage or too
much is reported as such and never touches the replica's engine health."""

from __future__ import annotations

import asyncio
import http.server
import json
import pathlib
import threading

import pytest
from netkit import free_port

from fleetspec.agent import endpoints, reconciler
from fleetspec.agent import view as agent_view
from fleetspec.compile import adapter_set
from fleetspec.router import httpio, metrics, upstreams
from fleetspec.routing import config


def replica_for(agent_port: int) -> tuple[upstreams.Upstreams, upstreams.Replica]:
    ups = upstreams.Upstreams(httpio.Pool(), timeout=2.0)
    ups.configure([config.Upstream("main", 0, f"http://127.0.0.1:{free_port()}", agent_port=agent_port)])
    return ups, next(iter(ups.replicas.values()))


@pytest.fixture
def broken_agent(tmp_path):
    """A real agent whose ConfigMap does not parse, with a last good set kept from before."""
    (tmp_path / "config").mkdir()
    (tmp_path / "config" / adapter_set.FILE).write_text('{"format": ')
    (tmp_path / "state").mkdir()
    kept = {"server": "main", "base": "m", "adapters": {"sql--1": "/a/sql/1"}}
    (tmp_path / "state" / reconciler.STATE_FILE).write_text(json.dumps({"revision": "r1", "at": 1.0, "set": kept}))
    agent = reconciler.Agent(reconciler.Settings(tmp_path / "config", f"http://127.0.0.1:{free_port()}",
                                                 state_dir=tmp_path / "state"))
    agent.step()  # reads the ConfigMap (refused); the engine does not answer
    server = endpoints.serve(agent, "127.0.0.1", 0)
    yield server.server_address[1]
    server.shutdown()


def test_an_agents_refused_configmap_is_shown_in_one_sentence_with_the_last_good_set(broken_agent):
    ups, replica = replica_for(broken_agent)
    asyncio.run(ups.check_agent(replica))
    shown = replica.agent_json()
    assert (shown["state"], shown["problem_kind"], shown["ready"]) == ("problem", "invalid", False)
    assert shown["last_good"] == {"revision": "r1", "adapters": ["sql--1"]}
    revision = shown["problem_revision"]
    assert revision.startswith("sha256:")
    assert shown["problem"].startswith(f"ConfigMap revision {revision} refused: adapters.json is not valid JSON")
    assert shown["problem"].endswith("; serving last good set r1 (sql--1)")
    assert replica.healthy is None and replica.last_error is None  # the engine's health is its own business
    family = metrics.RouterMetrics()
    family.agents(ups.replicas.values())
    text = family.render()
    assert f'fleetspec_router_agent_up{{server="main",replica="0",url="{replica.upstream.url}"}} 1' in text
    assert f'fleetspec_router_agent_config_applied{{server="main",replica="0",url="{replica.upstream.url}"}} 0' in text


def test_an_agent_that_does_not_answer_is_unreachable_not_an_engine_failure():
    port = free_port()
    ups, replica = replica_for(port)
    asyncio.run(ups.check_agent(replica))
    shown = replica.agent_json()
    assert shown["state"] == "unreachable" and shown["last_good"] is None
    assert shown["problem"].startswith(f"the agent does not answer at http://127.0.0.1:{port}/status (")
    assert "its engine is checked on its own" in shown["problem"]
    assert replica.healthy is None
    family = metrics.RouterMetrics()
    family.agents(ups.replicas.values())
    text = family.render()
    assert 'fleetspec_router_agent_up{server="main"' in text and "fleetspec_router_agent_config_applied{" not in text


class _Answer(http.server.BaseHTTPRequestHandler):
    status, body = 200, b""

    def do_GET(self):  # noqa: N802 - the stdlib's name
        self.send_response(self.status)
        self.send_header("Content-Length", str(len(self.body)))
        self.end_headers()
        self.wfile.write(self.body)

    def log_message(self, *args):
        return


@pytest.mark.parametrize(("status", "body", "said"), [
    (200, b"x" * (agent_view.MAX_STATUS_BYTES + 1), "more than the 1048576 allowed"),
    (404, b"not found", "/status answered 404"),
    (200, b"<html>", "not JSON"),
    (200, b'{"ready": true}', "not a fleetspec agent's"),
])
def test_an_answer_that_is_not_an_agents_status_is_a_bad_answer(status, body, said):
    handler = type("Handler", (_Answer,), {"status": status, "body": body})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        ups, replica = replica_for(server.server_address[1])
        asyncio.run(ups.check_agent(replica))
    finally:
        server.shutdown()
    shown = replica.agent_json()
    assert shown["state"] == "bad-answer" and said in replica.agent_error
    assert shown["problem"].startswith("the agent at http://127.0.0.1:") and "gave no usable answer" in shown["problem"]


def test_a_replica_without_an_agent_port_shows_no_agent():
    ups = upstreams.Upstreams(httpio.Pool())
    ups.configure([config.Upstream("main", 0, "http://127.0.0.1:8000")])
    assert next(iter(ups.replicas.values())).agent_json() is None


def test_the_view_reads_what_a_real_agent_writes_and_names_each_problem():
    fresh = reconciler.Agent(reconciler.Settings(pathlib.Path("/nonexistent"), "http://127.0.0.1:1"))
    seen = agent_view.parse(json.dumps(fresh.status()).encode())
    assert (seen.state, seen.last_good) == ("not-ready", None)
    assert seen.problem() == "the agent says the pod is not Ready: the engine does not answer /health yet"
    document = {"ready": False, "reason": "x", "revision": "missing", "last_good": None, "serving": None,
                "problem": {"kind": "unreadable", "revision": "missing", "message": "adapters.json does not exist"}}
    assert agent_view.parse(json.dumps(document).encode()).problem() == (
        "ConfigMap revision missing cannot be read: adapters.json does not exist; no good set was served yet, so "
        "the pod stays unready")
    with pytest.raises(agent_view.BadStatus, match="unexpected shape"):
        agent_view.parse(json.dumps({**document, "last_good": {"adapters": 3}}).encode())
