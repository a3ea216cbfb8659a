"""Desired vs observed → a ReconcilePlan. Pure.

What decides what:
- a replica slot with no container → create;
- a container whose spec-hash label differs from the desired hash, or that is not running → replace
  (the old spec, when the state file has it, explains which fields changed);
- adapters are never part of the hash: on a live, answering engine the difference between desired
  and loaded served names becomes loads and unloads; an engine that does not answer yet gets every
  desired adapter planned (apply loads idempotently once it is healthy); on-demand adapters
  (`preload: false`) are allowed, not required: neither loaded nor unloaded while declared;
- fleet containers that no desired slot explains (a removed server, a scaled-down replica, a
  duplicate left by a crash) → remove.
"""

from __future__ import annotations

import datetime
import re

from fleetspec.compile import desired as desired_mod
from fleetspec.drivers import base
from fleetspec.reconcile import observed as observed_mod
from fleetspec.reconcile import plan
from fleetspec.reconcile.plan import Action, Kind


def diff(
    want: desired_mod.DesiredState,
    have: observed_mod.ObservedState,
    last_applied: dict[tuple[str, int], desired_mod.ContainerSpec] | None = None,
    now: datetime.datetime | None = None,
) -> plan.ReconcilePlan:
    """`now` (aware) lets the plan replace engines silent for longer than their startup budget;
    without it (diffing two files) a silent engine is only waited for."""
    actions: list[Action] = []
    last_applied = last_applied or {}
    for key, replica in want.replicas.items():
        target = f"{key[0]}/{key[1]}"
        current = have.replicas.get(key)
        server_action = (_server_action(key, target, replica, current, last_applied.get(key))
                         or _silent_engine(key, target, replica, current, now))
        if server_action is not None:
            actions.append(server_action)
            actions.extend(_loads(key, target, replica, {}, "the new server needs it"))
            continue
        loaded = current.adapters
        if loaded is None:
            actions.extend(_loads(key, target, replica, {}, "the engine is not answering yet; load once healthy"))
            continue
        actions.extend(_loads(key, target, replica, loaded, "declared in the fleet file"))
        actions.extend(_unloads(key, target, replica, loaded))
    actions.extend(_removals(want, have))
    if want.router is not None and _router_changed(want, have):
        actions.append(Action(Kind.UPDATE_ROUTER, "router", _router_reason(want, have)))
    return plan.ReconcilePlan(want.fleet, plan.ordered(actions), interruptions=_interruptions(want, have, actions))


def _interruptions(want, have, actions: list[Action]) -> tuple[plan.Interruption, ...]:
    """Servers whose only running replica restarts: with a second one running (or a new one started
    first), apply drains and replaces one at a time and another serves; alone, the server is down
    until it is back."""
    replaced: dict[str, set[int]] = {}
    created: set[str] = set()  # a new replica starts before any is replaced (plan order), then serves
    for action in actions:
        if action.kind is Kind.REPLACE and action.server is not None:
            replaced.setdefault(action.server, set()).add(action.replica)
        elif action.kind is Kind.CREATE and action.server is not None:
            created.add(action.server)
    found = []
    for server, replicas in replaced.items():
        running = {key[1] for key, current in have.replicas.items()
                   if key[0] == server and current.container.running}
        if len(running) == 1 and running <= replicas and server not in created:
            budget = max(r.startup_budget_s for key, r in want.replicas.items() if key[0] == server)
            found.append(plan.Interruption(server, budget))
    return tuple(found)


def _server_action(key, target, replica, current, last) -> Action | None:
    spec_hash = replica.container.spec_hash()
    if current is None:
        noun = base.runtime_noun(replica.container.image)
        return Action(Kind.CREATE, target, f"no {noun} runs for this replica", server=key[0], replica=key[1])
    container = current.container
    if container.spec_hash != spec_hash:
        changes = describe_changes(last, replica.container) if last is not None else ()
        return Action(Kind.REPLACE, target, "its configuration changed", server=key[0], replica=key[1],
                      container_id=container.id, changes=changes)
    if not container.running:
        return Action(Kind.REPLACE, target, f"its {_not_running(container)}",
                      server=key[0], replica=key[1], container_id=container.id)
    return None


def _silent_engine(key, target, replica, current, now: datetime.datetime | None) -> Action | None:
    """A running process whose engine has not answered /health for longer than it may take to
    start: real vLLM can die behind a live API server process (or hang), and only a restart helps."""
    if now is None or current is None or current.healthy or not current.container.running:
        return None
    started = _instant(current.container.started_at)
    if started is None:
        return None
    silent_s = (now - started).total_seconds()
    if silent_s <= replica.startup_budget_s:
        return None
    return Action(Kind.REPLACE, target, f"its engine has not answered /health in the {silent_s:.0f} s since it "
                  f"started (it may take {replica.startup_budget_s} s): it died behind a live process, or hangs",
                  server=key[0], replica=key[1], container_id=current.container.id)


def _instant(text: str | None) -> datetime.datetime | None:
    """A runtime's start time (Docker: RFC 3339 with nanoseconds and Z; local: isoformat)."""
    if not text or text.startswith("0001-"):
        return None
    trimmed = re.sub(r"(\.\d{6})\d+", r"\1", text.replace("Z", "+00:00"))
    try:
        instant = datetime.datetime.fromisoformat(trimmed)
    except ValueError:
        return None
    return instant if instant.tzinfo else instant.replace(tzinfo=datetime.UTC)


