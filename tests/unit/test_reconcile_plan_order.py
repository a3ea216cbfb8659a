"""Plan order and steps: a replaced replica gets its adapters back before the next one is touched."""

from __future__ import annotations

from fleetspec.reconcile import plan
from fleetspec.reconcile.plan import Action, Kind


def act(kind: Kind, target: str, adapter: str | None = None) -> Action:
    server, _, replica = target.partition("/")
    return Action(kind, target, "because", server=server if replica else None,
                  replica=int(replica) if replica else None, adapter=adapter)


def test_each_replaced_replica_is_followed_by_its_own_loads():
    actions = [act(Kind.REPLACE, "main/0"), act(Kind.REPLACE, "main/1"), act(Kind.LOAD_ADAPTER, "main/0", "a"),
               act(Kind.LOAD_ADAPTER, "main/1", "a"), act(Kind.UPDATE_ROUTER, "router"),
               act(Kind.LOAD_ADAPTER, "other/0", "b"), act(Kind.UNLOAD_ADAPTER, "other/0", "c")]
    ordered = plan.ordered(actions)
    assert [(a.kind, a.target) for a in ordered] == [
        (Kind.REPLACE, "main/0"), (Kind.LOAD_ADAPTER, "main/0"), (Kind.REPLACE, "main/1"),
        (Kind.LOAD_ADAPTER, "main/1"), (Kind.LOAD_ADAPTER, "other/0"), (Kind.UPDATE_ROUTER, "router"),
        (Kind.UNLOAD_ADAPTER, "other/0")]
    steps = plan.replica_steps(ordered)
    assert [[(a.kind, a.target) for a in step] for step in steps] == [
        [(Kind.REPLACE, "main/0"), (Kind.LOAD_ADAPTER, "main/0")],
        [(Kind.REPLACE, "main/1"), (Kind.LOAD_ADAPTER, "main/1")],
        [(Kind.LOAD_ADAPTER, "other/0"), (Kind.UPDATE_ROUTER, "router"), (Kind.UNLOAD_ADAPTER, "other/0")]]


def test_hot_only_plans_are_one_step():
    actions = plan.ordered([act(Kind.LOAD_ADAPTER, "main/0", "a"), act(Kind.UNLOAD_ADAPTER, "main/0", "b")])
    assert len(plan.replica_steps(actions)) == 1
