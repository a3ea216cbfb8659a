"""The RESP client's wire format, Redis URLs with ${VAR} credentials, the shared hash's format, and
how runtime mappings are laid over (or ignored by) a routing table. The real redis-server is in
tests/integration/test_router_redis.py."""

from __future__ import annotations

import asyncio
import textwrap

import pytest

from fleetspec import errors
from fleetspec.router import resp, runtime_state
from fleetspec.routing import config, redis_url, table
from fleetspec.spec import loading, models


def replies(data: bytes, count: int = 1) -> list:
    async def read():
        reader = asyncio.StreamReader()
        reader.feed_data(data)
        reader.feed_eof()
        return [await resp.read_reply(reader) for _ in range(count)]

    return asyncio.run(read())


def test_commands_are_arrays_of_bulk_strings():
    assert resp.encode("HSET", "k", "f", "vé", 3) == (
        b"*5\r\n$4\r\nHSET\r\n$1\r\nk\r\n$1\r\nf\r\n$3\r\nv\xc3\xa9\r\n$1\r\n3\r\n")
    assert resp.encode("PING") == b"*1\r\n$4\r\nPING\r\n"


def test_every_reply_kind_is_read():
    data = (b"+OK\r\n:42\r\n$5\r\nhe\r\no\r\n$-1\r\n*-1\r\n*0\r\n"
            b"*3\r\n$7\r\nmessage\r\n$2\r\nch\r\n*1\r\n:-7\r\n")
    assert replies(data, 7) == ["OK", 42, b"he\r\no", None, None, [], [b"message", b"ch", [-7]]]


def test_error_replies_are_values_so_a_pipeline_keeps_its_order():
    first, second = replies(b"-WRONGPASS invalid username-password pair\r\n+PONG\r\n", 2)
    assert isinstance(first, resp.RedisError) and str(first) == "WRONGPASS invalid username-password pair"
    assert second == "PONG"


def test_an_unknown_reply_type_is_refused():
    with pytest.raises(resp.Unavailable, match="does not understand"):
        replies(b"%2\r\n")


@pytest.mark.parametrize("url, expected", [
    ("redis://localhost", redis_url.Address("localhost", 6379, 0)),
    ("redis://:secret@10.0.0.5:6380/2", redis_url.Address("10.0.0.5", 6380, 2, None, "secret")),
    ("rediss://app:p%40ss@cache.internal/1", redis_url.Address("cache.internal", 6379, 1, "app", "p@ss", tls=True)),
    ("redis://[::1]:7000", redis_url.Address("::1", 7000, 0)),
])
def test_urls(url, expected):
    assert redis_url.parse_url(url) == expected


@pytest.mark.parametrize("url, message", [
    ("http://host", "starts with redis://"),
    ("redis://", "names no host"),
    ("redis://host:99999", "not a number from 1 to 65535"),
    ("redis://host/cache", "must be a database number"),
])
def test_bad_urls_say_what_is_wrong(url, message):
    with pytest.raises(ValueError, match=message):
        redis_url.parse_url(url)


def test_display_never_shows_the_password():
    address = redis_url.parse_url("redis://app:hunter2@cache:6380/4")
    assert address.display() == "redis://cache:6380/4"
    assert "hunter2" not in repr(address)


def test_redis_url_secrets_come_from_the_environment_percent_encoded():
    url = "redis://${REDIS_USER}:${REDIS_PASSWORD}@${REDIS_HOST}:6379/1"
    env = {"REDIS_USER": "router", "REDIS_PASSWORD": "p@ss:w/rd 7", "REDIS_HOST": "cache.internal"}
    assert config.redis_address(url, env) == redis_url.Address("cache.internal", 6379, 1, "router", "p@ss:w/rd 7")
    assert config.redis_address(None, env) is None


def test_a_missing_redis_secret_is_a_sentence_with_the_fix():
    with pytest.raises(errors.PermanentError) as caught:
        config.redis_address("redis://:${REDIS_PASSWORD}@cache:6379/0", {})
    assert str(caught.value).startswith(
        "runtime.router.redis_url refers to ${REDIS_PASSWORD}, but REDIS_PASSWORD is not set in the router's "
        "environment; export REDIS_PASSWORD where the router starts")


