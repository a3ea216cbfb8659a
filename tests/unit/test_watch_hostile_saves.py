"""`watch` given a hostile save (absurd numbers) by a real fleet file: the save is refused at once,
the last good version keeps being enforced, and the next valid save is applied (issue 15).

The file is read, validated and planned by the real `session.prepare`; only the running fleet is
faked (adapters loaded on one replica), on the fake clock of test_watch_loop.
"""

from __future__ import annotations

import pathlib
import shutil
import time

from test_watch_loop import Captured, FakeWaker  # noqa: E402  (the watch loop's own fakes)

from fleetspec.reconcile import apply as apply_mod
from fleetspec.reconcile import plan as plan_mod
from fleetspec.reconcile import session
from fleetspec.reconcile.plan import Action, Kind
from fleetspec.watch import loop

ROOT = pathlib.Path(__file__).resolve().parents[2]
HOSTILE = {
    "replicas: 2 ": "replicas: 100000000 ",
    "    count: 1\n": "    count: 10000000000\n",
    "    - name: signals": "    - hash_clusters: {num_clusters: 1000000000000, map: {c0: sql}}\n    - name: signals",
}


class RealFileFleet:
    """prepare() is fleetspec's own; the fleet is a set of adapters loaded on `main/0`."""

    def __init__(self, path: pathlib.Path, waker: FakeWaker):
        self.path, self.waker = path, waker
        self.loaded: set[str] = set()
        self.applies: list[tuple[float, list[str]]] = []
        self.prepare_seconds: list[float] = []

    def save(self, text: str) -> None:
        self.path.write_text(text)

    def prepare(self):
        started = time.perf_counter()
        try:
            return session.prepare(self.path)
        finally:
            self.prepare_seconds.append(time.perf_counter() - started)

    def plan(self, prepared) -> plan_mod.ReconcilePlan:
        wanted = {s.name for s in prepared.fleet.spec.specialists}
        actions = [
            Action(
                Kind.LOAD_ADAPTER, "main/0", "declared", server="main", replica=0, adapter=a, path=f"/a/{a}"
            )
            for a in sorted(wanted - self.loaded)
        ]
        actions += [
            Action(Kind.UNLOAD_ADAPTER, "main/0", "undeclared", server="main", replica=0, adapter=a)
            for a in sorted(self.loaded - wanted)
        ]
        return plan_mod.ReconcilePlan(prepared.fleet.spec.name, plan_mod.ordered(actions))

    def apply(self, prepared, reconcile_plan, progress) -> apply_mod.ApplyResult:
        self.applies.append((self.waker.now, [f"{a.kind.value} {a.adapter}" for a in reconcile_plan.actions]))
        for action in reconcile_plan.actions:
            (self.loaded.add if action.kind is Kind.LOAD_ADAPTER else self.loaded.discard)(action.adapter)
        return apply_mod.ApplyResult(
            tuple(apply_mod.Outcome(a, apply_mod.OK, "done") for a in reconcile_plan.actions)
        )

    def destroy(self, prepared) -> apply_mod.ApplyResult:
        return apply_mod.ApplyResult(())


def test_a_hostile_save_is_refused_at_once_and_the_next_valid_save_is_applied(tmp_path):
    shutil.copytree(ROOT / "adapters", tmp_path / "adapters")
    good = (ROOT / "fleet.yaml").read_text()
    hostile = good
    for old, new in HOSTILE.items():
        assert old in hostile
        hostile = hostile.replace(old, new)
    fixed = (
        good.replace("  - name: shell\n", "  - name: shell-old\n").split("  - name: shell-old\n")[0]
        + "routing:"
        + good.split("routing:")[1]
    )  # the `shell` specialist removed

    path = tmp_path / "fleet.yaml"
    waker = FakeWaker()
    fleet = RealFileFleet(path, waker)
    fleet.save(good)
    out = Captured()
    controller = loop.Loop(
        fleet, waker, out.output(), loop.Settings(interval_s=10.0, file_label="fleet.yaml")
    )
    waker.call_at(20.0, lambda: fleet.save(hostile))
    waker.at(20.0, loop.FILE, "fleet.yaml changed")
    waker.call_at(25.0, lambda: fleet.loaded.discard("python"))  # drift while the file is refused
    waker.call_at(40.0, lambda: fleet.save(fixed))
    waker.at(40.0, loop.FILE, "fleet.yaml changed")
    waker.at(45.0, loop.SIGNAL, "SIGTERM")
    controller.run()

    # The hostile save: every absurd number named, located, once; reading it took no time at all.
    shown = out.diagnostics[0]
    assert sorted(d.path for d in shown) == [
        "gpus[0].count",
        "routing.rules[2].hash_clusters.num_clusters",
        "servers[0].replicas",
    ]
    assert all(d.location is not None and d.location.file == str(path) for d in shown)
    assert max(fleet.prepare_seconds) < 5.0  # generous for a shared box; the hang was unbounded
    refused = [c for c in out.cycles() if "woken by fleet.yaml changed" in c][0]
    assert "fleet.yaml is invalid (3 errors, shown above); the last good version stays in force" in refused
    # The last good version is still enforced: the drift is repaired at the next periodic check.
    assert any(when > 25.0 and actions == ["load-adapter python"] for when, actions in fleet.applies)
    # And the next valid save is applied.
    assert "fleet.yaml is valid again" in out.cycles()[-1]
    assert fleet.applies[-1][1] == ["unload-adapter shell"]
    assert fleet.loaded == {"python", "sql"}
