"""The router config document: built from a fleet, read back into the same routing table."""

from __future__ import annotations

import json
import pathlib

import pytest

from fleetspec import errors
from fleetspec.routing import config
from fleetspec.spec import loading

ROOT = pathlib.Path(__file__).resolve().parents[2]
UPSTREAMS = [config.Upstream("main", 0, "http://127.0.0.1:8001"), config.Upstream("main", 1, "http://127.0.0.1:8002")]


@pytest.mark.parametrize("example", ["examples/001-hi-moe-awq.yaml", "examples/large-mixed-gpus.yaml", "fleet.yaml"])
def test_document_round_trips_to_the_same_decisions(example):
    fleet = loading.load_path(ROOT / example)
    doc = json.loads(config.dumps(config.document(fleet.spec, UPSTREAMS)))
    loaded = config.parse(doc, env={"FLEETSPEC_ADMIN_TOKEN": "t"})
    assert loaded.spec == fleet.spec
    assert loaded.upstreams == tuple(UPSTREAMS)
    from fleetspec.routing import table

    direct = table.RoutingTable.from_spec(fleet.spec)
    for prompt in ("pytest fails in app.py", "Traceback (most recent call last):", "hello", "summarize a.ipynb"):
        assert loaded.table.decide(prompt, sticky_key="u1") == direct.decide(prompt, sticky_key="u1")


def test_document_is_deterministic_and_hash_matches_reconcile_formula():
    spec = loading.load_path(ROOT / "fleet.yaml").spec
    first = config.dumps(config.document(spec, UPSTREAMS, cluster_maps={0: {"b": "x", "a": "y"}}))
    assert first == config.dumps(config.document(spec, UPSTREAMS, cluster_maps={0: {"a": "y", "b": "x"}}))
    doc = json.loads(first)
    import hashlib

    expected = hashlib.sha256(json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()).hexdigest()
    assert config.parse(doc).hash == expected


def test_admin_token_is_resolved_from_the_environment():
    spec = loading.load_path(ROOT / "examples/large-mixed-gpus.yaml").spec  # admin_token: ${FLEETSPEC_ADMIN_TOKEN}
    doc = config.document(spec, UPSTREAMS)
    assert config.parse(doc, env={"FLEETSPEC_ADMIN_TOKEN": "s3cret"}).admin_token == "s3cret"
    with pytest.raises(errors.PermanentError, match=r"\$\{FLEETSPEC_ADMIN_TOKEN\}.*not set"):
        config.parse(doc, env={})
    assert config.parse(config.document(loading.load_path(ROOT / "fleet.yaml").spec, UPSTREAMS)).admin_token is None


@pytest.mark.parametrize("data, message", [
    ({"format": "other"}, "not a fleetspec router config"),
    ({"format": config.FORMAT, "fleet": {"name": "x"}}, "the fleet inside router config is invalid"),
])
def test_bad_documents_say_how_to_fix_them(data, message):
    with pytest.raises(errors.PermanentError, match=message):
        config.parse(data)


def test_upstream_without_url_is_refused():
    doc = config.document(loading.load_path(ROOT / "fleet.yaml").spec, [{"server": "main"}])
    with pytest.raises(errors.PermanentError, match="upstream without `server` and `url`"):
        config.parse(doc)


def test_an_agent_port_round_trips_and_a_bad_one_is_refused():
    spec = loading.load_path(ROOT / "fleet.yaml").spec
    pods = config.Upstream("main", 0, "http://vllm-main-pods.f.svc.cluster.local:8000", discover=True, agent_port=8081)
    doc = json.loads(config.dumps(config.document(spec, [pods, UPSTREAMS[0]])))
    assert doc["upstreams"][0]["agent_port"] == 8081 and "agent_port" not in doc["upstreams"][1]
    assert config.parse(doc).upstreams == (pods, UPSTREAMS[0])
    for bad in (0, 70000, "http", True):
        doc["upstreams"][0]["agent_port"] = bad
        with pytest.raises(errors.PermanentError, match="agent_port"):
            config.parse(doc)


MAP_FLEET = """\
name: ensemble
base_model: {id: org/base}
gpus: "1x T4"
servers: [{name: api, lora: {max_loras: 2, max_lora_rank: 16}}]
specialists: [{name: a, version: "1", path: /a}]
routing:
  rules:
    - hash_clusters: {num_clusters: 10, map_file: clusters.yaml}
"""


def test_map_file_is_read_relative_to_the_fleet(tmp_path):
    (tmp_path / "fleet.yaml").write_text(MAP_FLEET)
    (tmp_path / "clusters.yaml").write_text("c3: a\nc4: a@1\n")
    fleet = loading.load_path(tmp_path / "fleet.yaml")
    assert config.load_cluster_maps(fleet) == {0: {"c3": "a", "c4": "a@1"}}


@pytest.mark.parametrize("content, code", [(None, "map-file-unreadable"), ("- c3\n", "map-file-shape")])
def test_map_file_problems_are_located(tmp_path, content, code):
    (tmp_path / "fleet.yaml").write_text(MAP_FLEET)
    if content is not None:
        (tmp_path / "clusters.yaml").write_text(content)
    with pytest.raises(errors.SpecError) as caught:
        config.load_cluster_maps(loading.load_path(tmp_path / "fleet.yaml"))
    (problem,) = caught.value.diagnostics
    assert (problem.code, problem.path, problem.location.line) == (code, "routing.rules[0].hash_clusters.map_file", 8)


def _with_python_v2() -> dict:
    spec = loading.load_path(ROOT / "fleet.yaml").spec
    document = spec.model_dump(mode="json", exclude_defaults=True)
    for item in document["specialists"]:
        if item["name"] == "python":
            item["versions"] = [*item.get("versions", []), {"version": "1.0.0", "path": item["path"]}]
            item.update(version="2.0.0", path="/a/python/2.0.0", previous_version="1.0.0")
    spec = type(spec).model_validate(document)
    return json.loads(config.dumps(config.document(spec, UPSTREAMS, adapter_paths={"python--2.0.0": "/a/python/2.0.0"})))


def test_with_versions_keeps_a_held_back_specialist_on_the_version_that_still_serves():
    doc = _with_python_v2()
    held = config.with_versions(doc, {"python": ("1.0.0", "/a/python/1.0.0")})
    loaded = config.parse(held)
    python = loaded.spec.specialist("python")
    assert (python.version, python.path, python.previous_version) == ("1.0.0", "/a/python/1.0.0", None)
    assert [(v.version, v.path) for v in python.versions] == [("2.0.0", "/a/python/2.0.0")]  # still declared
    assert loaded.adapter_paths["python--1.0.0"] == "/a/python/1.0.0"
    decision = loaded.table.decide("pytest fails", explicit_model="python")
    assert (decision.version, decision.served_name) == ("1.0.0", "python--1.0.0")
    assert config.with_versions(doc, {}) == doc


def test_with_draining_marks_one_upstream_and_keeps_the_others():
    doc = _with_python_v2()
    drained = config.with_draining(doc, "main", 1, True)
    assert [u.draining for u in config.parse(drained).upstreams] == [False, True]
    assert [u.draining for u in config.parse(config.with_draining(drained, "main", 1, False)).upstreams] == [False, False]
    both = config.with_draining(drained, "main", 0, True)
    assert [u.draining for u in config.parse(both).upstreams] == [True, True]
    assert config.with_draining(doc, "main", 7, True) is None  # no such replica: nothing to drain
