"""The reconcile pipeline end to end, as the CLI and the watch loop run it.

load → checks → memory plan → desired state → observe → diff → (apply). Every step before observe
is pure; this module is where the pure core meets the runtime, the engines and the state file.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import datetime
import os
import pathlib
import re

from fleetspec import errors
from fleetspec.compile import desired
from fleetspec.compile import slots as slots_mod
from fleetspec.engine_api import client as engine_client
from fleetspec.errors import Diagnostic
from fleetspec.planner import report
from fleetspec.reconcile import apply as apply_mod
from fleetspec.reconcile import diff, observed, router_edge, state
from fleetspec.reconcile import plan as plan_mod
from fleetspec.spec import loading, models
from fleetspec.validation import checks as validation_checks


@dataclasses.dataclass(frozen=True)
class Prepared:
    """A fleet file that validated and planned, turned into what should run."""

    fleet: loading.LoadedFleet
    memory: report.FleetPlan
    desired: desired.DesiredState
    warnings: tuple[Diagnostic, ...]
    overrides: str = ""  # command-line overrides in effect (`spec.overrides`), as typed; "" for none

    @property
    def file(self) -> pathlib.Path:
        return pathlib.Path(self.fleet.file)


def memory_plan(fleet: loading.LoadedFleet) -> report.FleetPlan:
    """Checks, adapter files and memory plan; NVML is asked for the GPUs when the fleet says
    `discover: true`. Adapters found on this machine are planned with their real ranks and sizes."""
    from fleetspec.adapters import survey

    override = None
    if isinstance(fleet.spec.gpus, models.GpuDiscovery):
        from fleetspec.planner import discovery

        override = discovery.discover()
    reviewed = survey.review(fleet)
    inspected = {key: report.InspectedAdapter(info.max_rank, info.target_modules_present or None,
                                              sum(m.numel for m in info.modules) if info.tensors_known else None)
                 for key, info in reviewed.infos.items()}
    return validation_checks.plan_loaded(fleet, override, inspected, _absent_as_warnings(reviewed.diagnostics))


def _absent_as_warnings(diagnostics: list[Diagnostic], listed: int = 3) -> list[Diagnostic]:
    """Missing adapter directories become warnings, summarised when there are many.

    Adapters usually live on the serving hosts, not where plans run (a CI job, a laptop): the plan
    then uses the declared ranks, and apply reports the engine's own error if one is really missing.
    """
    missing = [d for d in diagnostics if d.code == "adapter-missing"]
    others = [d for d in diagnostics if d.code != "adapter-missing"]
    hint = "the plan uses the declared ranks for them; apply reports any that the engine cannot find"
    if len(missing) <= listed:
        return others + [dataclasses.replace(d, severity=errors.Severity.WARNING, hint=hint) for d in missing]
    first = missing[0]
    return others + [dataclasses.replace(
        first, severity=errors.Severity.WARNING, path="specialists",
        message=f"{len(missing)} adapter directories are not on this machine (first: {first.path})", hint=hint,
    )]


def prepare_loaded(fleet: loading.LoadedFleet, env: desired.Environment | None = None,
                   memory: report.FleetPlan | None = None) -> Prepared:
    """Raise SpecError with every error of the file (validation, cross-field, memory plan)."""
    memory = memory or memory_plan(fleet)
    if not memory.fits:
        raise errors.SpecError(list(memory.findings))
    env = env or environment_for(fleet.spec, fleet)
    want = desired.build(fleet.spec, slots_mod.from_plan(memory), env, base_dir=fleet.base_dir)
    return Prepared(fleet, memory, want, tuple(d for d in memory.findings if not d.is_error))


def prepare(path: str | pathlib.Path, env: desired.Environment | None = None) -> Prepared:
    return prepare_loaded(loading.load_path(path), env)


def environment_for(spec, fleet: loading.LoadedFleet | None = None) -> desired.Environment:
    """Where this fleet runs; with the loaded file, also where its router's config goes.

    Kubernetes fleets get container-shaped desired state too: fleetspec does not run them, but
    `plan --against` diffs two of them to say what a change would restart."""
    if spec.runtime.target in ("docker", "k8s"):
        from fleetspec.images import payload

        env = desired.Environment("docker", sim_image=f"{payload.SIM_REPOSITORY}:{payload.project_version()}")
    else:
        env = desired.Environment("local")
    if fleet is None or not spec.runtime.router.enabled:
        return env
    from fleetspec import drivers
    from fleetspec.routing import config as router_config

    # From base_dir, not the file's own path: `plan --against` reads the other file as if it lived here.
    path = drivers.run_dir(fleet.base_dir / pathlib.Path(fleet.file).name, spec.name).resolve() / "router.json"
    return dataclasses.replace(env, router_config_path=str(path), cluster_maps=router_config.load_cluster_maps(fleet))


def refuse_unmanaged(spec) -> None:
    """Raise the sentence that says what to do for a fleet fleetspec does not run itself."""
    if spec.runtime.target == "k8s":
        raise errors.PermanentError(
            "this fleet targets Kubernetes; fleetspec does not reconcile clusters itself. Compile it with "
            "`fleetspec compile FILE --target k8s -o DIR` and apply the manifests with kubectl or Argo CD"
        )


def open_driver(prepared: Prepared):
    """The runtime driver; Kubernetes has none (PermanentError saying to compile and kubectl apply)."""
    from fleetspec import drivers

    refuse_unmanaged(prepared.fleet.spec)

    return drivers.for_runtime(prepared.fleet.spec.runtime.target, prepared.file, prepared.fleet.spec.name)


probe_host = desired.reachable_host


def engine_api_key(spec) -> str | None:
    """The engines' key, read from fleetspec's own environment (here, at the edge, and nowhere else)."""
    reference = spec.runtime.engine_api_key
    if reference is None:
        return None
    variable = models.SECRET_ONLY.fullmatch(reference).group(1)
    value = os.environ.get(variable)
    if not value:
        raise errors.PermanentError(
            f"runtime.engine_api_key refers to ${{{variable}}}, but {variable} is not set in this shell. Export "
            f"{variable} (the key the engines were started with, or will be) and run fleetspec again.")
    return value


def observe(driver, spec) -> observed.ObservedState:
    """Containers by label, then each running engine's /health and /v1/models, probed in parallel."""
    containers = driver.observe(spec.name)
    key = engine_api_key(spec)

    def probe(container):
        if container.host_port is None:
            return None, False, None, f"the {container.noun} publishes no port, so its engine cannot be asked"
        client = engine_client.EngineClient(f"http://{probe_host(spec)}:{container.host_port}", key)
        problem = client.health_problem()
        if problem is not None:
            return client.base_url, False, None, problem
        try:
            return client.base_url, True, dict(client.models().adapters), None
        except errors.FleetspecError as exc:
            return client.base_url, False, None, f"/health answers, but listing its adapters failed: {exc}"

    running = [c for c in containers if c.running and c.role != "router"]
    with concurrent.futures.ThreadPoolExecutor(max_workers=min(16, len(running) or 1)) as pool:
        answers = dict(zip([c.id for c in running], pool.map(probe, running), strict=True))
    have = observed.assemble(spec.name, containers, lambda c: answers.get(c.id, observed.NOT_PROBED))
    if have.router is not None and have.router.running:
        have = dataclasses.replace(have, router_config_hash=router_edge.router_config_hash(router_edge.router_url(spec)))
    return have


