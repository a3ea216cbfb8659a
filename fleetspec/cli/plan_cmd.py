"""`fleetspec plan FILE`: does every server replica fit its GPUs, and what would apply change.

Two questions, one command: the memory plan (pure, from the file alone) and the reconcile plan
(the file against the running fleet, or against another fleet file with `--against`, which needs
nothing running: what would this pull request restart?).
"""

from __future__ import annotations

import json
import pathlib

import click

from fleetspec.cli import overrides_opt, views

EXIT_OK, EXIT_ERROR, EXIT_CHANGES = 0, 1, 2


def build_plan(path: str, overrides=None):
    """Load, cross-check and plan a fleet file: (LoadedFleet, FleetPlan with every finding)."""
    from fleetspec.reconcile import session
    from fleetspec.spec import loading
    from fleetspec.spec import overrides as overrides_mod

    loaded = loading.load_path(path)  # a broken file raises SpecError; app.main prints it
    if overrides:
        loaded = overrides_mod.apply(loaded, overrides)
    return loaded, session.memory_plan(loaded)


def reconcile_plan(loaded, fleet_plan, against: str | None):
    """(ReconcilePlan or None, note): the changes apply would make, or why they are unknown."""
    from fleetspec import errors
    from fleetspec.reconcile import diff, observed, session

    if not fleet_plan.fits:
        if all(server.fits for server in fleet_plan.servers):  # a corrupt adapter is no memory problem
            return None, "apply would refuse the fleet file for the error(s) above, so no changes are listed"
        return None, "the fleet does not fit in memory, so apply would refuse it and no changes are listed"
    new = session.prepare_loaded(loaded, memory=fleet_plan)
    if against is not None:
        old = _prepare_other(against, loaded.base_dir)
        last = {key: replica.container for key, replica in old.desired.replicas.items()}
        return diff.diff(new.desired, observed.from_desired(old.desired), last), None
    try:
        return session.live_plan(new, session.open_driver(new))[0], None
    except errors.FleetspecError as exc:
        return None, f"live state is unavailable ({exc}); showing the memory plan only"


def _load_other(path: str, base_dir: pathlib.Path):
    """The --against file, its relative paths read as if it lived next to the planned file (a base
    branch checked out elsewhere), so only real differences show up."""
    from fleetspec import errors
    from fleetspec.spec import loading

    try:
        text = pathlib.Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise errors.FleetspecError(f"cannot read {path} to compare against ({exc.__class__.__name__}); "
                                    "check the path") from None
    return loading.load_text(text, path, base_dir=base_dir)


def k8s_changes(loaded, fleet_plan, against: str):
    """For a Kubernetes fleet: both files compiled to manifests, and per changed object whether it is
    hot (a ConfigMap the agents or the router apply) or a rollout (a changed pod template)."""
    from fleetspec import errors
    from fleetspec.compile import k8s, slots
    from fleetspec.compile import k8s_changes as changes_mod
    from fleetspec.reconcile import session
    from fleetspec.routing import config as router_config

    other = _load_other(against, loaded.base_dir)
    other_plan = session.memory_plan(other)
    if not other_plan.fits:
        raise errors.FleetspecError(f"{against} does not plan, so its manifests cannot be compiled to compare "
                                    f"against; run `fleetspec plan {against}`")

    def manifests(fleet, memory):
        return k8s.compile_manifests(fleet.spec, slots.from_plan(memory), fleet.base_dir,
                                     cluster_maps=router_config.load_cluster_maps(fleet))

    return changes_mod.compare(manifests(other, other_plan), manifests(loaded, fleet_plan))


def _prepare_other(path: str, base_dir: pathlib.Path):
    from fleetspec import errors
    from fleetspec.reconcile import session

    try:
        return session.prepare_loaded(_load_other(path, base_dir))
    except errors.SpecError as exc:
        raise errors.FleetspecError(f"{path} is not a valid, fitting fleet file; fix it first "
                                    f"({len(exc.diagnostics)} problem(s): run `fleetspec plan {path}`)") from None


@click.command()
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("--format", "output", type=click.Choice(["human", "markdown", "json"]), default="human",
              show_default=True, help="markdown is meant for pull-request comments.")
