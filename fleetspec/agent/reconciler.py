"""The agent's loop: the ConfigMap's adapter set, served on the pod's own engine.

Each step reads the mounted set, looks at what the engine serves (`/v1/models`) and converges with
the code `fleetspec apply` runs (`reconcile.diff.adapter_actions`, `reconcile.apply.Applier`): new
versions load under their new names first, old ones unload only after every load succeeded. The
set's on-demand adapters are `apply`'s too: allowed, not required. One the router loaded for a
request stays (vLLM's LRU evicts it), one the engine does not hold is not loaded, and one that
leaves the set is unloaded; only what `adapter_actions` plans counts as drift.

A bad edit must never become an outage (every pod of the server reads the same ConfigMap):
- a set that does not parse is refused; the engine keeps the last good set;
- a set that does not load (a missing adapter, a refused one) is undone: what it loaded is unloaded
  and the last good set is restored; it is tried again every `retry_s`, since its files may simply
  not have reached the volume yet;
- either way the problem is logged once, shown by /status and counted in /metrics, and the pod
  stays Ready: Ready means "the base model and the last good set serve", nothing more.
The last good set is kept in the state directory (an emptyDir), so a restarted agent container
restores it even while the ConfigMap is broken.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import pathlib
import threading
import time
import urllib.parse

from fleetspec import errors
from fleetspec.agent import source
from fleetspec.compile import adapter_set, desired
from fleetspec.engine_api import client as engine_client
from fleetspec.engine_api import contract
from fleetspec.reconcile import apply, diff
from fleetspec.reconcile import plan as plan_mod
from fleetspec.reconcile.plan import Kind

log = logging.getLogger("fleetspec.agent")
STATE_FILE = "last-good.json"


@dataclasses.dataclass(frozen=True)
class Settings:
    config_dir: pathlib.Path
    engine_url: str
    api_key: str | None = dataclasses.field(default=None, repr=False)
    state_dir: pathlib.Path | None = None
    poll_s: float = 1.0  # kubelet's own delay dominates (up to ~a minute); polling adds at most this
    retry_s: float = 30.0  # a set that did not load is tried again after this long
    load_timeout_s: float = 120.0


@dataclasses.dataclass(frozen=True)
class Problem:
    kind: str  # "invalid" (does not parse), "unloadable" (the engine refused it), "unreadable"
    revision: str
    message: str
    since: float  # wall-clock seconds

    def to_json(self) -> dict:
        return {
            "kind": self.kind,
            "revision": self.revision,
            "message": self.message,
            "since": round(self.since, 3),
        }


@dataclasses.dataclass
class Counters:
    applied: int = 0
    rejected_invalid: int = 0
    rejected_unloadable: int = 0
    restored: int = 0  # steps that brought the engine back to the last good set (drift, a restart)
    engine_errors: int = 0


class Agent:
    def __init__(self, settings: Settings, wall=time.time):
        self.settings = settings
        self._wall = wall
        self._lock = threading.Lock()
        self.last_good: adapter_set.AdapterSet | None = None
        self.last_good_revision: str | None = None
        self.last_good_at: float | None = None
        self.problem: Problem | None = None
        self.revision: str | None = None  # of the content last read
        self.serving: dict[str, str] | None = None  # adapters the engine served at the last look
        self.base_serving = False
        self.engine_healthy = False
        self.counters = Counters()
        self.step_started: float | None = None
        self.last_step_done: float | None = None
        self._seen_text: str | None = None
        self._pending: tuple[str, adapter_set.AdapterSet] | None = None  # parsed, not yet served
        self._retry_at = 0.0
        parts = urllib.parse.urlsplit(settings.engine_url)
        self._host, self._port = parts.hostname or "127.0.0.1", parts.port or 80
        self._engine = engine_client.EngineClient(f"http://{self._host}:{self._port}", settings.api_key)
        self._restore_state()

    # -- the loop ---------------------------------------------------------------------------------

    def run(self, stop: threading.Event) -> None:
        while not stop.is_set():
            try:
                self.step()
            except errors.FleetspecError as exc:  # the engine went away mid-step: the next step retries
                with self._lock:
                    self.counters.engine_errors += 1
                    self.engine_healthy = False
                log.warning("the engine did not answer while the agent worked on it: %s", exc)
            stop.wait(self.settings.poll_s)

    def step(self) -> None:
        with self._lock:
            self.step_started = time.monotonic()
        try:
            self._read_config()
            self._converge()
        finally:
            with self._lock:
                self.step_started = None
                self.last_step_done = time.monotonic()

    def _read_config(self) -> None:
        snapshot = source.read(self.settings.config_dir, adapter_set.FILE)
        with self._lock:
            self.revision = snapshot.revision
        if snapshot.text is None:
            self._report(
                "unreadable",
                snapshot.revision,
                (snapshot.problem or "the adapter set cannot be read") + "; the engine keeps serving the "
                "last good set",
            )
            self._seen_text, self._pending = None, None
            return
        if snapshot.text == self._seen_text:
            return  # a set that did not load is retried by _converge, on its own clock
        self._seen_text = snapshot.text
        try:
            parsed = adapter_set.parse(snapshot.text)
        except adapter_set.AdapterSetError as exc:
            self._pending = None
            with self._lock:
                self.counters.rejected_invalid += 1
            self._report("invalid", snapshot.revision, f"{exc}; the engine keeps serving the last good set")
            return
        self._pending = (snapshot.revision, parsed)
        self._retry_at = 0.0

    def _converge(self) -> None:
        if not self._engine.healthy():
            with self._lock:
                self.engine_healthy, self.serving, self.base_serving = False, None, False
            return
        view = self._engine.models()
        if self._pending is not None and time.monotonic() >= self._retry_at:
            view = self._try(*self._pending, view)
        elif self.last_good is not None and _actions(self.last_good, view, self._port, self.settings):
            # Drift: the engine restarted (and lost its adapters), or someone loaded or unloaded by hand.
            failures, view = self._apply(self.last_good, view)
            with self._lock:
                self.counters.restored += 1
            if failures:
                log.warning("could not restore the last good adapter set: %s", "; ".join(failures))
        with self._lock:
            self.engine_healthy = True
            self.serving = dict(view.adapters)
            self.base_serving = self.last_good is None or self.last_good.base in view.base

    def _try(
        self, revision: str, wanted: adapter_set.AdapterSet, view: contract.ModelsView
    ) -> contract.ModelsView:
        if wanted.base not in view.base:
            self._pending = None
            with self._lock:
                self.counters.rejected_invalid += 1
            self._report(
                "invalid",
                revision,
                f"the adapter set is for base model {wanted.base}, and this engine serves "
                f"{', '.join(view.base) or 'no base model'}; the engine keeps serving the last good set",
            )
            return view
        failures, view = self._apply(wanted, view)
        if not failures:
            self._pending = None
            self._accept(revision, wanted)
            return view
        self._retry_at = time.monotonic() + self.settings.retry_s
        with self._lock:
            self.counters.rejected_unloadable += 1
        restored = (
            "the last good set is restored"
            if self.last_good is not None
            else "there is no good set to restore"
        )
        self._report(
            "unloadable",
            revision,
            f"{'; '.join(failures)}; {restored}, and the set is tried again every "
            f"{self.settings.retry_s:g} s",
        )
        if self.last_good is not None:
            undo_failures, view = self._apply(self.last_good, view)
            if undo_failures:
                log.warning("could not restore the last good adapter set: %s", "; ".join(undo_failures))
        return view

    def _apply(
        self,
        wanted: adapter_set.AdapterSet,
        view: contract.ModelsView,
    ) -> tuple[list[str], contract.ModelsView]:
        """Loads, then (only if every load worked) unloads: `apply`'s order and code. Failures as sentences."""
        actions = _actions(wanted, view, self._port, self.settings)
        if not actions:
            return [], view
        replica = _replica(wanted, self._port, self.settings)
        applier = apply.Applier(
            None,
            desired.DesiredState(wanted.server, {(wanted.server, 0): replica}),
            apply.Settings(self.settings.load_timeout_s, self.settings.api_key, self._host),
        )
        loads = [a for a in actions if a.kind is Kind.LOAD_ADAPTER]
        failures = _failures(applier.run(plan_mod.ReconcilePlan(wanted.server, tuple(loads))))
        if not failures:
            unloads = [a for a in actions if a.kind is Kind.UNLOAD_ADAPTER]
            failures = _failures(applier.run(plan_mod.ReconcilePlan(wanted.server, tuple(unloads))))
        return failures, self._engine.models()

    # -- bookkeeping ------------------------------------------------------------------------------

    def _accept(self, revision: str, wanted: adapter_set.AdapterSet) -> None:
        changed = self.last_good != wanted
        with self._lock:
            self.last_good, self.last_good_revision, self.last_good_at = wanted, revision, self._wall()
            self.problem = None
            self.counters.applied += 1
        if changed:
            log.info(
                "serving adapter set %s: %s%s",
                revision,
                ", ".join(sorted(wanted.mapping)) or "no adapters",
                f"; allowed on demand: {', '.join(sorted(wanted.on_demand_mapping))}"
                if wanted.on_demand
                else "",
            )
        self._save_state()

    def _report(self, kind: str, revision: str, message: str) -> None:
        with self._lock:
            same = self.problem is not None and (self.problem.kind, self.problem.message) == (kind, message)
            if not same:
                self.problem = Problem(kind, revision, message, self._wall())
        if not same:
            log.error("adapter set %s not applied: %s", revision, message)

    def _save_state(self) -> None:
        if self.settings.state_dir is None or self.last_good is None:
            return
        document = {
            "revision": self.last_good_revision,
            "at": self.last_good_at,
            "set": self.last_good.to_json(),
        }
        path = self.settings.state_dir / STATE_FILE
        temporary = path.with_suffix(".tmp")
        try:
            temporary.write_text(json.dumps(document, sort_keys=True))
            temporary.replace(path)
        except OSError as exc:
            log.warning(
                "could not keep the last good set in %s (%s); a restarted agent will wait for a good "
                "ConfigMap",
                path,
                exc.strerror,
            )

    def _restore_state(self) -> None:
        if self.settings.state_dir is None:
            return
        path = self.settings.state_dir / STATE_FILE
        try:
            document = json.loads(path.read_text())
            kept = document["set"]
            text = adapter_set.to_text({"format": adapter_set.FORMAT, **kept})
            self.last_good = adapter_set.parse(text)
            self.last_good_revision, self.last_good_at = document.get("revision"), document.get("at")
        except FileNotFoundError:
            return
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.warning("ignoring the saved last good set in %s: %s", path, exc)

    # -- what the endpoints show ------------------------------------------------------------------

    def readiness(self) -> tuple[bool, str]:
        with self._lock:
            if not self.engine_healthy:
                return False, "the engine does not answer /health yet"
            if self.last_good is None:
                return False, "no adapter set has been served yet" + (
                    f": {self.problem.message}" if self.problem else ""
                )
            if not self.base_serving:
                return False, f"the engine does not serve the base model {self.last_good.base}"
            serving = self.serving or {}
            missing = sorted(n for n, p in self.last_good.mapping.items() if serving.get(n) != p)
            if missing:
                return False, f"the last good set is not fully served yet (missing {', '.join(missing)})"
            return True, "the base model and the last good adapter set serve"

    def status(self) -> dict:
        ready, reason = self.readiness()
        with self._lock:
            return {
                "ready": ready,
                "reason": reason,
                "engine": {"url": self._engine.base_url, "healthy": self.engine_healthy},
                "revision": self.revision,
                "last_good": None
                if self.last_good is None
                else {
                    "revision": self.last_good_revision,
                    "at": self.last_good_at,
                    **self.last_good.to_json(),
                },
                "serving": self.serving,
                # Of what serves, the adapters the last good set allows on demand (the router loaded them).
                "serving_on_demand": None
                if self.serving is None
                else {
                    n: p
                    for n, p in sorted(self.serving.items())
                    if self.last_good is not None and n in self.last_good.on_demand_mapping
                },
                "problem": self.problem.to_json() if self.problem else None,
                "counters": dataclasses.asdict(self.counters),
            }

    def alive(self, stuck_after_s: float) -> bool:
        """False once one step has run longer than any load may take: the loop is stuck."""
        with self._lock:
            return self.step_started is None or time.monotonic() - self.step_started < stuck_after_s


def _replica(wanted: adapter_set.AdapterSet, port: int, settings: Settings) -> desired.DesiredReplica:
    """The pod's engine as `fleetspec apply` sees a replica: required adapters and on-demand ones."""
    return desired.DesiredReplica(
        wanted.server,
        0,
        desired.ContainerSpec(name="engine", image="pod", argv=()),
        wanted.mapping,
        port,
        int(settings.load_timeout_s),
        wanted.on_demand_mapping,
    )


def _actions(
    wanted: adapter_set.AdapterSet, view: contract.ModelsView, port: int, settings: Settings
) -> tuple[plan_mod.Action, ...]:
    """What brings the engine to `wanted`: `reconcile.diff`'s loads and unloads, nothing of the agent's own."""
    return diff.adapter_actions(_replica(wanted, port, settings), dict(view.adapters))


def _failures(result: apply.ApplyResult) -> list[str]:
    return [
        f"{o.action.adapter}: {o.message}"
        for o in result.outcomes
        if o.status in (apply.FAILED, apply.SKIPPED)
    ]