def adapter_actions(replica: desired_mod.DesiredReplica, loaded: dict[str, str]) -> tuple[Action, ...]:
    """Loads, then unloads, that bring one live engine from `loaded` to the replica's adapters: the
    part of `diff` an engine's own agent runs (`fleetspec agent`, one pod on Kubernetes)."""
    key = (replica.server, replica.replica)
    target = f"{key[0]}/{key[1]}"
    actions = _loads(key, target, replica, loaded, "declared in the adapter set") + _unloads(key, target, replica, loaded)
    return plan.ordered(actions)


def _loads(key, target, replica, loaded: dict[str, str], reason: str) -> list[Action]:
    actions = []
    for name, path in replica.adapters.items():
        if loaded.get(name) == path:
            continue
        why = reason if name not in loaded else f"loaded from {loaded[name]}, declared at {path}"
        actions.append(Action(Kind.LOAD_ADAPTER, target, why, server=key[0], replica=key[1], adapter=name, path=path))
    return actions


def _unloads(key, target, replica, loaded: dict[str, str]) -> list[Action]:
    """Loaded adapters the file no longer declares. On-demand ones (`preload: false`) stay: the router
    loaded them for traffic and vLLM's LRU evicts them. The path loaded is kept on the action: it is
    what the router falls back to if the successor fails to load."""
    return [
        Action(Kind.UNLOAD_ADAPTER, target, "no longer declared for this server", server=key[0], replica=key[1],
               adapter=name, path=loaded[name])
        for name in sorted(loaded)
        if name not in replica.adapters and name not in replica.on_demand
    ]


def _removals(want, have) -> list[Action]:
    actions = []
    for key, current in have.replicas.items():
        if key not in want.replicas:
            server_gone = all(k[0] != key[0] for k in want.replicas)
            reason = f"server {key[0]} is no longer declared" if server_gone else (
                f"server {key[0]} now has fewer replicas")
            actions.append(Action(Kind.REMOVE, f"{key[0]}/{key[1]}", reason, server=key[0], replica=key[1],
                                  container_id=current.container.id))
    for stray in have.strays:
        actions.append(Action(Kind.REMOVE, stray.name, f"a leftover {stray.noun} of this fleet that no replica explains",
                              container_id=stray.id))
    if want.router is None and have.router is not None:
        actions.append(Action(Kind.REMOVE, have.router.name, "the router is disabled", container_id=have.router.id))
    return actions


def _not_running(container) -> str:
    """"process exited with code 1", "container is paused": the runtime's own noun and status."""
    if container.status == "exited":
        code = f" with code {container.exit_code}" if container.exit_code is not None else ""
        return f"{container.noun} exited{code}"
    return f"{container.noun} is {container.status}"


def _router_changed(want, have) -> bool:
    return _router_reason(want, have) is not None


def _router_reason(want, have) -> str | None:
    if have.router is None:
        return "no router runs yet"
    if not have.router.running:
        return f"the router {_not_running(have.router)}"
    if have.router.spec_hash != want.router.spec_hash():
        return f"the router's {have.router.noun} settings changed"
    if have.router_config_hash != want.router_config_hash():
        return "routes, versions or upstreams changed"
    return None


def describe_changes(old: desired_mod.ContainerSpec, new: desired_mod.ContainerSpec) -> tuple[str, ...]:
    """Human lines for what differs between two container specs (flags, env, image, GPUs, ports)."""
    lines: list[str] = []
    if old.image != new.image:
        lines.append(f"image {old.image} → {new.image}")
    old_flags, new_flags = _flags(old.argv), _flags(new.argv)
    for flag in sorted(set(old_flags) | set(new_flags)):
        before, after = old_flags.get(flag), new_flags.get(flag)
        if before != after:
            lines.append(f"{flag} {_show(before)} → {_show(after)}")
    old_env, new_env = old.env_dict, new.env_dict
    for name in sorted(set(old_env) | set(new_env)):
        if old_env.get(name) != new_env.get(name):
            lines.append(f"env {name} {_show(old_env.get(name))} → {_show(new_env.get(name))}")
    if old.gpu_ids != new.gpu_ids:
        lines.append(f"GPUs {','.join(old.gpu_ids) or 'none'} → {','.join(new.gpu_ids) or 'none'}")
    if old.ports != new.ports or old.volumes != new.volumes:
        lines.append("ports or mounts changed")
    return tuple(lines)


def _flags(argv: tuple[str, ...]) -> dict[str, str]:
    """`--flag value...` pairs (a flag without value maps to "on"); positional words keyed by index."""
    flags: dict[str, str] = {}
    current = None
    for index, word in enumerate(argv):
        if word.startswith("--"):
            current = word
            flags[current] = "on"
        elif current is not None:
            flags[current] = word if flags[current] == "on" else f"{flags[current]} {word}"
        else:
            flags[f"argv[{index}]"] = word
    return flags


def _show(value: str | None) -> str:
    return "(unset)" if value is None else value
