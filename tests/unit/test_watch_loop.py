"""The watch loop with a fake clock and a fake fleet: no sleeping, no processes, exact times."""

from __future__ import annotations

import dataclasses
import heapq
import itertools

import pytest

from fleetspec import errors
from fleetspec.reconcile import apply as apply_mod
from fleetspec.reconcile import plan as plan_mod
from fleetspec.reconcile.plan import Action, Kind
from fleetspec.watch import loop

# --- fakes -------------------------------------------------------------------------------------


class FakeWaker:
    """A clock that jumps straight to the next scheduled wake (or the timeout) instead of sleeping."""

    def __init__(self, until: float = 10_000.0):
        self.now = 0.0
        self.until = until  # a loop still running here is a bug: stop it instead of spinning
        self._queue: list = []
        self._seq = itertools.count()
        self._hooks: list = []

    def at(self, when: float, kind: str, detail: str = "") -> None:
        heapq.heappush(self._queue, (when, next(self._seq), loop.Wake(kind, detail or kind)))

    def call_at(self, when: float, hook) -> None:
        """Run `hook()` when the clock reaches `when` (a change in the world, not a wake)."""
        self._hooks.append((when, hook))

    def monotonic(self) -> float:
        return self.now

    def wait(self, timeout: float | None) -> list[loop.Wake]:
        deadline = self.now + timeout if timeout is not None else float("inf")
        if self._queue and self._queue[0][0] <= deadline:
            self._advance(max(self.now, self._queue[0][0]))
            wakes = []
            while self._queue and self._queue[0][0] <= self.now:
                wakes.append(heapq.heappop(self._queue)[2])
            return wakes
        if deadline == float("inf") or deadline > self.until:
            return [loop.Wake(loop.SIGNAL, "test over")]
        self._advance(deadline)
        return []

    def advance(self, seconds: float) -> None:
        self._advance(self.now + seconds)

    def _advance(self, when: float) -> None:
        self.now = when
        for entry in [h for h in self._hooks if h[0] <= when]:
            self._hooks.remove(entry)
            entry[1]()


@dataclasses.dataclass(frozen=True)
class FakePrepared:
    version: int
    adapters: frozenset[str]


def bad_file(message: str = "max_lora_rank must be one of 1, 8, 16") -> errors.SpecError:
    return errors.SpecError([errors.Diagnostic(
        errors.Severity.ERROR, "value-error", "servers[0].lora.max_lora_rank", message, "use 8",
        errors.Location("fleet.yaml", 21, 7))])


class FakeFleet:
    """One replica `main/0`; the fleet file is `self.file` (adapter names, or a SpecError)."""

    def __init__(self, waker: FakeWaker, adapters=("python",)):
        self.waker = waker
        self.file: frozenset[str] | errors.SpecError = frozenset(adapters)
        self.version = 1
        self.up = False
        self.loaded: set[str] = set()
        self.failing: set[str] = set()  # adapters whose load fails
        self.apply_s = 0.0  # how long each apply takes on the fake clock
        self.prepares: list[float] = []
        self.applies: list[tuple[float, list[str]]] = []  # (time, ["load python", ...])
        self.destroyed: list[FakePrepared] = []
        self.before_apply = None
        self.after_apply = None

    def save(self, content) -> None:
        self.file = frozenset(content) if not isinstance(content, errors.SpecError) else content
        self.version += 1

    def prepare(self) -> FakePrepared:
        self.prepares.append(self.waker.now)
        if isinstance(self.file, errors.SpecError):
            raise self.file
        return FakePrepared(self.version, self.file)

    def plan(self, prepared: FakePrepared) -> plan_mod.ReconcilePlan:
        actions = [] if self.up else [Action(Kind.CREATE, "main/0", "no container", server="main", replica=0)]
        actions += [Action(Kind.LOAD_ADAPTER, "main/0", "declared", server="main", replica=0, adapter=a, path=f"/a/{a}")
                    for a in sorted(prepared.adapters - self.loaded)]
        actions += [Action(Kind.UNLOAD_ADAPTER, "main/0", "undeclared", server="main", replica=0, adapter=a)
                    for a in sorted(self.loaded - prepared.adapters)]
        return plan_mod.ReconcilePlan("demo", plan_mod.ordered(actions))

    def apply(self, prepared, reconcile_plan, progress) -> apply_mod.ApplyResult:
        if self.before_apply:
            self.before_apply(progress)
        self.applies.append((self.waker.now, [f"{a.kind.value} {a.adapter or a.target}" for a in reconcile_plan.actions]))
        outcomes = []
        for action in reconcile_plan.actions:
            if action.kind is Kind.CREATE:
                self.up = True
            elif action.adapter in self.failing:
                outcomes.append(apply_mod.Outcome(action, apply_mod.FAILED, f"the engine refused {action.adapter}"))
                continue
            elif action.kind is Kind.LOAD_ADAPTER:
                self.loaded.add(action.adapter)
            else:
                self.loaded.discard(action.adapter)
            outcomes.append(apply_mod.Outcome(action, apply_mod.OK, "done"))
        self.waker.advance(self.apply_s)
        if self.after_apply:
            self.after_apply()
        return apply_mod.ApplyResult(tuple(outcomes))

    def destroy(self, prepared) -> apply_mod.ApplyResult:
        self.destroyed.append(prepared)
        self.up, self.loaded = False, set()
        action = Action(Kind.REMOVE, "demo-main-0", "destroyed", container_id="c1")
        return apply_mod.ApplyResult((apply_mod.Outcome(action, apply_mod.OK, "removed"),))


