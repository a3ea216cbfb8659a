"""The watch loop: a level-based controller, in the manner of Kubernetes.

Events (a saved file, a container that died, a periodic tick, a signal) only WAKE the loop; they
never say what to do. Every cycle re-reads the fleet file and re-observes the whole fleet, then
runs the plan that closes the gap (prepare → plan → apply). So a missed or duplicated event costs
at most a delay, never a wrong action.

- Saves are debounced: the cycle runs once the file has been quiet for `quiet_s`, or `max_delay_s`
  after the first save of a burst that does not stop. A file that fails to load while saves are
  still arriving is not reported (it is probably half-written); one that fails after the quiet
  period is reported once per distinct set of errors, and the last good version stays in force
  (drift is still repaired against it).
- Actions back off per target (`backoff.Backoff`): one failing adapter waits its turn while the
  others are applied, and nothing is retried in a tight loop.
- Each cycle logs one line: what woke it, what it changed, how long it took.

Time and events come from an injected `Waker`, the fleet from an injected `Reconciler`, so tests
drive the loop with a fake clock and a fake fleet without sleeping.
"""

from __future__ import annotations

import dataclasses
import math
import queue
import time
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from fleetspec import errors
from fleetspec.reconcile import apply as apply_mod
from fleetspec.reconcile import plan as plan_mod
from fleetspec.watch import backoff as backoff_mod
from fleetspec.watch import lines

FILE, RUNTIME, TICK, RETRY, START, SIGNAL = "file", "runtime", "tick", "retry", "start", "signal"


@dataclasses.dataclass(frozen=True)
class Wake:
    kind: str  # one of FILE, RUNTIME, TICK, RETRY, START, SIGNAL
    detail: str  # for the cycle line: "fleet.yaml changed", "container demo-main-0 died (exit 137)"


class Waker(Protocol):
    def monotonic(self) -> float: ...

    def wait(self, timeout: float | None) -> list[Wake]:
        """Block until at least one wake arrives (then return every wake waiting) or `timeout` seconds
        pass (then return []). `None` waits for ever; 0 only collects what is already there."""


class QueueWaker:
    """The real waker: sources post from their threads, signal handlers from the main thread."""

    def __init__(self) -> None:
        # SimpleQueue.put is reentrant, so a signal handler may post while the loop is inside get().
        self._queue: queue.SimpleQueue[Wake] = queue.SimpleQueue()

    def post(self, wake: Wake) -> None:
        self._queue.put(wake)

    def monotonic(self) -> float:
        return time.monotonic()

    def wait(self, timeout: float | None) -> list[Wake]:
        try:
            first = self._queue.get_nowait() if timeout is not None and timeout <= 0 else self._queue.get(
                timeout=timeout)
        except queue.Empty:
            return []
        wakes = [first]
        while True:
            try:
                wakes.append(self._queue.get_nowait())
            except queue.Empty:
                return wakes


class Reconciler(Protocol):
    """What the loop needs from the reconcile pipeline (`watch.reconciler.SessionReconciler`)."""

    def prepare(self) -> Any:
        """Load, check and plan the fleet file; raise errors.SpecError (or FleetspecError) if it is bad."""

    def plan(self, prepared: Any) -> plan_mod.ReconcilePlan:
        """Observe the running fleet and diff it against `prepared`."""

    def apply(self, prepared: Any, reconcile_plan: plan_mod.ReconcilePlan,
              progress: Callable[[str], None]) -> apply_mod.ApplyResult: ...

    def destroy(self, prepared: Any) -> apply_mod.ApplyResult: ...


@dataclasses.dataclass(frozen=True)
class Settings:
    interval_s: float = 10.0  # periodic full re-observe: catches what emits no event
    quiet_s: float = 0.3  # a burst of saves ends after this much silence
    max_delay_s: float = 2.0  # …or this long after its first save, if it never goes quiet
    event_quiet_s: float = 0.05  # runtime events come in clusters (die, then destroy): gather them
    backoff_base_s: float = 1.0
    backoff_cap_s: float = 60.0
    settle_s: float = 10.0  # an action's back-off resets once its target stayed converged this long
    once: bool = False  # one cycle, then exit
    down_on_exit: bool = False
    file_label: str = "the fleet file"  # how lines name the fleet file ("fleet.yaml")


@dataclasses.dataclass(frozen=True)
class Output:
    line: Callable[[str], None]  # the one line per cycle, and the few lines at start and exit
    diagnostics: Callable[[Sequence[errors.Diagnostic]], None]
    progress: Callable[[str], None] = lambda _: None  # long steps inside a cycle (an engine starting)


class Interrupted(Exception):
    """Raised inside a cycle when a stop was requested, at the next safe point (between steps)."""


