"""On-demand adapters (`preload: false`) in a Kubernetes pod: the adapter-set document carries them
(`on_demand`), and the pod's agent leaves the ones the router loaded where they are, as `fleetspec
apply` does (`reconcile.diff`), until they leave the document.

The agent runs against the sim engine in this process (its HTTP server on a free port, adapter files
not read), so each convergence step is one `agent.step()` call.
"""

from __future__ import annotations

import json
import pathlib
import threading

import pytest

from fleetspec.agent import endpoints, reconciler
from fleetspec.compile import adapter_set, k8s_changes
from fleetspec.engine_api import client as engine_client
from fleetspec.sim import args as sim_args
from fleetspec.sim import engine, server
from fleetspec.spec import loading

ROOT = pathlib.Path(__file__).resolve().parents[2]
MODEL = "fleetspec/tiny-test-llama"


def text(adapters: dict[str, str], on_demand: dict[str, str] | None = None, base: str = MODEL) -> str:
    doc = {"format": adapter_set.FORMAT, "fleet": "f", "server": "main", "base": base, "adapters": adapters}
    if on_demand is not None:
        doc["on_demand"] = on_demand
    return adapter_set.to_text(doc)


# -- the document ----------------------------------------------------------------------------------


def test_a_document_from_before_on_demand_still_parses_with_none():
    older = json.dumps({"format": "fleetspec-adapters/1", "fleet": "f", "server": "main", "base": MODEL,
                        "adapters": {"sql--1": "/a/sql/1"}})
    parsed = adapter_set.parse(older)
    assert parsed.mapping == {"sql--1": "/a/sql/1"} and parsed.on_demand == ()
    assert parsed.to_json()["on_demand"] == {}


def test_on_demand_adapters_round_trip_apart_from_the_required_ones():
    parsed = adapter_set.parse(text({"sql--1": "/a/sql/1"}, {"legal--1": "/a/legal/1", "chat--2": "/a/chat/2"}))
    assert parsed.mapping == {"sql--1": "/a/sql/1"}
    assert parsed.on_demand == (("chat--2", "/a/chat/2"), ("legal--1", "/a/legal/1"))
    kept = parsed.to_json()  # what the agent keeps as its last good set, and shows in /status
    assert kept["adapters"] == {"sql--1": "/a/sql/1"} and set(kept["on_demand"]) == {"legal--1", "chat--2"}
    assert adapter_set.parse(adapter_set.to_text({"format": adapter_set.FORMAT, **kept})) == parsed


@pytest.mark.parametrize(
    "on_demand, words",
    [
        ([], "`on_demand`, when present, as an object"),
        ({"a/b": "/x"}, "not a name"),
        ({"legal--1": ""}, "path"),
        ({"main": "/x"}, "base model's served name"),
        ({"sql--1": "/a/sql/1"}, "sql--1 in adapters.json is both in `adapters`"),
    ],
)
def test_a_broken_on_demand_list_is_refused_with_a_sentence(on_demand, words):
    with pytest.raises(adapter_set.AdapterSetError, match=words):
        adapter_set.parse(text({"sql--1": "/a/sql/1"}, on_demand, base="main"))


def test_too_many_adapters_counts_the_on_demand_ones_too():
    many = {f"a{i}--1": f"/a/{i}" for i in range(adapter_set.MAX_ADAPTERS)}
    with pytest.raises(adapter_set.AdapterSetError, match="lists 4097 adapters"):
        adapter_set.parse(text({"sql--1": "/a/sql/1"}, many))


def test_the_compiled_document_lists_preload_false_specialists_under_on_demand():
    fleet = loading.load_path(ROOT / "examples" / "large-mixed-gpus.yaml")
    doc = adapter_set.document(fleet.spec, fleet.spec.server("long-context"), fleet.base_dir)
    assert doc["on_demand"] == {"medical--0.8.0": "/adapters/medical/0.8.0"}
    assert "medical--0.8.0" not in doc["adapters"] and "legal--1.0.0" in doc["adapters"]
    assert adapter_set.parse(adapter_set.to_text(doc)).on_demand_mapping == doc["on_demand"]
    edge = adapter_set.document(fleet.spec, fleet.spec.server("edge"), fleet.base_dir)
    assert edge["on_demand"] == {}  # always present: the reader sees where on-demand adapters go


def configmap(adapters: dict[str, str], on_demand: dict[str, str]) -> dict:
    return {"kind": "ConfigMap", "data": {adapter_set.FILE: text(adapters, on_demand)}}