class Captured:
    def __init__(self):
        self.lines: list[str] = []
        self.diagnostics: list[list[errors.Diagnostic]] = []

    def output(self) -> loop.Output:
        return loop.Output(line=self.lines.append, diagnostics=lambda d: self.diagnostics.append(list(d)))

    def cycles(self) -> list[str]:
        return [line for line in self.lines if line.startswith("cycle ")]

    def changing_cycles(self) -> list[str]:
        return [line for line in self.cycles() if "no changes" not in line]


def make(settings: loop.Settings | None = None, adapters=("python",), until: float = 10_000.0):
    waker = FakeWaker(until)
    fleet = FakeFleet(waker, adapters)
    out = Captured()
    controller = loop.Loop(fleet, waker, out.output(), settings or loop.Settings(interval_s=1000.0,
                                                                                  file_label="fleet.yaml"))
    return waker, fleet, out, controller


# --- start, debounce ---------------------------------------------------------------------------


def test_first_cycle_applies_the_file_and_says_what_it_did():
    waker, fleet, out, controller = make()
    waker.at(5.0, loop.SIGNAL, "SIGTERM")
    assert controller.run() == 0
    assert fleet.applies == [(0.0, ["create main/0", "load-adapter python"])]
    assert out.cycles() == ["cycle 1, woken by watch started: started main/0; loaded python on main/0 (0.00 s)"]
    assert out.lines[-2:] == ["Stopping (SIGTERM).",
                              "Stopped watching; the fleet keeps running. `fleetspec destroy FILE` tears it down."]
    assert fleet.destroyed == []


def test_twenty_rapid_saves_cause_one_cycle_with_the_last_content():
    waker, fleet, out, controller = make()
    for i in range(20):  # one save every 10 ms, each adding an adapter
        waker.call_at(10.0 + i * 0.01, lambda i=i: fleet.save({"python", *(f"a{j}" for j in range(i + 1))}))
        waker.at(10.0 + i * 0.01, loop.FILE, "fleet.yaml changed")
    waker.at(30.0, loop.SIGNAL, "SIGTERM")
    controller.run()
    assert len(out.changing_cycles()) == 2  # the start, then one for the whole burst
    burst_time, actions = fleet.applies[1]
    assert burst_time == pytest.approx(10.19 + 0.3)  # quiet period after the last save
    assert len(actions) == 20  # a0 … a19, the final content
    assert out.cycles()[1].startswith("cycle 2, woken by fleet.yaml changed (×20): loaded a0 on main/0; ")
    assert fleet.prepares == [0.0, pytest.approx(10.49)]


def test_a_burst_that_never_goes_quiet_is_applied_every_max_delay():
    waker, fleet, out, controller = make()
    for i in range(50):  # a save every 100 ms for 5 s: never 300 ms of quiet
        waker.at(10.0 + i * 0.1, loop.FILE, "fleet.yaml changed")
    waker.at(30.0, loop.SIGNAL, "SIGTERM")
    controller.run()
    times = [t for t in fleet.prepares if t > 1]
    # 2 s after the burst's first save (10.0), again 2 s after the next burst's first (12.1), then
    # the quiet period after the last save (14.9).
    assert times == pytest.approx([12.0, 14.1, 15.2])


