"""ContainerSpec: canonical JSON and spec hash (a changed hash replaces a running container)."""

from __future__ import annotations

import dataclasses
import hashlib
import json

import pytest

from fleetspec.compile import desired

CANONICAL = (
    '{"argv":["vllm","serve","m","--port","8000"],"env":{"A":"1","B":"${TOKEN}"},"gpu_ids":["0","1"],'
    '"image":"fleetspec/sim:0.1.0","labels":{"dev.fleetspec.fleet":"hi"},"name":"hi-main-0",'
    '"ports":[{"container_port":8000,"host_ip":"127.0.0.1","host_port":8001}],'
    '"volumes":[{"read_only":true,"source":"/srv/adapters","target":"/adapters"}]}'
)
# Pinned: if this changes, every container of every fleet is replaced after an upgrade.
CANONICAL_SHA256 = "9f389ae6a57c19c907ce4d19c0d64a01d1e5ab5e5a5cbca13c5a29110330bc63"


def make(**overrides) -> desired.ContainerSpec:
    fields = {
        "name": "hi-main-0",
        "image": "fleetspec/sim:0.1.0",
        "argv": ["vllm", "serve", "m", "--port", "8000"],
        "env": {"B": "${TOKEN}", "A": "1"},
        "gpu_ids": [0, 1],
        "ports": [{"container_port": 8000, "host_port": 8001}],
        "volumes": [desired.Mount(source="/srv/adapters", target="/adapters")],
        "labels": {"dev.fleetspec.fleet": "hi"},
    }
    return desired.ContainerSpec(**{**fields, **overrides})


def test_canonical_json_sorts_keys_and_uses_no_spaces():
    assert make().canonical_json() == CANONICAL


def test_spec_hash_is_sha256_of_canonical_json():
    assert hashlib.sha256(CANONICAL.encode()).hexdigest() == CANONICAL_SHA256
    assert make().spec_hash() == CANONICAL_SHA256


def test_mappings_and_pair_lists_give_the_same_spec():
    as_pairs = make(env=[("A", "1"), ("B", "${TOKEN}")], labels=[("dev.fleetspec.fleet", "hi")])
    assert as_pairs == make()
    assert as_pairs.env == (("A", "1"), ("B", "${TOKEN}"))
    assert hash(as_pairs) == hash(make())


@pytest.mark.parametrize(
    ("change", "why"),
    [
        ({"argv": ["vllm", "serve", "m", "--port", "8001"]}, "a flag value"),
        ({"argv": ["vllm", "serve", "--port", "8000", "m"]}, "argv order matters to the engine"),
        ({"image": "vllm/vllm-openai:v0.33.0"}, "the image"),
        ({"env": {"A": "2", "B": "${TOKEN}"}}, "an env value"),
        ({"gpu_ids": ["1", "0"]}, "GPU order decides device numbering"),
        ({"ports": [{"container_port": 8000, "host_port": 8002}]}, "the host port"),
        ({"volumes": [desired.Mount("/srv/adapters", "/adapters", read_only=False)]}, "mount mode"),
    ],
)
def test_any_container_change_changes_the_hash(change, why):
    assert make(**change).spec_hash() != CANONICAL_SHA256, why


def test_json_round_trip_is_exact():
    spec = make()
    assert desired.ContainerSpec.from_json(json.loads(json.dumps(spec.to_json()))) == spec


def test_spec_is_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        make().image = "other"  # type: ignore[misc]


def test_port_binding_defaults_to_loopback_and_an_engine_chosen_port():
    assert desired.PortBinding(8000) == desired.PortBinding(container_port=8000, host_port=None, host_ip="127.0.0.1")