def test_plan_against_says_what_the_agent_does_with_on_demand_adapters():
    before = configmap({"sql--1": "/a/sql/1", "legal--1": "/a/legal/1"}, {})
    moved = configmap({"sql--1": "/a/sql/1"}, {"legal--1": "/a/legal/1"})  # legal becomes preload: false
    assert k8s_changes._adapter_detail(before, moved) == (
        "the agent in each pod will no adapter changes (and leave legal--1 to the router's on-demand loads); "
        "no restart")
    gone = configmap({"sql--1": "/a/sql/1"}, {})
    assert k8s_changes._adapter_detail(moved, gone) == "the agent in each pod will unload legal--1; no restart"


# -- the agent's convergence -----------------------------------------------------------------------


@pytest.fixture
def sim():
    args = sim_args.parse(["serve", MODEL, "--enable-lora", "--max-loras", "2", "--max-cpu-loras", "4"],
                          {"VLLM_ALLOW_RUNTIME_LORA_UPDATING": "true"})
    app = server.App(args, engine.Engine(args, lambda name, path: None), 2048)
    httpd = server.SimHTTPServer(("127.0.0.1", 0), app)
    app.ready.set()
    threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True).start()
    yield engine_client.EngineClient(f"http://127.0.0.1:{httpd.server_address[1]}")
    httpd.shutdown()
    httpd.server_close()


def agent_for(sim: engine_client.EngineClient, tmp_path: pathlib.Path, document: str) -> reconciler.Agent:
    (tmp_path / "config").mkdir(exist_ok=True)
    (tmp_path / "config" / adapter_set.FILE).write_text(document)
    return reconciler.Agent(reconciler.Settings(tmp_path / "config", sim.base_url, state_dir=tmp_path))


def test_the_agent_leaves_an_on_demand_adapter_the_router_loaded(sim, tmp_path):
    agent = agent_for(sim, tmp_path, text({"sql--1": "/a/sql/1"}, {"legal--1": "/a/legal/1"}))
    agent.step()
    assert dict(sim.models().adapters) == {"sql--1": "/a/sql/1"}  # allowed, not required: not loaded

    assert sim.load_adapter("legal--1", "/a/legal/1")  # the router, for a request that asked for it
    for _ in range(3):
        agent.step()
    assert dict(sim.models().adapters) == {"sql--1": "/a/sql/1", "legal--1": "/a/legal/1"}
    assert agent.counters.restored == 0  # not drift
    status = agent.status()
    assert status["ready"] and status["problem"] is None
    assert status["last_good"]["adapters"] == {"sql--1": "/a/sql/1"}
    assert status["last_good"]["on_demand"] == {"legal--1": "/a/legal/1"}
    assert status["serving_on_demand"] == {"legal--1": "/a/legal/1"}
    assert "fleetspec_agent_adapters_serving_on_demand 1" in endpoints.metrics_text(agent)

    # A restarted agent keeps the on-demand list with its last good set (the state file).
    again = reconciler.Agent(reconciler.Settings(tmp_path / "config", sim.base_url, state_dir=tmp_path))
    assert again.last_good is not None and again.last_good.on_demand_mapping == {"legal--1": "/a/legal/1"}


def test_the_agent_unloads_an_on_demand_adapter_once_it_leaves_the_document(sim, tmp_path):
    agent = agent_for(sim, tmp_path, text({"sql--1": "/a/sql/1"}, {"legal--1": "/a/legal/1"}))
    agent.step()
    assert sim.load_adapter("legal--1", "/a/legal/1")
    agent.step()
    (tmp_path / "config" / adapter_set.FILE).write_text(text({"sql--1": "/a/sql/1"}, {}))
    agent.step()
    assert dict(sim.models().adapters) == {"sql--1": "/a/sql/1"}
    assert agent.status()["serving_on_demand"] == {} and agent.counters.applied == 2


def test_an_adapter_in_neither_list_is_still_drift_and_unloaded(sim, tmp_path):
    agent = agent_for(sim, tmp_path, text({"sql--1": "/a/sql/1"}, {"legal--1": "/a/legal/1"}))
    agent.step()
    assert sim.load_adapter("stray--1", "/a/stray/1")  # loaded by hand
    agent.step()
    assert dict(sim.models().adapters) == {"sql--1": "/a/sql/1"} and agent.counters.restored == 1


def test_an_older_document_without_on_demand_keeps_the_old_rule(sim, tmp_path):
    agent = agent_for(sim, tmp_path, text({"sql--1": "/a/sql/1"}))
    agent.step()
    assert sim.load_adapter("legal--1", "/a/legal/1")
    agent.step()  # nothing allows legal--1: it is drift, as before the document carried on-demand adapters
    assert dict(sim.models().adapters) == {"sql--1": "/a/sql/1"}
