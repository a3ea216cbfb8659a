"""`fleetspec apply`, `status`, `destroy` and `rollback`: the commands that change or read a live fleet."""

from __future__ import annotations

import datetime
import pathlib
import sys

import click

from fleetspec import errors
from fleetspec.cli import reconcile_views, views

FORMATS = click.Choice(["human", "json"])


def _progress(text: str) -> None:
    stamp = datetime.datetime.now().strftime("%H:%M:%S")
    click.echo(f"[{stamp}] {text}", err=True)


def _confirm(question: str, yes: bool) -> None:
    if yes:
        return
    if not sys.stdin.isatty():
        raise errors.FleetspecError("refusing to change the fleet without confirmation; pass --yes in scripts")
    if not click.confirm(question, default=False):
        raise click.exceptions.Abort()


def _print_warnings(prepared) -> None:
    # Info findings belong to `fleetspec plan`; commands that act show only what may need acting on.
    views.print_diagnostics([d for d in prepared.warnings if d.severity is errors.Severity.WARNING])


def run_apply(prepared, driver, yes: bool, output: str, command: str) -> int:
    from fleetspec.reconcile import session

    reconcile_plan, have = session.live_plan(prepared, driver)
    if output == "human":
        click.echo(reconcile_views.plan_text(reconcile_plan))
    if not reconcile_plan.has_changes:
        session.converged(prepared, driver, have)  # remembered, so the next no-op apply is instant
        if output == "json":
            click.echo(views.dump_json({"plan": reconcile_plan.to_json(), "result": None}))
        return 0
    if output == "human":
        _confirm("Apply these changes?", yes)
    result, stale = session.apply(prepared, driver, reconcile_plan, progress=_progress, command=command)
    if stale:
        click.echo(f"note: {stale}", err=True)
    if output == "json":
        click.echo(views.dump_json({"plan": reconcile_plan.to_json(), "result": result.to_json()}))
    else:
        click.echo(reconcile_views.outcomes_text(result))
    return 0 if result.ok else 1


@click.command()
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation (for scripts and CI).")
@click.option("--format", "output", type=FORMATS, default="human", show_default=True)
def apply(file: str, yes: bool, output: str) -> int:
    """Make the running fleet match FILE: start, replace and remove servers; load and unload adapters hot."""
    from fleetspec.reconcile import session

    prepared = session.prepare(file)
    _print_warnings(prepared)
    return run_apply(prepared, session.open_driver(prepared), yes or output == "json", output, "fleetspec apply")


@click.command()
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("--format", "output", type=FORMATS, default="human", show_default=True)
def status(file: str, output: str) -> int:
    """Show servers, health, GPUs and loaded adapters per replica, and drift from FILE."""
    from fleetspec.reconcile import router_edge, session

    prepared = session.prepare(file)
    spec = prepared.fleet.spec
    have = session.observe(session.open_driver(prepared), spec)
    rows = reconcile_views.status_rows(prepared.desired, have)
    drift = router_edge.router_drift(spec) if have.router is not None else []
    router = reconcile_views.router_row(prepared.desired, have, router_edge.router_url(spec), drift)
    in_sync = all(not r["drift"] for r in rows) and not have.strays and not (router and router["drift"])
    if output == "json":
        click.echo(views.dump_json({"fleet": spec.name, "replicas": rows, "router": router,
                                    "strays": [c.to_json() for c in have.strays], "in_sync": in_sync}))
    else:
        click.echo(reconcile_views.status_text(spec.name, rows, len(have.strays), router))
    return 0


@click.command()
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")
def destroy(file: str, yes: bool) -> int:
    """Stop and remove every server and the router of the fleet in FILE (adapter files are untouched).

    Works even while FILE is invalid, as long as it still names the fleet."""
    from fleetspec import drivers
    from fleetspec.reconcile import session

    name, target, problems = session.fleet_identity(file)
    if problems:
        views.print_diagnostics(problems)
        click.echo(f"note: {file} has errors; destroying fleet {name} by the name it gives.", err=True)
    if target == "k8s":
        raise errors.FleetspecError(f"fleet {name} runs on Kubernetes; delete it with `kubectl delete -k DIR` "
                                    "on the manifests `fleetspec compile --target k8s` wrote")
    driver = drivers.for_runtime(target, pathlib.Path(file), name)
    reconcile_plan = session.destroy_plan(name, driver.observe(name))
    if not reconcile_plan.has_changes:
        click.echo(f"Nothing to destroy: fleet {name} has no containers.")
        return 0
    click.echo(reconcile_views.plan_text(reconcile_plan))
    _confirm(f"Destroy fleet {name}?", yes)
    result = session.destroy(pathlib.Path(file), name, driver, reconcile_plan, progress=_progress)
    click.echo(reconcile_views.outcomes_text(result))
    return 0 if result.ok else 1


@click.command()
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")
def rollback(file: str, yes: bool) -> int:
    """Re-apply the fleet file as it was before the last successful apply (engines, adapters, routes).

    Running it again goes forward to the newer one, like `cd -`."""
    from fleetspec.reconcile import session, state
    from fleetspec.spec import loading

    current = loading.load_path(file)
    fleet_state = state.load(pathlib.Path(file), current.spec.name)
    if not fleet_state.previous_applied_text:
        raise errors.FleetspecError(
            f"there is nothing to roll back to: fleet {current.spec.name} has been applied at most once"
        )
    previous = loading.load_text(fleet_state.previous_applied_text, file, base_dir=current.base_dir)
    prepared = session.prepare_loaded(previous)
    click.echo(f"Rolling back fleet {current.spec.name} to the fleet file applied before "
               f"{fleet_state.last_applied_at}.", err=True)
    code = run_apply(prepared, session.open_driver(prepared), yes, "human", "fleetspec rollback")
    if code == 0:
        click.echo(f"note: {file} still holds the newer version; `fleetspec apply` or `watch` would bring it back. "
                   "Revert the file too if the rollback should stick.", err=True)
    return code
