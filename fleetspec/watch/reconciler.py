"""The watch loop's view of the reconcile pipeline: `reconcile.session` bound to one fleet file.

The one policy added on top of `fleetspec apply`: adapters are not loaded onto an engine that runs
but does not answer yet (a model still loading, an engine hung). `apply` would wait for it, which
is right for a command a person runs once, but would stall a loop that also has other replicas to
repair. Those loads wait for a cycle in which the engine answers.
"""

from __future__ import annotations

import dataclasses
import pathlib
from collections.abc import Callable

from fleetspec.reconcile import apply as apply_mod
from fleetspec.reconcile import observed, session
from fleetspec.reconcile import plan as plan_mod
from fleetspec.reconcile.plan import Kind

COMMAND = "fleetspec watch"


class SessionReconciler:
    def __init__(self, path: str | pathlib.Path):
        self.path = pathlib.Path(path)
        self._driver = None
        self._driver_for: tuple[str, str] | None = None  # (runtime target, fleet name) of _driver

    def prepare(self) -> session.Prepared:
        return session.prepare(self.path)

    def driver(self, prepared: session.Prepared):
        """One driver per (runtime, fleet name): the local driver reaps the processes it started."""
        spec = prepared.fleet.spec
        wanted = (spec.runtime.target, spec.name)
        if self._driver is None or self._driver_for != wanted:
            self._driver = session.open_driver(prepared)
            self._driver_for = wanted
        return self._driver

    def plan(self, prepared: session.Prepared) -> plan_mod.ReconcilePlan:
        reconcile_plan, have = session.live_plan(prepared, self.driver(prepared))
        return defer_unanswered_loads(reconcile_plan, have)

    def apply(self, prepared: session.Prepared, reconcile_plan: plan_mod.ReconcilePlan,
              progress: Callable[[str], None]) -> apply_mod.ApplyResult:
        result, stale = session.apply(prepared, self.driver(prepared), reconcile_plan, progress=progress,
                                      command=COMMAND)
        if stale:
            progress(f"note: {stale}")
        return result

    def destroy(self, prepared: session.Prepared) -> apply_mod.ApplyResult:
        driver, name = self.driver(prepared), prepared.fleet.spec.name
        return session.destroy(prepared.file, name, driver, session.destroy_plan(name, driver.observe(name)))


def defer_unanswered_loads(reconcile_plan: plan_mod.ReconcilePlan,
                           have: observed.ObservedState) -> plan_mod.ReconcilePlan:
    """Drop loads onto running engines that do not answer (and get no server action in this plan)."""
    acted_on = {a.target for a in reconcile_plan.actions if a.kind in (Kind.CREATE, Kind.REPLACE)}
    silent = {
        f"{key[0]}/{key[1]}" for key, replica in have.replicas.items()
        if replica.container.running and replica.adapters is None
    } - acted_on
    if not silent:
        return reconcile_plan
    kept = tuple(a for a in reconcile_plan.actions if not (a.kind is Kind.LOAD_ADAPTER and a.target in silent))
    if len(kept) == len(reconcile_plan.actions):
        return reconcile_plan
    one = len(silent) == 1
    note = (f"{', '.join(sorted(silent))} " + ("runs but does not answer yet; its adapters are loaded once it does"
                                              if one else "run but do not answer yet; their adapters are loaded "
                                              "once they do"))
    return dataclasses.replace(reconcile_plan, actions=kept, notes=(*reconcile_plan.notes, note))