class Loop:
    def __init__(self, reconciler: Reconciler, waker: Waker, output: Output, settings: Settings | None = None,
                 on_spec: Callable[[Any], None] = lambda _: None):
        self.reconciler = reconciler
        self.waker = waker
        self.output = output
        self.settings = settings or Settings()
        self.on_spec = on_spec  # told about every good fleet file (sources re-target their watches)
        self.backoff = backoff_mod.Backoff(self.settings.backoff_base_s, self.settings.backoff_cap_s,
                                           self.settings.settle_s)
        self.cycles = 0
        self.busy = False  # inside a cycle: a stop waits for the current step to end
        self.stop_reason: str | None = None
        self.last_good: Any = None
        self._pending: list[Wake] = []
        self._pending_since: float | None = None  # first non-file wake since the last cycle
        self._burst_start: float | None = None  # first save of the current burst
        self._last_save: float | None = None
        self._saves = 0  # file wakes ever seen: tells whether the file changed while it was read
        self._retry: tuple[plan_mod.Action, ...] = ()  # actions that wait for their back-off
        self._next_tick = 0.0
        self._last_cycle_end = 0.0
        self._cycle_failures = 0
        self._reported: tuple | None = None  # signature of the file problem last shown
        self._failed = False  # for --once: did anything fail?

    # -- driving -----------------------------------------------------------------------------

    def request_stop(self, reason: str) -> None:
        """Stop at the next safe point (signal handlers call this; it only sets a flag)."""
        if self.stop_reason is None:
            self.stop_reason = reason

    def run(self) -> int:
        """Cycle until a stop is requested (or once); return the exit code."""
        self._absorb([Wake(START, "watch started")])
        try:
            while self.stop_reason is None:
                now = self.waker.monotonic()
                at = self._next_cycle_at()
                if at <= now:
                    self.busy = True
                    self._cycle(now)
                    self.busy = False
                    if self.settings.once:
                        break
                    continue
                self._absorb(self.waker.wait(None if math.isinf(at) else at - now))
        except Interrupted:
            self.output.line(f"Interrupted during cycle {self.cycles}; the fleet may be part-way through a change. "
                             "Run `fleetspec watch` or `fleetspec apply` again to finish it.")
        return self._finish()

    def _absorb(self, wakes: list[Wake]) -> None:
        now = self.waker.monotonic()
        for wake in wakes:
            if wake.kind == SIGNAL:
                self.request_stop(wake.detail)
                continue
            if wake.kind == FILE:
                self._saves += 1
                self._burst_start = now if self._last_save is None else self._burst_start
                self._last_save = now
            elif self._pending_since is None:
                self._pending_since = now
            self._pending.append(wake)

    def _next_cycle_at(self) -> float:
        s = self.settings
        if self._last_save is not None:  # a burst of saves: nothing runs until it settles
            return min(self._last_save + s.quiet_s, self._burst_start + s.max_delay_s)
        failing_until = self._cycle_ready_at()
        times = [self._next_tick]
        if self._pending_since is not None:
            times.append(max(self._pending_since + s.event_quiet_s, failing_until))
        retry = self.backoff.next_ready(self._retry)
        if retry is not None:
            times.append(max(retry, failing_until))
        return min(times)

    def _cycle_ready_at(self) -> float:
        """After cycles that could not even observe the fleet, events wait too (runtime down, lock held)."""
        if not self._cycle_failures:
            return -math.inf
        return self._last_cycle_end + self.backoff.delay(self._cycle_failures)

    # -- one cycle ---------------------------------------------------------------------------

    def _cycle(self, now: float) -> None:
        still_saving = self._last_save is not None and now < self._last_save + self.settings.quiet_s
        saves_before = self._saves
        prepared, problem = self._prepare()
        self._absorb(self.waker.wait(0))  # whatever arrived while the file was read
        if self.stop_reason is not None:
            return
        if self._saves != saves_before or (still_saving and problem is not None):
            # Still being written: a half-written file is never applied, nor reported.
            self._burst_start = self.waker.monotonic()
            return
        wakes = self._take_wakes(now)
        self.cycles += 1
        if any(w.kind == FILE for w in wakes):
            self.backoff.clear()  # the user changed something: everything gets a fresh try now
        notes = [self._file_note(problem)] if problem is not None or self._reported is not None else []
        if prepared is not None:
            self.last_good = prepared
            self.on_spec(prepared)
        changed = self._reconcile(now, notes)
        self._last_cycle_end = self.waker.monotonic()
        # A cycle that could not observe the fleet is retried on its back-off instead of the interval.
        self._next_tick = (self._cycle_ready_at() if self._cycle_failures
                           else self._last_cycle_end + self.settings.interval_s)
        self.output.line(lines.cycle_line(self.cycles, wakes, changed, self._last_cycle_end - now))

    def _prepare(self) -> tuple[Any, errors.FleetspecError | None]:
        try:
            return self.reconciler.prepare(), None
        except errors.FleetspecError as exc:
            return None, exc

    def _take_wakes(self, now: float) -> list[Wake]:
        wakes, self._pending = self._pending, []
        self._pending_since = self._burst_start = self._last_save = None
        if not wakes:
            retry = self.backoff.next_ready(self._retry)
            if retry is not None and retry <= now:
                waiting = sorted({backoff_mod.describe_key(backoff_mod.key_of(a)) for a in self._retry})
                wakes = [Wake(RETRY, f"retry of {', '.join(waiting)}")]
            else:
                wakes = [Wake(TICK, "periodic check")]
        return wakes

    def _reconcile(self, now: float, notes: list[str]) -> str:
        """Plan and apply against the fleet file in force; the cycle line's middle part."""
        in_force = self.last_good
        if in_force is None:
            self._failed = True
            return "; ".join([*notes, lines.NO_CHANGES])
        try:
            reconcile_plan = self.reconciler.plan(in_force)
            run_now, waiting = self.backoff.split(reconcile_plan.actions, now)
            result = None
            if run_now:
                result = self.reconciler.apply(in_force, dataclasses.replace(reconcile_plan, actions=run_now),
                                               self._progress)
        except errors.FleetspecError as exc:
            self._cycle_failures += 1
            self._failed = True
            retry_in = lines.seconds(self.backoff.delay(self._cycle_failures))
            return "; ".join([*notes, lines.NO_CHANGES, f"could not reconcile: {exc} (next try in {retry_in})"])
        self._cycle_failures = 0
        failed = self._record(result)
        self._retry = waiting + failed
        self._failed |= bool(failed)
        retry_in = {backoff_mod.key_of(a): self.backoff.ready_at(backoff_mod.key_of(a)) - self.waker.monotonic()
                    for a in self._retry}
        return "; ".join([*notes, *lines.changes(result, waiting, retry_in), *reconcile_plan.notes])

    def _record(self, result: apply_mod.ApplyResult | None) -> tuple[plan_mod.Action, ...]:
        """Count every attempt for back-off; return the actions that failed."""
        if result is None:
            return ()
        end = self.waker.monotonic()
        failed = []
        for outcome in result.outcomes:
            if outcome.status == apply_mod.FAILED:
                self.backoff.attempted(outcome.action, end, outcome.message)
                failed.append(outcome.action)
            elif outcome.status in (apply_mod.OK, apply_mod.UNCHANGED):
                self.backoff.attempted(outcome.action, end)
        return tuple(failed)

    def _file_note(self, problem: errors.FleetspecError | None) -> str:
        """Show a bad file's problems once per distinct set; every cycle gets a short note."""
        label = self.settings.file_label
        if problem is None:
            self._reported = None
            return f"{label} is valid again"
        diagnostics = problem.diagnostics if isinstance(problem, errors.SpecError) else []
        signature = tuple((d.code, d.path, d.message) for d in diagnostics) or (str(problem),)
        keeping = ("the last good version stays in force" if self.last_good is not None
                   else "nothing is started from it")
        if signature == self._reported:
            return f"{label} is still invalid (same problems as shown before); {keeping}"
        self._reported = signature
        if diagnostics:
            self.output.diagnostics(diagnostics)
            count = len(errors.errors_only(diagnostics))
            what = f"{count} error{'s' * (count != 1)}, shown above"
        else:
            self.output.line(f"error: {problem}")
            what = "see above"
        return f"{label} is invalid ({what}); {keeping}; fix it and save again"

    def _progress(self, text: str) -> None:
        if self.stop_reason is not None:
            raise Interrupted()
        self.output.progress(text)

    # -- exit --------------------------------------------------------------------------------

    def _finish(self) -> int:
        if self.stop_reason is not None:
            self.output.line(f"Stopping ({self.stop_reason}).")
        if self.settings.down_on_exit:
            return self._tear_down()
        if not self.settings.once:
            self.output.line("Stopped watching; the fleet keeps running. `fleetspec destroy FILE` tears it down.")
        return 1 if self._failed and self.settings.once else 0

    def _tear_down(self) -> int:
        target = self.last_good
        if target is None:
            target, problem = self._prepare()
            if target is None:
                self.output.line(f"Could not tear the fleet down: {self.settings.file_label} was never valid "
                                 f"({problem}). Fix it and run `fleetspec destroy FILE`.")
                return 1
        try:
            result = self.reconciler.destroy(target)
        except errors.FleetspecError as exc:
            self.output.line(f"Could not tear the fleet down: {exc}. Run `fleetspec destroy FILE`.")
            return 1
        removed = [o.action.target for o in result.outcomes if o.status == apply_mod.OK]
        if result.ok:
            # By name: "containers" would be wrong on the local runtime, where they are processes.
            shown = ", ".join(removed[:6]) + (f" and {len(removed) - 6} more" if len(removed) > 6 else "")
            self.output.line(f"Tore the fleet down ({len(removed)} removed: {shown})." if removed
                             else "Tore the fleet down (nothing was running).")
            return 0
        self.output.line(f"Tore the fleet down partly: {len(result.failed)} removal(s) failed "
                         f"({result.failed[0].message}). Run `fleetspec destroy FILE`.")
        return 1