def test_invalid_content_during_a_burst_is_neither_applied_nor_reported():
    waker, fleet, out, controller = make()
    # A slow writer: half-written content at the 2 s mark, complete content when it goes quiet.
    for i in range(25):
        waker.at(10.0 + i * 0.1, loop.FILE, "fleet.yaml changed")
    waker.call_at(10.0, lambda: fleet.save(bad_file("half written")))
    waker.call_at(12.4, lambda: fleet.save({"python", "sql"}))
    waker.at(30.0, loop.SIGNAL, "SIGTERM")
    controller.run()
    assert out.diagnostics == []
    assert [t for t in fleet.prepares if t > 1] == pytest.approx([12.0, 12.7])  # forced read failed quietly
    assert fleet.applies[-1] == (pytest.approx(12.7), ["load-adapter sql"])
    assert len(out.cycles()) == 2


def test_saves_while_the_file_is_read_restart_the_quiet_period():
    waker, fleet, out, controller = make()
    waker.at(10.0, loop.FILE, "fleet.yaml changed")
    waker.call_at(10.3, lambda: waker.at(10.3, loop.FILE, "fleet.yaml changed"))  # lands during prepare
    waker.at(30.0, loop.SIGNAL, "SIGTERM")
    controller.run()
    assert [t for t in fleet.prepares if t > 1] == pytest.approx([10.3, 10.6])
    assert out.cycles()[1].startswith("cycle 2, woken by fleet.yaml changed (×2): no changes")


# --- broken edits ------------------------------------------------------------------------------


def test_broken_edit_is_reported_once_and_the_last_good_version_keeps_being_enforced():
    waker, fleet, out, controller = make(loop.Settings(interval_s=10.0, file_label="fleet.yaml"))
    broken = bad_file()
    waker.call_at(20.0, lambda: fleet.save(broken))
    waker.at(20.0, loop.FILE, "fleet.yaml changed")
    waker.call_at(25.0, lambda: fleet.loaded.discard("python"))  # drift: someone unloaded it
    waker.call_at(40.0, lambda: fleet.save(bad_file()))  # saved again, same mistake
    waker.at(40.0, loop.FILE, "fleet.yaml changed")
    waker.call_at(50.0, lambda: fleet.save({"python", "sql"}))
    waker.at(50.0, loop.FILE, "fleet.yaml changed")
    waker.at(55.0, loop.SIGNAL, "SIGTERM")
    controller.run()
    assert out.diagnostics == [broken.diagnostics]  # shown once, located as validate shows it
    cycles = out.cycles()
    assert cycles[2] == ("cycle 3, woken by fleet.yaml changed: fleet.yaml is invalid (1 error, shown above); "
                         "the last good version stays in force; fix it and save again; no changes (0.00 s)")
    # The drift at 25 s is repaired at the next tick (30.3 s) from the last good version.
    assert (pytest.approx(30.3), ["load-adapter python"]) in fleet.applies
    assert cycles[3] == ("cycle 4, woken by periodic check: fleet.yaml is still invalid (same problems as shown "
                         "before); the last good version stays in force; loaded python on main/0 (0.00 s)")
    assert cycles[4].startswith("cycle 5, woken by fleet.yaml changed: fleet.yaml is still invalid")
    assert cycles[5] == "cycle 6, woken by fleet.yaml changed: fleet.yaml is valid again; loaded sql on main/0 (0.00 s)"
    assert fleet.applies[-1] == (pytest.approx(50.3), ["load-adapter sql"])


def test_an_invalid_file_at_start_starts_nothing_and_once_exits_1():
    waker, fleet, out, controller = make(loop.Settings(once=True, file_label="fleet.yaml"))
    fleet.save(bad_file())
    assert controller.run() == 1
    assert fleet.applies == []
    assert out.cycles() == ["cycle 1, woken by watch started: fleet.yaml is invalid (1 error, shown above); "
                            "nothing is started from it; fix it and save again; no changes (0.00 s)"]


