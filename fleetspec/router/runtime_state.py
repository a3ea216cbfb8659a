"""Where the router keeps runtime cluster mappings (seed 000's `lora:router_map`): in its own memory,
or in Redis so that every router replica of a fleet routes the same way.

Both stores offer one small interface, so the admin API and the routing table never ask which:

    state.overrides            last known mappings, {(rule_index, cluster): ClusterOverride}
    state.warmed               adapters this router warmed (always this router's own record)
    await state.start(on_change)   begin following the store; on_change() after every change
    await state.set_overrides([...]) / await state.clear_overrides() -> count
    state.health()             what /health, /metrics and /admin/state report
    await state.stop()

Requests never wait on Redis. A RedisState holds the whole map in memory. The admin API of any
replica changes the hash and PUBLISHes the change itself on the fleet's channel, both in one
MULTI/EXEC so that messages come in the order the changes were made; every replica subscribes and
applies each message as it arrives (no read back, so the cost does not grow with the map). It
re-reads the whole hash (HGETALL) when it (re)connects, since messages sent meanwhile are lost,
and every `resync_seconds`, which also catches edits made with redis-cli. When Redis is down the
router keeps routing with the spec and the last map it read, reports itself degraded, and admin
writes answer 503 rather than change one replica alone.

Mappings are checked against each config as it is installed: one that the config no longer allows
(its rule gone or renamed, its specialist removed) is ignored, and listed as such, but never
deleted, because another replica may still run the older config during a rollout.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import time
from collections.abc import Callable, Iterable

from fleetspec.router import resp
from fleetspec.routing import redis_url, table

log = logging.getLogger("fleetspec.router")

RESYNC_SECONDS = 5.0
RETRY_SECONDS = (0.1, 0.2, 0.5, 1.0, 2.0)  # reconnect back-off, then every 2 s


class Unavailable(Exception):
    """The shared store cannot be written right now; nothing was changed."""


@dataclasses.dataclass(frozen=True)
class ClusterOverride:
    rule_index: int
    rule: str
    cluster: str
    target: str
    changed_at: float

    @property
    def key(self) -> tuple[int, str]:
        return self.rule_index, self.cluster


def effective(base: table.RoutingTable, overrides: Iterable[ClusterOverride]
              ) -> tuple[table.RoutingTable, list[tuple[ClusterOverride, str]]]:
    """The base table with the mappings it allows laid over it, and the others with the reason."""
    hash_rules = {ref.index: ref for ref in base.hash_rules()}
    grouped: dict[int, dict[str, str]] = {}
    ignored = []
    for override in overrides:
        ref = hash_rules.get(override.rule_index)
        if ref is None or ref.name != override.rule:
            ignored.append((override, f"the config has no hash_clusters rule `{override.rule}` at "
                                      f"routing.rules[{override.rule_index}]"))
        elif base.target(override.target) is None:
            ignored.append((override, f"`{override.target}` is not a specialist of the config"))
        else:
            grouped.setdefault(override.rule_index, {})[override.cluster] = override.target
    return (base.with_cluster_overrides(grouped) if grouped else base), ignored


class MemoryState:
    """Mappings in this process only: they vanish on restart and other replicas never see them."""

    backend = "memory"

    def __init__(self) -> None:
        self.overrides: dict[tuple[int, str], ClusterOverride] = {}
        self.warmed: dict = {}  # (url, served name) → admin.Warmed
        self._on_change: Callable[[], None] = lambda: None

    async def start(self, on_change: Callable[[], None]) -> None:
        self._on_change = on_change

    async def stop(self) -> None:
        pass

    async def set_overrides(self, items: Iterable[ClusterOverride]) -> None:
        self.overrides.update((o.key, o) for o in items)
        self._on_change()

    async def clear_overrides(self) -> int:
        count = len(self.overrides)
        self.overrides.clear()
        self._on_change()
        return count

    def health(self) -> dict:
        return {"backend": self.backend, "healthy": True}


class RedisState(MemoryState):
    backend = "redis"

    def __init__(self, address: redis_url.Address, fleet: str, resync_seconds: float = RESYNC_SECONDS,
                 timeout: float = 1.0):
        super().__init__()
        self.address, self.fleet = address, fleet
        self.hash_key = f"fleetspec:{fleet}:router:clusters"
        self.channel = f"fleetspec:{fleet}:router:changes"
        self.resync_seconds = resync_seconds
        self.timeout = timeout
        self.healthy = False
        self.error: str | None = "not connected yet"
        self.down_since: float | None = time.time()
        self.synced_at: float | None = None
        self.syncs = {"ok": 0, "error": 0}
        self.malformed: list[str] = []  # hash fields this router could not read
        self._conn: resp.Connection | None = None
        self._task: asyncio.Task | None = None
        self._first_sync = asyncio.Event()

    # -- following the store ----------------------------------------------------------------------

    async def start(self, on_change: Callable[[], None], wait: float = 2.0) -> None:
        """Follow Redis in the background; wait up to `wait` s for the first read, so a fresh
        replica starts with the shared map when Redis is there, and without it when not."""
        self._on_change = on_change
        self._task = asyncio.create_task(self._follow())
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(wait):
                await self._first_sync.wait()

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._conn is not None:
            self._conn.close()

    async def _follow(self) -> None:
        failures = 0
        while True:
            try:
                await self._subscribed()
            except (resp.Unavailable, resp.RedisError, Unavailable, TimeoutError) as exc:
                self._down(str(exc) or "Redis did not answer in time")
            failures = 0 if self.healthy else failures + 1
            await asyncio.sleep(RETRY_SECONDS[min(failures, len(RETRY_SECONDS) - 1)])

    async def _subscribed(self) -> None:
        """One subscriber connection's life: subscribe, read the map, then re-read it on every
        message and every resync_seconds until the connection breaks."""
        sub = await resp.Connection.open(self.address, self.timeout)
        pending: asyncio.Task | None = None
        try:
            await sub.send("SUBSCRIBE", self.channel)
            reply = await asyncio.wait_for(sub.receive(), self.timeout)
            if isinstance(reply, resp.RedisError):
                raise reply
            await self.sync()
            resync_at = time.monotonic() + self.resync_seconds
            while True:
                pending = pending or asyncio.create_task(sub.receive())
                done, _ = await asyncio.wait({pending}, timeout=max(0.0, resync_at - time.monotonic()))
                if done:
                    message, pending = pending.result(), None
                    if isinstance(message, resp.RedisError):
                        raise message
                    if self._apply(message):
                        continue
                await self.sync()  # the periodic check, or a message that did not say what changed
                resync_at = time.monotonic() + self.resync_seconds
        finally:
            sub.close()
            if pending is not None:
                pending.cancel()
                with contextlib.suppress(asyncio.CancelledError, resp.Unavailable):
                    await pending

    async def sync(self) -> None:
        """Read the whole map; replace the local copy (and tell the router) when it differs."""
        try:
            raw = await self._call("HGETALL", self.hash_key)
        except Unavailable:
            self.syncs["error"] += 1
            raise
        overrides, malformed = self.decode(raw or [])
        self.syncs["ok"] += 1
        self.synced_at = time.time()
        if malformed != self.malformed and malformed:
            log.warning("ignoring %d unreadable entries of Redis hash %s: %s", len(malformed), self.hash_key,
                        ", ".join(malformed[:5]))
        self.malformed = malformed
        changed = overrides != self.overrides
        self.overrides = overrides
        self._up()
        self._first_sync.set()
        if changed:
            self._on_change()

    def _apply(self, message) -> bool:
        """Apply a published change; False when the message does not say what changed."""
        try:
            kind, _, payload = message
            change = json.loads(payload) if kind == b"message" else None
            if change == {"clear": True}:
                overrides = {}
            else:
                entries = change["set"]
                found, malformed = self.decode([x.encode() for kv in entries.items() for x in kv])
                if malformed:
                    return False
                overrides = {**self.overrides, **found}
        except (ValueError, TypeError, KeyError, AttributeError):
            return False
        if overrides != self.overrides:
            self.overrides = overrides
            self._on_change()
        return True

    # -- writing ------------------------------------------------------------------------------------

    async def set_overrides(self, items: Iterable[ClusterOverride]) -> None:
        entries = self.encode(items)
        fields = [x for kv in entries.items() for x in kv]
        await self._write([("HSET", self.hash_key, *fields),
                           ("PUBLISH", self.channel, json.dumps({"set": entries}, sort_keys=True))])
        # Read-your-writes on this replica, without waiting for its own message to come back.
        self._apply([b"message", self.channel.encode(), json.dumps({"set": entries})])

    async def clear_overrides(self) -> int:
        count, _, _ = await self._write([("HLEN", self.hash_key), ("DEL", self.hash_key),
                                         ("PUBLISH", self.channel, json.dumps({"clear": True}))])
        self._apply([b"message", self.channel.encode(), json.dumps({"clear": True})])
        return int(count)

    def encode(self, items: Iterable[ClusterOverride]) -> dict[str, str]:
        """Hash fields and values for these mappings: fleetspec's layout (seed 000's: `redis_compat`)."""
        return {_field(o): _value(o) for o in items}

    def decode(self, flat: list) -> tuple[dict[tuple[int, str], ClusterOverride], list[str]]:
        return _decode(flat)

    async def _write(self, commands: list[tuple]) -> list:
        """Run commands as one MULTI/EXEC transaction; their replies, or Unavailable."""
        replies = await self._pipeline([("MULTI",), *commands, ("EXEC",)])
        results = replies[-1]
        error = next((r for r in [*replies, *(results if isinstance(results, list) else ())]
                      if isinstance(r, resp.RedisError)), None)
        if error is not None or not isinstance(results, list):
            raise Unavailable(f"Redis at {self.address.display()} refused the change: {error or 'transaction aborted'}")
        return results

    async def _call(self, *args):
        (reply,) = await self._pipeline([args])
        if isinstance(reply, resp.RedisError):
            self._down(str(reply))
            raise Unavailable(f"Redis at {self.address.display()} answered: {reply}")
        return reply

    async def _pipeline(self, commands: list[tuple]) -> list:
        try:
            if self._conn is None or self._conn.closed:
                self._conn = await resp.Connection.open(self.address, self.timeout)
            return await self._conn.pipeline(commands, self.timeout)
        except (resp.Unavailable, resp.RedisError) as exc:
            self._down(str(exc))
            raise Unavailable(str(exc)) from None

    # -- health -------------------------------------------------------------------------------------

    def _up(self) -> None:
        if not self.healthy:
            log.info("shared runtime state: following Redis at %s (%d mappings)", self.address.display(),
                     len(self.overrides))
        self.healthy, self.error, self.down_since = True, None, None

    def _down(self, why: str) -> None:
        # Warn once per outage; the retries' own errors (refused, reset, timed out) go to debug.
        report = log.warning if self.healthy or self.down_since is None else log.debug
        report("shared runtime state unavailable: %s; routing goes on with the spec and the %d mappings "
               "last read", why, len(self.overrides))
        if self.healthy or self.down_since is None:
            self.down_since = time.time()
        self.healthy, self.error = False, why

    def health(self) -> dict:
        return {"backend": self.backend, "healthy": self.healthy, "url": self.address.display(),
                "key": self.hash_key, "error": self.error, "down_since": self.down_since,
                "synced_at": self.synced_at, "mappings": len(self.overrides), "malformed": len(self.malformed)}


# -- the hash's format: field "RULE_INDEX:CLUSTER", value JSON {"rule", "target", "changed_at"} ------


def _field(override: ClusterOverride) -> str:
    return f"{override.rule_index}:{override.cluster}"


def _value(override: ClusterOverride) -> str:
    return json.dumps({"rule": override.rule, "target": override.target, "changed_at": override.changed_at},
                      sort_keys=True)


def _decode(flat: list) -> tuple[dict[tuple[int, str], ClusterOverride], list[str]]:
    """HGETALL's flat [field, value, ...] as overrides; fields that do not parse are listed apart."""
    found: dict[tuple[int, str], ClusterOverride] = {}
    malformed = []
    for raw_field, raw_value in zip(flat[::2], flat[1::2], strict=True):
        field = raw_field.decode(errors="replace")
        index, sep, cluster = field.partition(":")
        try:
            value = json.loads(raw_value)
            override = ClusterOverride(int(index), str(value["rule"]), cluster, str(value["target"]),
                                       float(value.get("changed_at") or 0.0))
        except (ValueError, TypeError, KeyError, AttributeError):
            malformed.append(field)
            continue
        if not sep or not cluster:
            malformed.append(field)
            continue
        found[override.key] = override
    return found, malformed


def for_config(address: redis_url.Address | None, fleet: str, resync_seconds: float = RESYNC_SECONDS,
               plain_map=None) -> MemoryState:
    """The store a router config asks for: Redis at `address` (in seed 000's layout with a
    `redis_compat.PlainMap`), or this process's memory."""
    if address is not None and plain_map is not None:
        from fleetspec.router import redis_compat

        return redis_compat.PlainMapState(address, fleet, plain_map, resync_seconds)
    return MemoryState() if address is None else RedisState(address, fleet, resync_seconds)


def same_store(state: MemoryState, address: redis_url.Address | None, fleet: str, plain_map=None) -> bool:
    """Whether a reloaded config still points at the store this router follows."""
    if address is None:
        return not isinstance(state, RedisState)
    return (isinstance(state, RedisState) and state.address == address and state.fleet == fleet
            and getattr(state, "plain_map", None) == plain_map)
