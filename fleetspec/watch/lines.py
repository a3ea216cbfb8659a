"""The watch loop's one line per cycle: what woke it, what it changed, how long it took. Pure.

`[12:00:01] cycle 4, woken by fleet.yaml changed (×20): loaded python--1.1.0 on main/0, main/1 (0.41 s)`
(the time stamp is added by the CLI). A cycle that changed nothing says `no changes`, so a reader,
or a test, can tell at a glance which cycles did something.
"""

from __future__ import annotations

import collections
from collections.abc import Mapping, Sequence

from fleetspec.reconcile import apply as apply_mod
from fleetspec.reconcile.plan import Action, Kind
from fleetspec.watch import backoff as backoff_mod

NO_CHANGES = "no changes"
_MAX_NAMES = 4  # targets named per change before "+N more"

_DONE = {Kind.CREATE: "started", Kind.REPLACE: "replaced", Kind.REMOVE: "removed", Kind.LOAD_ADAPTER: "loaded",
         Kind.UNLOAD_ADAPTER: "unloaded", Kind.UPDATE_ROUTER: "updated"}
_TRY = {Kind.CREATE: "start", Kind.REPLACE: "replace", Kind.REMOVE: "remove", Kind.LOAD_ADAPTER: "load",
        Kind.UNLOAD_ADAPTER: "unload", Kind.UPDATE_ROUTER: "update"}


def cycle_line(number: int, wakes: Sequence, changed: str, seconds_taken: float) -> str:
    return f"cycle {number}, woken by {summarize_wakes(wakes)}: {changed} ({seconds_taken:.2f} s)"


def summarize_wakes(wakes: Sequence) -> str:
    counts = collections.Counter(w.detail for w in wakes)
    return ", ".join(detail if n == 1 else f"{detail} (×{n})" for detail, n in counts.items())


def changes(result: apply_mod.ApplyResult | None, waiting: Sequence[Action],
            retry_in: Mapping[backoff_mod.Key, float]) -> list[str]:
    """Phrases for what a cycle did (or `no changes`), then what failed (and when it is retried),
    was skipped, or still waits for its back-off."""
    outcomes = result.outcomes if result is not None else ()
    done = [o.action for o in outcomes if o.status == apply_mod.OK]
    phrases = _grouped(done, _DONE) or [NO_CHANGES]
    for outcome in outcomes:
        if outcome.status == apply_mod.FAILED:
            action = outcome.action
            wait = retry_in.get(backoff_mod.key_of(action), 0.0)
            phrases.append(f"FAILED to {_TRY[action.kind]} {_subject(action)} (retry in {seconds(wait)}): "
                           f"{_first_line(outcome.message)}")
    skipped = [o for o in outcomes if o.status == apply_mod.SKIPPED]
    if skipped:
        phrases.append(f"skipped {len(skipped)} (their server is not up)")
    if waiting:
        names = sorted({f"{_TRY[a.kind]} {_subject(a)}" for a in waiting})
        soonest = min(retry_in.get(backoff_mod.key_of(a), 0.0) for a in waiting)
        phrases.append(f"{len(waiting)} waiting for back-off ({_names(names)}; next in {seconds(soonest)})")
    return phrases


def seconds(value: float) -> str:
    value = max(0.0, value)
    return f"{value:.0f} s" if value >= 10 else f"{value:.1f} s"


def _grouped(actions: Sequence[Action], verbs: Mapping[Kind, str]) -> list[str]:
    """`loaded python--1.1.0 on main/0, main/1`: one phrase per (verb, adapter), targets listed."""
    groups: dict[tuple[str, str | None], list[str]] = {}
    for action in actions:
        groups.setdefault((verbs[action.kind], action.adapter), []).append(action.target)
    phrases = []
    for (verb, adapter), targets in groups.items():
        subject = "the router" if targets == ["router"] and adapter is None else _names(targets)
        phrases.append(f"{verb} {adapter} on {subject}" if adapter else f"{verb} {subject}")
    return phrases


def _names(names: Sequence[str]) -> str:
    shown = ", ".join(names[:_MAX_NAMES])
    return shown + (f" +{len(names) - _MAX_NAMES} more" if len(names) > _MAX_NAMES else "")


def _subject(action: Action) -> str:
    return f"{action.adapter} on {action.target}" if action.adapter else action.target


def _first_line(text: str) -> str:
    return text.strip().splitlines()[0] if text.strip() else "no reason given"
