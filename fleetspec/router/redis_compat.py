"""Seed 000's Redis layout for the router's runtime cluster mappings (`runtime.router.redis_map_key`).

Seed 000 keeps its map in one Redis hash, `lora:router_map`: field = cluster id (`c17`), value = the
bare adapter tag (`2025-06-06`), which in a fleet file is the specialist's name. Its runbook and
nightly job write that hash with redis-cli (`HSET lora:router_map c17 2025-06-06`, `DEL
lora:router_map` as the emergency fallback). With `redis_map_key: lora:router_map` the router reads
and writes exactly that hash instead of fleetspec's own (`fleetspec:<fleet>:router:clusters`, JSON
values per rule), so those tools keep working during and after a migration:

- reading: every field is a cluster of the fleet's first hash_clusters rule. A field written with
  seed 000's key prefix (`pattern:cluster:c17`) counts as `c17`; an empty value is unreadable and
  listed as such; a tag that is no specialist of the config is ignored and listed by /admin/state.
- writing (the admin API): `HSET key c17 <tag>`, bare, as seed 000 writes it; clear is `DEL key`.
- changes still travel on the fleet's own pub/sub channel, so every router replica applies an admin
  change at once; edits made with redis-cli are picked up by the periodic re-read (resync_seconds).

Everything else (health, outages, the first read, 503 on writes while Redis is down) is
`runtime_state.RedisState`'s.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable

from fleetspec.router import runtime_state
from fleetspec.routing import redis_url


@dataclasses.dataclass(frozen=True)
class PlainMap:
    """Where and for which rule the plain layout applies."""

    key: str  # the Redis hash, e.g. lora:router_map
    rule_index: int | None  # the first hash_clusters rule of the config; None when it has none
    rule_name: str | None


def plain_map(config) -> PlainMap | None:
    """The plain layout a router config asks for (runtime.router.redis_map_key), or None."""
    key = config.spec.runtime.router.redis_map_key
    if key is None or config.redis is None:
        return None
    rules = config.table.hash_rules()
    first = rules[0] if rules else None
    return PlainMap(key, first.index if first else None, first.name if first else None)


class PlainMapState(runtime_state.RedisState):
    backend = "redis"

    def __init__(self, address: redis_url.Address, fleet: str, layout: PlainMap,
                 resync_seconds: float = runtime_state.RESYNC_SECONDS, timeout: float = 1.0):
        super().__init__(address, fleet, resync_seconds, timeout)
        self.plain_map = layout
        self.hash_key = layout.key

    def encode(self, items: Iterable[runtime_state.ClusterOverride]) -> dict[str, str]:
        items = list(items)  # read twice below; callers may hand a generator
        if self.plain_map.rule_index is None:
            raise runtime_state.Unavailable("this fleet has no hash_clusters rule to map clusters for")
        wrong = [o.rule for o in items if o.rule_index != self.plain_map.rule_index]
        if wrong:
            raise runtime_state.Unavailable(
                f"{self.hash_key} holds the mappings of rule `{self.plain_map.rule_name}` only (seed 000's "
                f"layout has no rule names), so clusters of rule `{wrong[0]}` cannot be stored there")
        return {o.cluster: o.target for o in items}

    def decode(self, flat: list) -> tuple[dict[tuple[int, str], runtime_state.ClusterOverride], list[str]]:
        found: dict[tuple[int, str], runtime_state.ClusterOverride] = {}
        malformed: list[str] = []
        index, rule = self.plain_map.rule_index, self.plain_map.rule_name
        for raw_field, raw_value in zip(flat[::2], flat[1::2], strict=True):
            field = _text(raw_field)
            cluster, target = field.rsplit(":", 1)[-1], _text(raw_value).strip()
            if index is None or not cluster or not target:
                malformed.append(field)
                continue
            override = runtime_state.ClusterOverride(index, rule, cluster, target, 0.0)
            found[override.key] = override
        return found, malformed

    def health(self) -> dict:
        return {**super().health(), "layout": "seed-000 (field: cluster id, value: adapter tag)"}


def _text(value) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)
