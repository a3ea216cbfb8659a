"""Execute a ReconcilePlan against a runtime driver and the engines' admin API.

The plan's order is kept: servers first (each new or replaced replica must be healthy and hold its
adapters before the next one is touched; with a router, a replica is drained before it is
replaced), then adapter loads, the router, unloads, removals. The router moves a specialist to a
new version only where that version loaded on every replica that should hold it; otherwise it
stays on the version the engines still serve (which is then not unloaded) and apply fails. A failure is recorded and the rest goes on; actions that depend on a
failed one (loads onto a server that never became healthy) are skipped with that reason. Running
apply again after any failure converges, because the next plan is computed from what is observed.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import TYPE_CHECKING

from fleetspec import errors
from fleetspec.compile import desired as desired_mod
from fleetspec.engine_api import client as engine_client
from fleetspec.engine_api import contract
from fleetspec.reconcile import fanout
from fleetspec.reconcile import plan as plan_mod
from fleetspec.reconcile.plan import Action, Kind
from fleetspec.spec import derived

if TYPE_CHECKING:
    from fleetspec.reconcile.router_edge import RouterLink

OK, FAILED, SKIPPED, UNCHANGED = "ok", "failed", "skipped", "unchanged"


@dataclasses.dataclass(frozen=True)
class Outcome:
    action: Action
    status: str  # OK, FAILED, SKIPPED, UNCHANGED
    message: str = ""
    seconds: float = 0.0

    def to_json(self) -> dict:
        return {"action": self.action.to_json(), "status": self.status, "message": self.message,
                "seconds": round(self.seconds, 3)}


@dataclasses.dataclass(frozen=True)
class ApplyResult:
    outcomes: tuple[Outcome, ...]

    @property
    def failed(self) -> list[Outcome]:
        return [o for o in self.outcomes if o.status == FAILED]

    @property
    def ok(self) -> bool:
        return not self.failed

    def to_json(self) -> dict:
        return {"ok": self.ok, "outcomes": [o.to_json() for o in self.outcomes]}


@dataclasses.dataclass
class Settings:
    health_timeout_s: float = 86_400.0  # a cap on each replica's own startup budget (DesiredReplica)
    api_key: str | None = None
    host: str = "127.0.0.1"  # where published engine ports are reached from fleetspec


class Applier:
    """Runs plan actions. `progress(text)` is called before each long step (for the CLI)."""

    def __init__(self, driver, want: desired_mod.DesiredState, settings: Settings | None = None,
                 clock: engine_client.Clock = engine_client.SYSTEM_CLOCK, progress: Callable[[str], None] = lambda _: None,
                 router: RouterLink | None = None, spec=None):
        self.driver = driver
        self.spec = spec  # the fleet's spec: which adapter versions are the active ones (rollback)
        self.want = want
        self.settings = settings or Settings()
        self.clock = clock
        self.progress = progress
        self.router = router
        self.unhealthy: dict[str, str] = {}  # replica target → why its adapters cannot be loaded
        self.not_loaded: dict[str, set[str]] = {}  # replica target → adapter versions that failed to load
        self._unloads: tuple[Action, ...] = ()  # what each engine holds now and would lose (rollback targets)

    def run(self, reconcile_plan: plan_mod.ReconcilePlan) -> ApplyResult:
        self._unloads = tuple(reconcile_plan.of_kind(Kind.UNLOAD_ADAPTER))
        outcomes: list[Outcome] = []
        for step in plan_mod.replica_steps(reconcile_plan.actions):
            if step[0].kind is Kind.REPLACE:
                outcomes += self._drained(step)
            else:
                # Adapter loads and unloads go to every engine at once (fanout), each engine's in order.
                outcomes += fanout.run_batched(step, self._timed, (Kind.LOAD_ADAPTER, Kind.UNLOAD_ADAPTER))
        return ApplyResult(tuple(outcomes))

    def _drained(self, step: tuple[Action, ...]) -> list[Outcome]:
        """Replace one replica without failing requests: the router stops choosing it and its requests
        in flight finish, then it is replaced and gets its adapters, and only then is chosen again."""
        replaced = step[0]
        drained = self.router is not None and self._quietly(lambda: self.router.drain(replaced.server, replaced.replica))
        try:
            return [self._timed(action) for action in step]
        finally:
            if drained:
                self._quietly(lambda: self.router.undrain(replaced.server, replaced.replica))

    def _quietly(self, call) -> bool:
        """Draining helps but must never stop an apply: a router that does not answer just cannot drain."""
        try:
            return bool(call())
        except errors.FleetspecError as exc:
            self.progress(f"Could not drain through the router ({exc}); replacing anyway")
            return False

    def _timed(self, action: Action) -> Outcome:
        started = self.clock.monotonic()
        outcome = self._one(action)
        if action.kind is Kind.LOAD_ADAPTER and outcome.status in (FAILED, SKIPPED):
            self.not_loaded.setdefault(action.target, set()).add(action.adapter)
        return dataclasses.replace(outcome, seconds=self.clock.monotonic() - started)

    def _one(self, action: Action) -> Outcome:
        handler = {
            Kind.CREATE: self._create, Kind.REPLACE: self._replace, Kind.LOAD_ADAPTER: self._load,
            Kind.UPDATE_ROUTER: self._router, Kind.UNLOAD_ADAPTER: self._unload, Kind.REMOVE: self._remove,
        }[action.kind]
        try:
            return handler(action)
        except errors.FleetspecError as exc:
            if action.kind in (Kind.CREATE, Kind.REPLACE):
                self.unhealthy[action.target] = str(exc)
            return Outcome(action, FAILED, _message(exc))

    # -- servers ---------------------------------------------------------------------------

    def _create(self, action: Action) -> Outcome:
        replica = self.want.replicas[(action.server, action.replica)]
        image = replica.container.image
        self.progress(f"Starting {action.target} " + ("(a local process)" if image == "local" else f"(image {image})"))
        container_id = self.driver.create(replica.container)
        self._wait_ready(action, replica, container_id)
        return Outcome(action, OK, f"started {self._describe(container_id)}, healthy")

    def _replace(self, action: Action) -> Outcome:
        replica = self.want.replicas[(action.server, action.replica)]
        self.progress(f"Replacing {action.target}: {action.reason}")
        if action.container_id:
            self.driver.remove(action.container_id)
        container_id = self.driver.create(replica.container)
        self._wait_ready(action, replica, container_id)
        return Outcome(action, OK, f"replaced by {self._describe(container_id)}, healthy")

    def _describe(self, container_id: str) -> str:
        """The runtime's own words for what was started: process and PID, or container and id."""
        describe = getattr(self.driver, "describe", None)  # test doubles may not have it
        return describe(container_id) if describe else container_id[:12]

    def _wait_ready(self, action: Action, replica: desired_mod.DesiredReplica, container_id: str) -> None:
        self.driver.wait_running(container_id, timeout_s=60.0)
        self.progress(f"Waiting for {action.target} to answer /health (the model is loading)")
        budget = min(self.settings.health_timeout_s, replica.startup_budget_s)
        deadline = self.clock.monotonic() + budget

        def still_running() -> None:
            # A bad flag or an OOM ends the engine in seconds; do not wait out the whole deadline.
            mine = [c for c in self.driver.observe(self.want.fleet) if c.id == container_id]
            if not mine or not mine[0].running:
                code = f" with code {mine[0].exit_code}" if mine and mine[0].exit_code is not None else ""
                raise errors.PermanentError(f"{action.target} stopped while starting{code}" + self._tail(container_id))

        try:
            self._engine(replica).wait_healthy(deadline, self.clock, check=still_running)
        except contract.EngineUnavailable:
            raise errors.TemporaryError(
                f"{action.target} did not become healthy within {budget:.0f} s (servers[].startup_timeout_s "
                "allows longer)"
                + self._tail(container_id)
            ) from None

    def _tail(self, container_id: str) -> str:
        try:
            tail = self.driver.logs_tail(container_id, lines=20).strip()
        except errors.FleetspecError:
            return ""
        return f"; its last log lines:\n{tail}" if tail else ""

    def _remove(self, action: Action) -> Outcome:
        self.progress(f"Removing {action.target}: {action.reason}")
        self.driver.remove(action.container_id)
        return Outcome(action, OK, "removed")

    # -- adapters --------------------------------------------------------------------------

    def _load(self, action: Action) -> Outcome:
        if action.target in self.unhealthy:
            return Outcome(action, SKIPPED, f"{action.target} is not up: {self.unhealthy[action.target]}")
        replica = self.want.replicas[(action.server, action.replica)]
        engine = self._engine(replica)
        deadline = self.clock.monotonic() + min(self.settings.health_timeout_s, replica.startup_budget_s)
        try:
            engine.wait_healthy(deadline, self.clock)
        except contract.EngineUnavailable:
            self.unhealthy[action.target] = "it does not answer /health"
            return Outcome(action, FAILED, f"{action.target} does not answer /health; the adapter stays unloaded")
        try:
            loaded = engine.load_adapter(action.adapter, action.path)
        except contract.AdapterNameTaken:
            # Same version name, new path: serve the new files; vLLM's prefix cache keys on the path.
            engine.unload_adapter(action.adapter)
            loaded = engine.load_adapter(action.adapter, action.path)
        return Outcome(action, OK if loaded else UNCHANGED, "loaded" if loaded else "already loaded")

    def _unload(self, action: Action) -> Outcome:
        # The old version keeps serving until its successor has loaded (DESIGN §6).
        # Anywhere it failed, the router stays on the old version, so every replica keeps it.
        specialist = _specialist_of(action.adapter)
        failed = sorted({name for names in self.not_loaded.values() for name in names})
        successor = next((name for name in failed if specialist and _specialist_of(name) == specialist), None)
        if successor is not None:
            where = sorted(t for t, names in self.not_loaded.items() if successor in names)
            return Outcome(action, SKIPPED, f"kept serving: its successor {successor} did not load"
                           + ("" if where == [action.target] else f" on {', '.join(where)}"))
        replica = self.want.replicas[(action.server, action.replica)]
        if self.router is not None and not self.router.settle(action.server, action.replica, action.adapter):
            self.progress(f"Requests for {action.adapter} on {action.target} were still in flight after "
                          f"{self.router.drain_timeout_s:.0f} s; unloading it anyway")
        removed = self._engine(replica).unload_adapter(action.adapter)
        return Outcome(action, OK if removed else UNCHANGED, "unloaded" if removed else "was not loaded")

    def _router(self, action: Action) -> Outcome:
        if self.router is None:
            return Outcome(action, SKIPPED, "this runtime has no router yet")
        held_back = self.held_back()
        message = self.router.update(held_back)
        if held_back:
            kept = ", ".join(f"{name} on {version}" for name, (version, _) in sorted(held_back.items()))
            message += f"; kept {kept}: the new version did not load everywhere it should serve"
        return Outcome(action, OK, message)

    def held_back(self) -> dict[str, tuple[str, str]]:
        """Specialists whose new active version failed to load on some replica that should hold it,
        mapped to the (version, path) engines still serve: the router keeps sending traffic there
        (automatic rollback). A specialist with no older version loaded anywhere has nothing to
        keep; the router's fallback policy answers for it."""
        active = {derived.served_adapter_name(s.name, s.version): s.name for s in self._specialists()}
        failed = {active[name] for names in self.not_loaded.values() for name in names if name in active}
        kept: dict[str, tuple[str, str]] = {}
        for unload in self._unloads:
            specialist = _specialist_of(unload.adapter)
            if specialist in failed and specialist not in kept and unload.path:
                kept[specialist] = (self._version_of(specialist, unload.adapter), unload.path)
        return kept

    def _specialists(self):
        return self.spec.specialists if self.spec is not None else ()

    def _version_of(self, specialist: str, served: str) -> str:
        """The version a served name stands for: a declared one when the file still lists it (served
        names replace `+`), otherwise read back from the name."""
        found = self.spec.specialist(specialist) if self.spec is not None else None
        if found is not None:
            declared = [found.version, *(v.version for v in found.versions)]
            for version in declared:
                if derived.served_adapter_name(specialist, version) == served:
                    return version
        return served.rpartition("--")[2]

    def _engine(self, replica: desired_mod.DesiredReplica) -> engine_client.EngineClient:
        return engine_client.EngineClient(f"http://{self.settings.host}:{replica.port}", self.settings.api_key)


def _specialist_of(served_name: str) -> str | None:
    """The specialist part of a served name `<specialist>--<version>` (derived.served_adapter_name)."""
    specialist, separator, _ = served_name.rpartition("--")
    return specialist if separator else None


def _message(exc: errors.FleetspecError) -> str:
    engine_message = getattr(exc, "engine_message", None)
    text = str(exc)
    if engine_message and engine_message not in text:
        text += f" (engine said: {engine_message})"
    hint = getattr(exc, "hint", "")
    return f"{text}; {hint}" if hint else text
