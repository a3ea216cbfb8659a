"""Per-action back-off for the watch loop: an action that keeps being needed waits 1 s, 2 s, 4 s …
(capped) after each attempt before it is tried again. Pure: time is always a parameter.

Keys name what an action acts on, not its kind: creating, replacing and removing one replica share
a key, so a container that exits and is replaced over and over (a crash loop) backs off like one
that fails to start. Successes count as attempts too: an action that succeeded yet is needed again
at once (the engine dies right after it came up, an adapter "already loaded" that the plan keeps
asking for) must not run on every event either. A key starts afresh once a plan made `settle_s`
or more after its last attempt no longer needs it: the thing stayed converged, the streak is over.
"""

from __future__ import annotations

import dataclasses

from fleetspec.reconcile.plan import Action, Kind

Key = tuple[str, str, str]  # (group, target, adapter or "")

_GROUPS = {Kind.CREATE: "server", Kind.REPLACE: "server", Kind.REMOVE: "server",
           Kind.LOAD_ADAPTER: "load", Kind.UNLOAD_ADAPTER: "unload", Kind.UPDATE_ROUTER: "router"}


def key_of(action: Action) -> Key:
    return (_GROUPS[action.kind], action.target, action.adapter or "")


def describe_key(key: Key) -> str:
    group, target, adapter = key
    return f"{adapter} on {target}" if adapter else (target if group == "server" else f"{group} {target}")


@dataclasses.dataclass
class Entry:
    attempts: int  # consecutive attempts while the key stayed needed
    last_attempt: float  # when the last attempt ended
    error: str | None = None  # the last failure's message; None when the last attempt succeeded


@dataclasses.dataclass
class Backoff:
    base_s: float = 1.0
    cap_s: float = 60.0
    settle_s: float = 10.0
    entries: dict[Key, Entry] = dataclasses.field(default_factory=dict)

    def delay(self, attempts: int) -> float:
        """How long to wait after the `attempts`-th attempt: base, 2·base, 4·base … up to the cap."""
        if attempts <= 0:
            return 0.0
        return min(self.cap_s, self.base_s * 2 ** min(attempts - 1, 62))

    def ready_at(self, key: Key) -> float:
        entry = self.entries.get(key)
        return float("-inf") if entry is None else entry.last_attempt + self.delay(entry.attempts)

    def split(self, actions: tuple[Action, ...], now: float) -> tuple[tuple[Action, ...], tuple[Action, ...]]:
        """(actions to run now, actions still waiting). Loads and unloads on a replica whose server
        action waits, wait with it: they would only fail against a server that is not up."""
        self._settle({key_of(a) for a in actions}, now)
        waiting_servers = set()
        kept, waiting = [], []
        for action in actions:
            key = key_of(action)
            blocked = action.kind in (Kind.LOAD_ADAPTER, Kind.UNLOAD_ADAPTER) and action.target in waiting_servers
            if blocked or self.ready_at(key) > now:
                waiting.append(action)
                if key[0] == "server":
                    waiting_servers.add(action.target)
            else:
                kept.append(action)
        return tuple(kept), tuple(waiting)

    def attempted(self, action: Action, now: float, error: str | None = None) -> None:
        key = key_of(action)
        entry = self.entries.get(key)
        attempts = entry.attempts + 1 if entry else 1
        self.entries[key] = Entry(attempts, now, error)

    def next_ready(self, waiting: tuple[Action, ...]) -> float | None:
        """When the first of `waiting` may run; None when nothing waits."""
        times = [self.ready_at(key_of(a)) for a in waiting]
        return min(times) if times else None

    def clear(self) -> None:
        self.entries.clear()

    def _settle(self, needed: set[Key], now: float) -> None:
        for key in [k for k, e in self.entries.items() if k not in needed and now - e.last_attempt >= self.settle_s]:
            del self.entries[key]
