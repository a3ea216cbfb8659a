"""Adapter actions run on every engine at once, each engine's own actions in plan order."""

from __future__ import annotations

import dataclasses
import threading

from fleetspec.reconcile import fanout
from fleetspec.reconcile.plan import Kind


@dataclasses.dataclass(frozen=True)
class Step:
    kind: Kind
    target: str
    name: str


def test_loads_on_different_engines_run_at_the_same_time():
    """Each of three engines' loads waits until all three are in flight: one by one it would never get there."""
    everyone = threading.Barrier(3, timeout=10)
    steps = [Step(Kind.LOAD_ADAPTER, f"s{i}/0", "a") for i in range(3)]

    def load(step):
        everyone.wait()
        return step.target

    assert fanout.run_batched(steps, load, (Kind.LOAD_ADAPTER,)) == ["s0/0", "s1/0", "s2/0"]


def test_one_engines_actions_stay_in_order_and_phases_do_not_overlap():
    log, lock = [], threading.Lock()
    steps = [Step(Kind.LOAD_ADAPTER, "s0/0", "new-a"), Step(Kind.LOAD_ADAPTER, "s1/0", "new-a"),
             Step(Kind.LOAD_ADAPTER, "s0/0", "new-b"), Step(Kind.UPDATE_ROUTER, "router", "router"),
             Step(Kind.UNLOAD_ADAPTER, "s0/0", "old"), Step(Kind.UNLOAD_ADAPTER, "s1/0", "old")]

    def run(step):
        with lock:
            log.append((step.target, step.name))
        return step.name

    outcomes = fanout.run_batched(steps, run, (Kind.LOAD_ADAPTER, Kind.UNLOAD_ADAPTER))

    assert outcomes == [s.name for s in steps]  # outcomes in plan order, whatever finished first
    s0 = [name for target, name in log if target == "s0/0"]
    assert s0 == ["new-a", "new-b", "old"]
    router_at = log.index(("router", "router"))
    assert all(name.startswith("new") for _, name in log[:router_at])  # every load before the router moves
    assert all(name == "old" for _, name in log[router_at + 1:])


def test_other_actions_run_one_by_one_in_order():
    steps = [Step(Kind.CREATE, "s0/0", "c0"), Step(Kind.CREATE, "s1/0", "c1"), Step(Kind.REMOVE, "s2/0", "r")]
    running, seen = [], []

    def run(step):
        running.append(step.name)
        seen.append(len(running))
        running.remove(step.name)
        return step.name

    assert fanout.run_batched(steps, run, (Kind.LOAD_ADAPTER,)) == ["c0", "c1", "r"]
    assert seen == [1, 1, 1]