def last_applied_containers(fleet_state: state.FleetState) -> dict[tuple[str, int], desired.ContainerSpec]:
    result = {}
    for key, data in fleet_state.containers.items():
        server, _, replica = key.rpartition("/")
        result[(server, int(replica))] = desired.ContainerSpec.from_json(data)
    return result


def live_plan(prepared: Prepared, driver) -> tuple[plan_mod.ReconcilePlan, observed.ObservedState]:
    have = observe(driver, prepared.fleet.spec)
    fleet_state = state.load(prepared.file, prepared.fleet.spec.name)
    reconcile_plan = diff.diff(prepared.desired, have, last_applied_containers(fleet_state),
                               now=datetime.datetime.now(datetime.UTC))
    notes = router_edge.router_drift(prepared.fleet.spec) if have.router is not None else []
    return dataclasses.replace(reconcile_plan, notes=tuple(notes)), have


def apply(prepared: Prepared, driver, reconcile_plan: plan_mod.ReconcilePlan, progress=lambda _: None,
          command: str = "fleetspec apply") -> tuple[apply_mod.ApplyResult, str | None]:
    """Run the plan under the fleet's lock and record what was applied. Returns (result, stale-lock note)."""
    spec = prepared.fleet.spec
    with state.lock(prepared.file, spec.name, command) as stale_note:
        starts = (plan_mod.Kind.CREATE, plan_mod.Kind.REPLACE, plan_mod.Kind.UPDATE_ROUTER)
        if any(reconcile_plan.of_kind(kind) for kind in starts):
            _ensure_images(prepared, progress)  # only new containers need it; adapter changes stay fast
        applier = apply_mod.Applier(driver, prepared.desired, apply_mod.Settings(host=probe_host(spec), api_key=engine_api_key(spec)),
                                    progress=progress,
                                    router=router_edge.RouterLink(driver, prepared, progress), spec=spec)
        result = applier.run(reconcile_plan)
        fleet_state = state.load(prepared.file, spec.name)
        for name in sorted({a for r in prepared.desired.replicas.values() for a in r.adapters}):
            fleet_state.lora_id(name)
        # History (for rollback) records a file only once the fleet really matches it: a partial
        # apply (a failed action, or a watch cycle that held actions back) is not a rollback point.
        if result.ok and converged(prepared, driver):
            containers = {f"{k[0]}/{k[1]}": r.container.to_json() for k, r in prepared.desired.replicas.items()}
            fleet_state.record_applied(prepared.fleet.text, containers)
        state.save(prepared.file, fleet_state)
    return result, stale_note