def test_once_exits_0_after_a_clean_cycle():
    waker, fleet, out, controller = make(loop.Settings(once=True))
    assert controller.run() == 0
    assert len(fleet.applies) == 1 and out.lines == [out.cycles()[0]]


# --- back-off ----------------------------------------------------------------------------------


def load_attempts(fleet: FakeFleet, adapter: str) -> list[float]:
    return [t for t, actions in fleet.applies if f"load-adapter {adapter}" in actions]


def test_a_failing_load_backs_off_exponentially_up_to_the_cap():
    waker, fleet, out, controller = make(adapters=("python", "bad"))
    fleet.failing = {"bad"}
    waker.at(400.0, loop.SIGNAL, "SIGTERM")
    controller.run()
    attempts = load_attempts(fleet, "bad")
    gaps = [round(b - a, 6) for a, b in itertools.pairwise(attempts)]
    assert gaps == [1, 2, 4, 8, 16, 32, 60, 60, 60, 60, 60]  # 0 1 3 … 363
    assert out.cycles()[0].endswith("FAILED to load bad on main/0 (retry in 1.0 s): the engine refused bad (0.00 s)")
    assert out.cycles()[1].startswith("cycle 2, woken by retry of bad on main/0: no changes; "
                                      "FAILED to load bad on main/0 (retry in 2.0 s)")
    assert fleet.loaded == {"python"}


def test_back_off_counts_from_the_end_of_a_slow_attempt():
    waker, fleet, out, controller = make(adapters=("bad",))
    fleet.failing = {"bad"}
    fleet.apply_s = 5.0  # each apply takes 5 s on the fake clock
    waker.at(40.0, loop.SIGNAL, "SIGTERM")
    controller.run()
    # Each attempt ends 5 s after it starts; the wait counts from there: 5+1, 11+2, 18+4, 27+8.
    assert load_attempts(fleet, "bad") == pytest.approx([0, 6, 13, 22, 35])


def test_back_off_resets_once_the_action_succeeded_and_stayed_converged():
    waker, fleet, out, controller = make(loop.Settings(interval_s=10.0, settle_s=10.0), adapters=("bad",))
    fleet.failing = {"bad"}
    waker.call_at(6.5, lambda: fleet.failing.clear())  # fixed after attempts at 0, 1, 3
    waker.call_at(40.0, lambda: (fleet.loaded.discard("bad"), fleet.failing.add("bad")))  # breaks again
    waker.at(60.0, loop.SIGNAL, "SIGTERM")
    controller.run()
    attempts = load_attempts(fleet, "bad")
    assert attempts[:4] == pytest.approx([0, 1, 3, 7])  # 4th try succeeds
    # Ticks at 17, 27, 37 see it converged; the streak is over. It breaks at 40 s: the tick
    # at 47 tries at once, and the retry after that comes 1 s later, not 16 s.
    assert attempts[4:] == pytest.approx([47, 48, 50, 54])


def test_a_success_needed_again_at_once_still_backs_off():
    waker, fleet, out, controller = make(adapters=("python",))
    flaps = iter(range(5))

    def unload_after_each_apply():
        if fleet.loaded and next(flaps, None) is not None:
            fleet.loaded.clear()  # an engine that drops the adapter right after loading it
            waker.at(waker.now + 0.01, loop.RUNTIME, "container demo-main-0 died")

    fleet.after_apply = unload_after_each_apply
    waker.at(100.0, loop.SIGNAL, "SIGTERM")
    controller.run()
    attempts = load_attempts(fleet, "python")
    gaps = [round(b - a, 6) for a, b in itertools.pairwise(attempts)]
    assert gaps[:4] == [1, 2, 4, 8]  # not one load per event


def test_one_failing_adapter_does_not_block_the_others():
    waker, fleet, out, controller = make(loop.Settings(interval_s=5.0), adapters=("python", "sql", "bad"))
    fleet.failing = {"bad"}
    waker.call_at(2.5, lambda: fleet.loaded.discard("sql"))  # drift while bad is backing off
    waker.at(6.0, loop.SIGNAL, "SIGTERM")
    controller.run()
    assert fleet.applies[0] == (0.0, ["create main/0", "load-adapter bad", "load-adapter python",
                                      "load-adapter sql"])
    assert fleet.loaded == {"python", "sql"}
    # At 3 bad is due again (2 s after 1) and sql is missing: both are tried in one apply.
    assert fleet.applies[2] == (pytest.approx(3.0), ["load-adapter bad", "load-adapter sql"])


