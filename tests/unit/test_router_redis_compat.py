"""Seed 000's Redis layout (hash field = cluster id, value = bare adapter tag), without a server:
how the router reads and writes that hash. tests/integration/test_seed000_example.py runs it
against a real redis-server."""

from __future__ import annotations

import pytest

from fleetspec.router import redis_compat, runtime_state
from fleetspec.routing import redis_url

LAYOUT = redis_compat.PlainMap("lora:router_map", 1, "ensemble")


def state(layout=LAYOUT) -> redis_compat.PlainMapState:
    return redis_compat.PlainMapState(redis_url.Address("127.0.0.1"), "ensemble", layout)


def test_fields_are_clusters_of_the_first_hash_rule_and_values_bare_tags():
    found, malformed = state().decode([b"c17", b"2025-06-06", b"pattern:cluster:c42", b"code-specialist-v2",
                                       b"c5", b""])
    assert {k: o.target for k, o in found.items()} == {(1, "c17"): "2025-06-06", (1, "c42"): "code-specialist-v2"}
    assert {o.rule for o in found.values()} == {"ensemble"}
    assert malformed == ["c5"]


def test_writes_are_bare_tags_in_the_seeds_hash():
    store = state()
    assert store.hash_key == "lora:router_map"
    items = (runtime_state.ClusterOverride(1, "ensemble", c, t, 1.0) for c, t in (("c17", "a"), ("c3", "b@2")))
    assert store.encode(items) == {"c17": "a", "c3": "b@2"}


def test_a_cluster_of_another_rule_is_refused_not_stored_under_the_wrong_one():
    with pytest.raises(runtime_state.Unavailable, match="rule `other`"):
        state().encode([runtime_state.ClusterOverride(2, "other", "c1", "a", 1.0)])


def test_the_router_switches_store_when_the_layout_changes():
    store = state()
    address = redis_url.Address("127.0.0.1")
    assert runtime_state.same_store(store, address, "ensemble", LAYOUT)
    assert not runtime_state.same_store(store, address, "ensemble", None)
    assert not runtime_state.same_store(store, address, "ensemble", redis_compat.PlainMap("other", 1, "ensemble"))
    assert isinstance(runtime_state.for_config(address, "ensemble", 2.0, LAYOUT), redis_compat.PlainMapState)
    assert type(runtime_state.for_config(address, "ensemble", 2.0)) is runtime_state.RedisState