def test_the_spec_refuses_a_redis_url_of_another_scheme():
    with pytest.raises(errors.SpecError) as caught:
        loading.load_text(FLEET.replace("redis://cache:6379/0", "cache:6379"))
    (problem,) = caught.value.diagnostics
    assert problem.path == "runtime.router.redis_url"
    assert "redis:// or rediss://" in problem.message


FLEET = textwrap.dedent("""\
    name: shop
    base_model: {id: org/base}
    gpus: "1x A100-80GB"
    servers: [{name: main, lora: {max_loras: 2, max_lora_rank: 16}}]
    specialists:
      - {name: python, version: 1.0.0, path: /a/p, versions: [{version: 2.0.0, path: /a/p2}]}
      - {name: sql, version: 1.0.0, path: /a/s}
    routing:
      rules:
        - {name: words, keywords: [pytest], to: python}
        - name: ensemble
          hash_clusters: {num_clusters: 10, map: {c1: python}}
    runtime:
      router: {redis_url: "redis://cache:6379/0"}
    """)


def override(rule_index: int, rule: str, cluster: str, target: str) -> runtime_state.ClusterOverride:
    return runtime_state.ClusterOverride(rule_index, rule, cluster, target, 1.0)


def test_the_hash_format_round_trips_and_bad_entries_are_set_apart():
    kept = override(1, "ensemble", "c7", "sql@1.0.0")
    flat = [runtime_state._field(kept).encode(), runtime_state._value(kept).encode(),
            b"1:c8", b"not json", b"nocolon", b'{"rule": "ensemble", "target": "sql"}', b"x:c2", b'{"rule": "e"}']
    found, malformed = runtime_state._decode(flat)
    assert found == {(1, "c7"): kept}
    assert malformed == ["1:c8", "nocolon", "x:c2"]
    assert flat[0] == b"1:c7" and flat[1] == b'{"changed_at": 1.0, "rule": "ensemble", "target": "sql@1.0.0"}'


def test_effective_lays_allowed_mappings_over_the_table_and_ignores_the_rest():
    base = table.RoutingTable.from_spec(loading.load_text(FLEET).spec)
    prompt = "what is the weather like"  # sha1 mod 10 = 7
    assert base.decide(prompt).fallback_reason == table.CLUSTER_UNMAPPED
    good = override(1, "ensemble", "c7", "python@2.0.0")
    renamed = override(1, "old-name", "c3", "sql")
    gone = override(0, "words", "c3", "sql")  # rule 0 is a keyword rule, not hash_clusters
    undeclared = override(1, "ensemble", "c4", "rust")
    routing, ignored = runtime_state.effective(base, [good, renamed, gone, undeclared])
    decision = routing.decide(prompt)
    assert (decision.specialist, decision.version, decision.rule.name, decision.matched) == (
        "python", "2.0.0", "ensemble", ("c7",))
    assert [(o.cluster, why) for o, why in ignored] == [
        ("c3", "the config has no hash_clusters rule `old-name` at routing.rules[1]"),
        ("c3", "the config has no hash_clusters rule `words` at routing.rules[0]"),
        ("c4", "`rust` is not a specialist of the config"),
    ]
    assert base.decide(prompt).fallback_reason == table.CLUSTER_UNMAPPED  # the base table is untouched
    assert runtime_state.effective(base, []) == (base, [])


def test_the_store_follows_the_config():
    address = redis_url.parse_url("redis://cache:6379/0")
    memory = runtime_state.for_config(None, "shop")
    assert memory.health() == {"backend": "memory", "healthy": True}
    shared = runtime_state.for_config(address, "shop")
    assert (shared.hash_key, shared.channel) == ("fleetspec:shop:router:clusters", "fleetspec:shop:router:changes")
    assert runtime_state.same_store(memory, None, "shop") and not runtime_state.same_store(memory, address, "shop")
    assert runtime_state.same_store(shared, redis_url.parse_url("redis://cache/0"), "shop")
    assert not runtime_state.same_store(shared, redis_url.parse_url("redis://cache/1"), "shop")


def test_memory_state_tells_the_router_of_every_change():
    state, calls = runtime_state.MemoryState(), []

    async def scenario():
        await state.start(lambda: calls.append(dict(state.overrides)))
        await state.set_overrides([override(1, "ensemble", "c7", "sql")])
        return await state.clear_overrides()

    assert asyncio.run(scenario()) == 1
    assert [list(c) for c in calls] == [[(1, "c7")], []]


def test_router_settings_default_to_memory():
    assert models.RouterSettings().redis_url is None
