"""diff(desired, observed) → plan: table-driven cases named by behaviour."""

from __future__ import annotations

import dataclasses

import pytest

from fleetspec.compile import desired
from fleetspec.drivers import base
from fleetspec.reconcile import diff, observed
from fleetspec.reconcile.plan import Disruption, Kind

ARGV = ("vllm", "serve", "tiny", "--max-model-len", "4096", "--enable-lora")


def spec(argv=ARGV, name="demo-main-0") -> desired.ContainerSpec:
    return desired.ContainerSpec(name=name, image="fleetspec/sim:1", argv=argv, env={"A": "1"})


def want(replicas: dict, router=None, router_config=None) -> desired.DesiredState:
    built = {}
    for (server, index), (container, adapters) in replicas.items():
        built[(server, index)] = desired.DesiredReplica(server, index, container, adapters, 8000 + index)
    return desired.DesiredState("demo", built, router, router_config)


def container(key, spec_hash, status="running", cid=None, exit_code=None, started="2026-01-01T00:00:00"):
    server, index = key
    return base.ObservedContainer(
        id=cid or f"id-{server}-{index}", name=f"demo-{server}-{index}", image="fleetspec/sim:1", status=status,
        health=None, fleet="demo", server=server, replica=index, spec_hash=spec_hash, role="engine",
        exit_code=exit_code, started_at=started,
    )


def have(replicas: dict, strays=(), router=None, router_config_hash=None) -> observed.ObservedState:
    built = {}
    for key, (spec_hash, adapters, status) in replicas.items():
        c = container(key, spec_hash, status=status, exit_code=137 if status == "exited" else None)
        built[key] = observed.ObservedReplica(c, "http://127.0.0.1:8000", adapters is not None, adapters)
    return observed.ObservedState("demo", built, tuple(strays), router, router_config_hash)


MAIN0 = ("main", 0)
H = spec().spec_hash()
CHANGED = spec(argv=(*ARGV[:4], "8192", ARGV[5]))


def kinds(plan):
    return [(a.kind, a.target, a.adapter) for a in plan.actions]


CASES = {
    "nothing running: create the replica, then load its adapters": (
        want({MAIN0: (spec(), {"code--1": "/a/code/1"})}), have({}),
        [(Kind.CREATE, "main/0", None), (Kind.LOAD_ADAPTER, "main/0", "code--1")],
    ),
    "everything matches: no actions": (
        want({MAIN0: (spec(), {"code--1": "/a/code/1"})}), have({MAIN0: (H, {"code--1": "/a/code/1"}, "running")}),
        [],
    ),
    "a new adapter is loaded hot": (
        want({MAIN0: (spec(), {"code--1": "/a/code/1", "sql--1": "/a/sql/1"})}),
        have({MAIN0: (H, {"code--1": "/a/code/1"}, "running")}),
        [(Kind.LOAD_ADAPTER, "main/0", "sql--1")],
    ),
    "a version bump loads the new name before unloading the old": (
        want({MAIN0: (spec(), {"code--2": "/a/code/2"})}), have({MAIN0: (H, {"code--1": "/a/code/1"}, "running")}),
        [(Kind.LOAD_ADAPTER, "main/0", "code--2"), (Kind.UNLOAD_ADAPTER, "main/0", "code--1")],
    ),
    "a changed engine flag replaces the container and reloads adapters": (
        want({MAIN0: (CHANGED, {"code--1": "/a/code/1"})}), have({MAIN0: (H, {"code--1": "/a/code/1"}, "running")}),
        [(Kind.REPLACE, "main/0", None), (Kind.LOAD_ADAPTER, "main/0", "code--1")],
    ),
    "an exited container is replaced": (
        want({MAIN0: (spec(), {})}), have({MAIN0: (H, None, "exited")}),
        [(Kind.REPLACE, "main/0", None)],
    ),
    "an engine that does not answer yet gets its adapters planned": (
        want({MAIN0: (spec(), {"code--1": "/a/code/1"})}), have({MAIN0: (H, None, "running")}),
        [(Kind.LOAD_ADAPTER, "main/0", "code--1")],
    ),
    "scaling down removes the extra replica": (
        want({MAIN0: (spec(), {})}),
        have({MAIN0: (H, {}, "running"), ("main", 1): (H, {}, "running")}),
        [(Kind.REMOVE, "main/1", None)],
    ),
    "an adapter loaded from another path is reloaded": (
        want({MAIN0: (spec(), {"code--1": "/a/code/1"})}), have({MAIN0: (H, {"code--1": "/elsewhere"}, "running")}),
        [(Kind.LOAD_ADAPTER, "main/0", "code--1")],
    ),
}


@pytest.mark.parametrize("case", list(CASES), ids=list(CASES))
def test_diff(case):
    wanted, observed_state, expected = CASES[case]
    assert kinds(diff.diff(wanted, observed_state)) == expected


def test_stray_containers_of_the_fleet_are_removed():
    stray = container(("main", 0), H, cid="old")
    plan = diff.diff(want({MAIN0: (spec(), {})}), have({MAIN0: (H, {}, "running")}, strays=[stray]))
    assert [(a.kind, a.container_id) for a in plan.actions] == [(Kind.REMOVE, "old")]


def test_replace_reason_names_the_changed_flag_when_the_last_spec_is_known():
    plan = diff.diff(want({MAIN0: (CHANGED, {})}), have({MAIN0: (H, {}, "running")}), last_applied={MAIN0: spec()})
    (action,) = plan.actions
    assert action.changes == ("--max-model-len 4096 → 8192",)
    assert action.disruption is Disruption.RESTART


