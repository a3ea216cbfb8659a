"""`convergence.differences` is the one definition of "converged" (full path and fast path): it
must agree with the reconcile plan having nothing to do, on every case the diff tests describe."""

from __future__ import annotations

import dataclasses

import pytest
from test_reconcile_diff import CASES, MAIN0, H, container, have, spec, want

from fleetspec.reconcile import convergence, diff


def converged(wanted, observed_state) -> bool:
    return not convergence.differences(convergence.wanted_of(wanted), convergence.seen_of(observed_state))


def nothing_to_do(wanted, observed_state) -> bool:
    return not diff.diff(wanted, observed_state).has_changes


def answering(observed_state) -> bool:
    return all(r.adapters is not None for r in observed_state.replicas.values() if r.container.running)


@pytest.mark.parametrize("case", list(CASES), ids=list(CASES))
def test_converged_exactly_when_the_plan_has_nothing_to_do(case):
    wanted, observed_state, _ = CASES[case]
    if answering(observed_state):
        assert converged(wanted, observed_state) == nothing_to_do(wanted, observed_state)
    else:
        # An engine that does not answer yet may have nothing to load (apply has nothing to do),
        # but it serves nothing either: never recorded as converged.
        assert not converged(wanted, observed_state)


def test_an_engine_not_answering_yet_is_not_converged_even_with_nothing_to_load():
    wanted = want({MAIN0: (spec(), {})})
    silent = have({MAIN0: (H, None, "running")})
    assert nothing_to_do(wanted, silent)
    assert convergence.differences(convergence.wanted_of(wanted), convergence.seen_of(silent)) == [
        "main/0's engine does not answer /v1/models"]


def test_strays_and_routers_decide_as_the_plan_does():
    router = spec(argv=("python", "-m", "fleetspec.router"), name="demo-router")
    router_container = dataclasses.replace(container(("x", 0), router.spec_hash()), role="router", server=None,
                                           replica=None, name="demo-router", id="r0")
    wanted = want({MAIN0: (spec(), {})}, router=router, router_config={"rules": [1]})
    base = {MAIN0: (H, {}, "running")}
    states = {
        "matching": have(base, router=router_container, router_config_hash=wanted.router_config_hash()),
        "stale routes": have(base, router=router_container, router_config_hash="old"),
        "no router": have(base),
        "a stray": have(base, strays=(container(("old", 0), H, cid="s0"),), router=router_container,
                        router_config_hash=wanted.router_config_hash()),
    }
    for name, state in states.items():
        assert converged(wanted, state) == nothing_to_do(wanted, state), name
    assert converged(wanted, states["matching"])
    without_router = want({MAIN0: (spec(), {})})
    assert not converged(without_router, states["matching"])  # a router the file no longer wants
    assert not nothing_to_do(without_router, states["matching"])


def test_the_wanted_facts_survive_the_record_round_trip():
    wanted = convergence.wanted_of(want({MAIN0: (spec(), {"code--1": "/a/code/1"})}))
    assert convergence.Wanted.from_json(wanted.to_json()) == wanted