@click.option("--detailed-exitcode", is_flag=True, help="Exit 2 when the fleet fits and changes are pending.")
@click.option("--against", type=click.Path(dir_okay=False),
              help="Diff against another fleet file (e.g. the base branch's) instead of the running fleet.")
@click.option("--memory-only", is_flag=True, help="Skip the reconcile plan; do not look at the running fleet.")
@click.option("--explain", is_flag=True,
              help="Say, per memory term, where its figure comes from and how far to trust it.")
@overrides_opt.options
def plan(file: str, output: str, detailed_exitcode: bool, against: str | None, memory_only: bool,
         explain: bool = False, **override) -> int:
    """Plan GPU memory per server and GPU, and the changes apply would make.

    Exit 0 when every replica fits, 1 on any error or when something does not fit; with
    --detailed-exitcode, 2 when it fits and changes are pending.
    """
    from fleetspec.cli import plan_views, reconcile_views

    loaded, fleet_plan = build_plan(file, overrides_opt.make(**override))
    changes, note = (None, None) if memory_only else reconcile_plan(loaded, fleet_plan, against)
    subject = f"the fleet in {against}" if against else "the running fleet"
    kube = None
    if changes is not None and against and loaded.spec.runtime.target == "k8s":
        kube = k8s_changes(loaded, fleet_plan, against)  # shown instead: pods, not replica slots, restart
    if output == "json":
        data = fleet_plan.to_json()
        data["reconcile"] = changes.to_json() if changes else None
        data["reconcile_note"] = note
        if kube is not None:
            data["kubernetes_changes"] = [c.to_json() for c in kube]
        click.echo(json.dumps(data, indent=2, ensure_ascii=False))
    elif output == "markdown":
        click.echo(plan_views.render_markdown(fleet_plan), nl=False)
        if kube is not None:
            click.echo(f"\n### Kubernetes changes against {subject}\n\n{_k8s_text(kube, markdown=True)}")
        elif changes is not None:
            click.echo(f"\n### Changes against {subject}\n\n{reconcile_views.plan_markdown(changes)}")
    else:
        plan_views.render_human(fleet_plan)
        if explain:
            click.echo(_explain_text(fleet_plan))
        views.print_diagnostics(fleet_plan.findings, err=False)
        click.echo(plan_views.summary_text(fleet_plan))
        if kube is not None:
            click.echo(f"\nKubernetes changes against {subject} (kubectl apply -k):\n{_k8s_text(kube)}")
        elif changes is not None:
            click.echo("\n" + reconcile_views.plan_text(changes, subject))
    if note and output != "json":
        click.echo(f"note: {note}", err=True)
    if not fleet_plan.fits:
        return EXIT_ERROR
    pending = bool(kube) if kube is not None else changes is not None and changes.has_changes
    return EXIT_CHANGES if detailed_exitcode and pending else EXIT_OK


def _explain_text(fleet_plan) -> str:
    """One line per term of each server's budget (per GPU type): source and confidence."""
    lines = ["", "Where each figure comes from (per GPU):"]
    for server in fleet_plan.servers:
        seen = set()
        for replica in server.replicas:
            b = replica.budget
            if b is None or replica.gpu_type in seen:
                continue
            seen.add(replica.gpu_type)
            lines.append(f"  {server.name} on {replica.gpu_type}:")
            lines.extend(f"    {t.line()}" for t in b.terms)
    return "\n".join(lines)


def _k8s_text(kube, markdown: bool = False) -> str:
    if not kube:
        return "No changes: the compiled manifests are the same."
    rollouts = [c for c in kube if c.restarts]
    hot = [c for c in kube if c.effect == "hot"]
    bullet = "- " if markdown else "  "
    lines = [bullet + c.line() for c in kube]
    if rollouts:
        lines.append(f"{len(rollouts)} Deployment(s) roll out (pods restart); {len(hot)} change(s) are hot "
                     "(ConfigMap only).")
    else:
        lines.append(f"No pod restarts: {len(hot)} change(s) are hot (ConfigMap only), applied by the agents and "
                     "the router within kubelet's ConfigMap delay (up to about a minute).")
    return "\n".join(lines)