def test_actions_waiting_for_back_off_do_not_hold_up_the_rest_of_a_cycle():
    waker, fleet, out, controller = make(loop.Settings(interval_s=1000.0), adapters=("python", "bad"))
    fleet.failing = {"bad"}
    # bad is tried at 0, 1, 3, 7, 15; python drifts away at 10.
    waker.call_at(10.0, lambda: fleet.loaded.discard("python"))
    waker.at(10.2, loop.RUNTIME, "container demo-main-0 changed health")
    waker.at(12.0, loop.SIGNAL, "SIGTERM")
    controller.run()
    assert fleet.applies[-1] == (pytest.approx(10.25), ["load-adapter python"])
    assert out.cycles()[-1] == ("cycle 5, woken by container demo-main-0 changed health: loaded python on main/0; "
                                "1 waiting for back-off (load bad on main/0; next in 4.8 s) (0.00 s)")


def test_a_save_gives_every_backed_off_action_a_fresh_try():
    waker, fleet, out, controller = make(adapters=("bad",))
    fleet.failing = {"bad"}
    waker.at(20.0, loop.FILE, "fleet.yaml changed")  # attempts so far 0 1 3 7 15; next 31
    waker.at(22.0, loop.SIGNAL, "SIGTERM")
    controller.run()
    assert load_attempts(fleet, "bad")[-2:] == pytest.approx([20.3, 21.3])


def test_cycles_that_cannot_observe_the_fleet_back_off_too():
    waker, fleet, out, controller = make(loop.Settings(interval_s=10.0))
    calls = []
    real_plan = fleet.plan

    def flaky_plan(prepared):
        calls.append(waker.now)
        if len(calls) <= 4:
            raise errors.TemporaryError("No Docker engine answered at unix:///var/run/docker.sock")
        return real_plan(prepared)

    fleet.plan = flaky_plan
    waker.at(2.5, loop.RUNTIME, "container demo-main-0 died")  # waits for the back-off (3)
    waker.at(30.0, loop.SIGNAL, "SIGTERM")
    controller.run()
    assert calls[:6] == pytest.approx([0, 1, 3, 7, 15, 25])
    assert out.cycles()[0] == ("cycle 1, woken by watch started: no changes; could not reconcile: No Docker engine "
                               "answered at unix:///var/run/docker.sock (next try in 1.0 s) (0.00 s)")
    assert out.cycles()[2].startswith("cycle 3, woken by container demo-main-0 died: ")


# --- stopping ----------------------------------------------------------------------------------


def test_down_on_exit_tears_down_what_the_last_good_file_described():
    waker, fleet, out, controller = make(loop.Settings(down_on_exit=True, interval_s=1000.0))
    waker.call_at(3.0, lambda: fleet.save(bad_file()))
    waker.at(3.0, loop.FILE, "fleet.yaml changed")
    waker.at(5.0, loop.SIGNAL, "SIGINT")
    assert controller.run() == 0
    assert fleet.destroyed == [FakePrepared(1, frozenset({"python"}))]
    assert out.lines[-2:] == ["Stopping (SIGINT).", "Tore the fleet down (1 removed: demo-main-0)."]


def test_a_stop_requested_during_apply_ends_the_cycle_at_the_next_step():
    waker, fleet, out, controller = make()

    def stop_then_step(progress):
        controller.request_stop("SIGTERM")
        progress("Starting main/0")

    fleet.before_apply = stop_then_step
    assert controller.run() == 0
    assert fleet.applies == []  # the fake recorded nothing: the step raised before it
    assert out.lines[0].startswith("Interrupted during cycle 1; the fleet may be part-way through a change.")
    assert out.lines[1] == "Stopping (SIGTERM)."


def test_a_signal_during_a_burst_stops_without_reading_the_file():
    waker, fleet, out, controller = make()
    waker.at(10.0, loop.FILE, "fleet.yaml changed")
    waker.at(10.1, loop.SIGNAL, "SIGTERM")
    assert controller.run() == 0
    assert fleet.prepares == [0.0]