def _ensure_images(prepared: Prepared, progress) -> None:
    spec = prepared.fleet.spec
    router_needs_it = prepared.desired.router is not None and not spec.runtime.router.image
    if spec.runtime.target != "docker" or (spec.runtime.engine != "sim" and not router_needs_it):
        return
    from fleetspec.drivers import docker as docker_driver
    from fleetspec.images import build as images_build

    progress("Making sure fleetspec's image (sim engine, router) is built (first time: about a minute)")
    images_build.ensure_sim_image(docker_driver.connect())


def destroy_plan(fleet: str, containers) -> plan_mod.ReconcilePlan:
    """Remove every container of the fleet (engines, router, strays), engines first."""
    ordered = sorted(containers, key=lambda c: (c.role == "router", c.server or "", c.replica or 0, c.name))
    actions = [plan_mod.Action(plan_mod.Kind.REMOVE, c.name, "the fleet is being destroyed", server=c.server,
                               replica=c.replica, container_id=c.id) for c in ordered]
    return plan_mod.ReconcilePlan(fleet, tuple(actions))


def destroy(fleet_file: pathlib.Path, fleet: str, driver, reconcile_plan: plan_mod.ReconcilePlan,
            progress=lambda _: None) -> apply_mod.ApplyResult:
    """Run a destroy plan under the fleet's lock. Needs no valid fleet file: only its name."""
    from fleetspec.reconcile import fastpath

    with state.lock(fleet_file, fleet, "fleetspec destroy"):
        result = apply_mod.Applier(driver, desired.DesiredState(fleet, {}), progress=progress).run(reconcile_plan)
    fastpath.forget(fleet_file)
    return result


_NAME_LINE = re.compile(r"^name:\s*[\"']?([a-z0-9-]+)[\"']?\s*(?:#.*)?$", re.MULTILINE)
_TARGET_LINE = re.compile(r"^\s+target:\s*[\"']?(local|docker|k8s)[\"']?\s*(?:#.*)?$", re.MULTILINE)


def _identity_lines(text: str) -> dict:
    name, target = _NAME_LINE.search(text), _TARGET_LINE.search(text)
    return {"name": name.group(1) if name else None, "runtime": {"target": target.group(1) if target else "local"}}


def fleet_identity(path: str | pathlib.Path) -> tuple[str, str, list[Diagnostic]]:
    """(fleet name, runtime target, diagnostics) from a fleet file, even a broken one: an operator
    must be able to tear a fleet down while its file is half-edited. Raises SpecError only when the
    file does not even say its name."""
    try:
        spec = loading.load_path(path).spec
        return spec.name, spec.runtime.target, []
    except errors.SpecError as exc:
        broken = exc
    from fleetspec.spec import yaml_source

    try:
        text = pathlib.Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        raise broken from None
    try:
        raw, _ = yaml_source.parse(text, str(path))
    except yaml_source.YamlProblem:
        raw = _identity_lines(text)  # half-written YAML: the top-level lines that name the fleet
    runtime = raw.get("runtime") if isinstance(raw, dict) and isinstance(raw.get("runtime"), dict) else {}
    name = raw.get("name") if isinstance(raw, dict) else None
    target = runtime.get("target", "local")
    if not isinstance(name, str) or not re.fullmatch(models.NAME_PATTERN, name) or target not in ("local", "docker", "k8s"):
        raise broken
    return name, target, broken.diagnostics


def referenced_files(fleet: loading.LoadedFleet) -> list[str]:
    """Files besides the fleet file whose content decides the desired state."""
    found = []
    for rule in fleet.spec.routing.rules:
        if isinstance(rule, models.HashClusterRule) and rule.hash_clusters.map_file:
            found.append(str(fleet.resolve_path(rule.hash_clusters.map_file)))
    base_id = fleet.spec.base_model.id
    if base_id.startswith((".", "/", "~")):
        found.append(str(fleet.resolve_path(base_id) / "config.json"))
    return found


def converged(prepared: Prepared, driver, have: observed.ObservedState | None = None) -> bool:
    """Whether the live fleet matches the file now (`convergence.differences`, the definition the
    fast path uses too); when it does, remember it so the next no-op apply takes the fast path."""
    from fleetspec.reconcile import convergence, fastpath

    spec = prepared.fleet.spec
    have = have or observe(driver, spec)
    wanted = convergence.wanted_of(prepared.desired)
    if convergence.differences(wanted, convergence.seen_of(have)):
        fastpath.forget(prepared.file)
        return False
    if prepared.overrides:
        fastpath.forget(prepared.file)  # a record means the file as written: a plain apply must not match this
    elif spec.runtime.target in ("docker", "local"):
        key_variable = models.SECRET_ONLY.fullmatch(spec.runtime.engine_api_key) if spec.runtime.engine_api_key else None
        from fleetspec import drivers

        runtime = fastpath.Runtime(
            spec.runtime.target, probe_host(spec),
            run_dir=str(drivers.run_dir(prepared.file, spec.name).resolve()) if spec.runtime.target == "local" else None,
            router_url=router_edge.router_url(spec) if have.router is not None else None,
            key_variable=key_variable.group(1) if key_variable else None)
        ports = {r.container.id: r.container.host_port for r in have.replicas.values() if r.container.host_port}
        fastpath.write_record(prepared.file, spec.name, referenced_files(prepared.fleet), runtime, wanted, ports)
    return True