def test_router_update_when_its_config_hash_differs():
    router = spec(argv=("python", "-m", "fleetspec.router"), name="demo-router")
    router_container = dataclasses.replace(container(("x", 0), router.spec_hash()), role="router",
                                           server=None, replica=None, name="demo-router")
    wanted = want({}, router=router, router_config={"rules": [1]})
    same = have({}, router=router_container, router_config_hash=wanted.router_config_hash())
    stale = have({}, router=router_container, router_config_hash="old")
    assert diff.diff(wanted, same).actions == ()
    (action,) = diff.diff(wanted, stale).actions
    assert (action.kind, action.disruption) == (Kind.UPDATE_ROUTER, Disruption.HOT)


def test_plan_summary_counts_every_kind():
    plan = diff.diff(want({MAIN0: (CHANGED, {"code--2": "/a/code/2"})}),
                     have({MAIN0: (H, {"code--1": "/a/code/1"}, "running"), ("main", 1): (H, {}, "running")}))
    assert plan.summary() == "Plan: 0 to create, 1 to replace, 1 to remove, 1 adapter to load, 0 to unload."
    assert plan.to_json()["restarts"] == 2


def test_the_container_with_the_slots_own_name_wins_over_a_newer_duplicate():
    own = dataclasses.replace(container(MAIN0, "old-hash", cid="own", started="2026-01-01"), name="demo-main-0")
    duplicate = dataclasses.replace(container(MAIN0, H, cid="dup", started="2026-02-01"), name="demo-main-0-by-hand")
    have = observed.assemble("demo", [duplicate, own], lambda c: ("http://x", True, {}, None))
    assert have.replicas[MAIN0].container.id == "own"  # the replace removes it, then re-creates its name
    assert [s.id for s in have.strays] == ["dup"]
    plan = diff.diff(want({MAIN0: (spec(), {})}), have)
    assert [(a.kind, a.container_id) for a in plan.actions] == [(Kind.REPLACE, "own"), (Kind.REMOVE, "dup")]


@pytest.mark.parametrize(("started", "silent_for_s", "replaced"), [
    ("2026-01-01T00:00:00", 599, False),  # still inside the 600 s startup budget: it is loading
    ("2026-01-01T00:00:00", 601, True),  # past it: the engine died behind its process, or hangs
    ("2026-01-01T00:00:00.123456789Z", 601, True),  # Docker's nanoseconds and Z
])
def test_an_engine_silent_past_its_startup_budget_is_replaced(started, silent_for_s, replaced):
    import datetime

    silent = observed.ObservedReplica(container(MAIN0, H, started=started), "http://127.0.0.1:8000", False, None)
    now = datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC) + datetime.timedelta(seconds=silent_for_s)
    plan = diff.diff(want({MAIN0: (spec(), {"a": "/a"})}), observed.ObservedState("demo", {MAIN0: silent}), now=now)
    assert (plan.actions[0].kind is Kind.REPLACE) is replaced
    if replaced:
        assert "has not answered /health in the 601 s since it started" in plan.actions[0].reason
    assert diff.diff(want({MAIN0: (spec(), {"a": "/a"})}), observed.ObservedState("demo", {MAIN0: silent})
                     ).actions[0].kind is Kind.LOAD_ADAPTER  # without a clock (file vs file) nothing is judged


def test_replacing_the_only_running_replica_is_an_interruption_with_its_startup_budget():
    plan = diff.diff(want({MAIN0: (CHANGED, {})}), have({MAIN0: (H, {}, "running")}))
    assert [(i.server, i.up_to_s) for i in plan.interruptions] == [("main", 600)]
    assert "one replica" in plan.interruptions[0].describe()
    assert plan.to_json()["interruptions"][0]["server"] == "main"


def test_a_second_running_replica_or_a_new_one_means_no_interruption():
    two = want({MAIN0: (CHANGED, {}), ("main", 1): (CHANGED, {})})
    rolling = diff.diff(two, have({MAIN0: (H, {}, "running"), ("main", 1): (H, {}, "running")}))
    assert [a.kind for a in rolling.actions].count(Kind.REPLACE) == 2 and rolling.interruptions == ()
    scaling = diff.diff(two, have({MAIN0: (H, {}, "running")}))  # the new replica starts first, then serves
    assert scaling.interruptions == ()
    dead = diff.diff(want({MAIN0: (spec(), {})}), have({MAIN0: (H, None, "exited")}))
    assert dead.interruptions == ()  # nothing serves now: restarting it interrupts nothing


def test_on_demand_adapters_are_neither_loaded_nor_unloaded():
    wanted = want({MAIN0: (spec(), {"code--1": "/a/code/1"})})
    replica = wanted.replicas[MAIN0]
    wanted.replicas[MAIN0] = dataclasses.replace(replica, on_demand={"sql--1": "/a/sql/1"})
    loaded = have({MAIN0: (H, {"code--1": "/a/code/1", "sql--1": "/a/sql/1", "old--1": "/a/old/1"}, "running")})
    plan = diff.diff(wanted, loaded)
    assert kinds(plan) == [(Kind.UNLOAD_ADAPTER, "main/0", "old--1")]
    assert plan.actions[0].path == "/a/old/1"  # apply can name (and keep) the version that still serves
