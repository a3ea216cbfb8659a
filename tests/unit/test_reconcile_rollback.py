"""Automatic rollback in apply: a specialist moves to its new version only where that version
loaded everywhere; otherwise the router stays on the old one and no replica unloads it."""

from __future__ import annotations

from fleetspec.compile import desired
from fleetspec.engine_api import contract
from fleetspec.reconcile import apply, plan
from fleetspec.reconcile.plan import Action, Kind
from fleetspec.spec import models

SPEC = models.FleetSpec.model_validate({
    "name": "demo", "base_model": {"id": "fleetspec/tiny-test-llama"}, "gpus": [{"type": "sim", "count": 1}],
    "servers": [{"name": "main", "replicas": 2, "lora": {"max_loras": 2}}],
    "specialists": [{"name": "python", "version": "2.0.0", "path": "/a/python/2", "previous_version": "1.0.0",
                     "versions": [{"version": "1.0.0", "path": "/a/python/1"}]},
                    {"name": "sql", "version": "1.1.0", "path": "/a/sql/1.1"}],
})


class FakeEngine:
    def __init__(self, refuses: set[str]):
        self.refuses, self.calls = refuses, []

    def wait_healthy(self, deadline, clock) -> None:
        return None

    def load_adapter(self, name: str, path: str) -> bool:
        self.calls.append(("load", name))
        if name in self.refuses:
            raise contract.EngineError(f"The engine could not load adapter {name}", "http://e", 500,
                                       "incomplete metadata, file not fully covered")
        return True

    def unload_adapter(self, name: str) -> bool:
        self.calls.append(("unload", name))
        return True


class FakeRouter:
    drain_timeout_s = 30.0

    def __init__(self, engines=None):
        self.published, self.engines = [], engines or {}

    def update(self, held_back=None) -> str:
        self.published.append(held_back)
        return "router serves the new config"

    def settle(self, server: str, replica: int, served_name: str) -> bool:
        self.engines[8000 + replica].calls.append(("settled", served_name))
        return True


def run(refused_on_1: set[str]):
    container = desired.ContainerSpec(name="demo-main-0", image="fleetspec/sim:1", argv=("vllm",), env={})
    replicas = {("main", i): desired.DesiredReplica("main", i, container, {"python--2.0.0": "/a/python/2",
                                                                           "sql--1.1.0": "/a/sql/1.1"}, 8000 + i)
                for i in (0, 1)}
    want = desired.DesiredState("demo", replicas, None, None)
    engines = {8000: FakeEngine(set()), 8001: FakeEngine(refused_on_1)}
    router = FakeRouter(engines)
    applier = apply.Applier(None, want, router=router, spec=SPEC)
    applier._engine = lambda replica: engines[replica.port]
    actions = []
    for i in (0, 1):
        actions += [Action(Kind.LOAD_ADAPTER, f"main/{i}", "new", "main", i, "python--2.0.0", "/a/python/2"),
                    Action(Kind.LOAD_ADAPTER, f"main/{i}", "new", "main", i, "sql--1.1.0", "/a/sql/1.1"),
                    Action(Kind.UNLOAD_ADAPTER, f"main/{i}", "old", "main", i, "python--1.0.0", "/a/python/1"),
                    Action(Kind.UNLOAD_ADAPTER, f"main/{i}", "old", "main", i, "sql--1.0.0", "/a/sql/1.0")]
    actions.append(Action(Kind.UPDATE_ROUTER, "router", "new versions"))
    result = applier.run(plan.ReconcilePlan("demo", plan.ordered(actions)))
    return result, router, engines


def test_a_version_that_failed_on_one_replica_keeps_the_router_and_every_replica_on_the_old_one():
    result, router, engines = run({"python--2.0.0"})

    assert not result.ok
    assert [(o.action.target, o.action.adapter) for o in result.failed] == [("main/1", "python--2.0.0")]
    assert "incomplete metadata" in result.failed[0].message  # the engine's own words
    assert router.published == [{"python": ("1.0.0", "/a/python/1")}]  # sql moved on: it loaded everywhere
    for engine in engines.values():
        assert ("unload", "python--1.0.0") not in engine.calls and ("unload", "sql--1.0.0") in engine.calls
    kept = [o for o in result.outcomes if o.action.adapter == "python--1.0.0"]
    assert {o.status for o in kept} == {apply.SKIPPED}
    assert "did not load on main/1" in next(o.message for o in kept if o.action.target == "main/0")


def test_when_every_load_succeeds_the_router_moves_and_old_versions_go():
    result, router, engines = run(set())
    assert result.ok and router.published == [{}]
    assert all(("unload", "python--1.0.0") in e.calls for e in engines.values())


def test_each_unload_waits_until_the_router_has_nothing_in_flight_for_that_adapter_there():
    _, _, engines = run(set())

    for engine in engines.values():
        for name in ("python--1.0.0", "sql--1.0.0"):
            assert engine.calls.index(("settled", name)) == engine.calls.index(("unload", name)) - 1
