"""`fleetspec apply`, `destroy` and `rollback`: the commands that change a live fleet (`status` reads it)."""

from __future__ import annotations

import dataclasses
import datetime
import pathlib
import sys

import click

from fleetspec import errors
from fleetspec.cli import overrides_opt, reconcile_views, views

FORMATS = click.Choice(["human", "json"])


def _progress(text: str) -> None:
    stamp = datetime.datetime.now().strftime("%H:%M:%S")
    click.echo(f"[{stamp}] {text}", err=True)


def _confirm(question: str, yes: bool, without_asking: str) -> None:
    if yes:
        return
    if not sys.stdin.isatty():
        raise errors.FleetspecError(
            f"not confirmed: fleetspec asks \"{question}\" before it changes a fleet, and nobody can answer here "
            f"(standard input is not a terminal). To go ahead without asking, run `{without_asking}`")
    if not click.confirm(question, default=False):
        raise click.exceptions.Abort()


def _again(command: str, file, flags: str | None) -> str:
    """The command to type to go ahead without the prompt: the same flags (`--runtime local` picks
    which fleet it is), plus --yes."""
    return " ".join(part for part in (command, str(file), flags or "", "--yes") if part)


def _print_warnings(prepared) -> None:
    # Info findings belong to `fleetspec plan`; commands that act show only what may need acting on.
    views.print_diagnostics([d for d in prepared.warnings if d.severity is errors.Severity.WARNING])


def run_apply(prepared, driver, yes: bool, output: str, command: str) -> int:
    from fleetspec.reconcile import session

    reconcile_plan, have = session.live_plan(prepared, driver)
    _say_if_state_lost(prepared, have)
    if output == "human":
        click.echo(reconcile_views.plan_text(reconcile_plan))
    if not reconcile_plan.has_changes:
        session.converged(prepared, driver, have)  # remembered, so the next no-op apply is instant
        if output == "json":
            click.echo(views.dump_json({"plan": reconcile_plan.to_json(), "result": None}))
        return 0
    if output == "human":
        _confirm("Apply these changes?", yes, _again(command, prepared.fleet.file, prepared.overrides))
    result, stale = session.apply(prepared, driver, reconcile_plan, progress=_progress, command=command)
    if stale:
        click.echo(f"note: {stale}", err=True)
    if output == "json":
        click.echo(views.dump_json({"plan": reconcile_plan.to_json(), "result": result.to_json()}))
    else:
        click.echo(reconcile_views.outcomes_text(result))
    return 0 if result.ok else 1


def _say_if_state_lost(prepared, have) -> None:
    """A fleet that runs without a state file lost it (`rm -rf .fleetspec`): apply rebuilds it; say at what cost."""
    from fleetspec.reconcile import state

    if (have.replicas or have.router) and not state.state_path(prepared.file, prepared.fleet.spec.name).exists():
        click.echo(f"note: fleet {prepared.fleet.spec.name} runs but its state file "
                   f"{state.state_path(prepared.file, prepared.fleet.spec.name)} is gone; this apply rebuilds it "
                   f"from what runs. {state.REBUILD_LOSES}", err=True)


@click.command()
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation (for scripts and CI).")
@click.option("--format", "output", type=FORMATS, default="human", show_default=True)
@click.option("--rebuild-state", is_flag=True,
              help="Move a damaged state file aside and rebuild it from what runs (adapter ids and rollback "
                   "history are lost).")
@overrides_opt.options
def apply(file: str, yes: bool, output: str, rebuild_state: bool = False, **override) -> int:
    """Make the running fleet match FILE: start, replace and remove servers; load and unload adapters hot."""
    from fleetspec.reconcile import session, state

    prepared = overrides_opt.prepare(file, overrides_opt.make(**override))
    _print_warnings(prepared)
    if rebuild_state:
        _, aside = state.rebuild(prepared.file, prepared.fleet.spec.name)
        kept = f"the old file is kept as {aside}" if aside else "there was no state file"
        click.echo(f"note: rebuilding the state of fleet {prepared.fleet.spec.name} from what runs ({kept}). "
                   f"{state.REBUILD_LOSES}", err=True)
    return run_apply(prepared, session.open_driver(prepared), yes or output == "json", output, "fleetspec apply")


@click.command()
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")
@overrides_opt.options
def destroy(file: str, yes: bool, **override) -> int:
    """Stop and remove every server and the router of the fleet in FILE (adapter files are untouched).

    Works even while FILE is invalid, as long as it still names the fleet."""
    from fleetspec import drivers
    from fleetspec.reconcile import session

    name, target, problems = session.fleet_identity(file)
    target = override["target"] or target  # --runtime: the fleet runs where apply --runtime put it
    if problems:
        views.print_diagnostics(problems)
        click.echo(f"note: {file} has errors; destroying fleet {name} by the name it gives.", err=True)
    if target == "k8s":
        raise errors.FleetspecError(f"fleet {name} runs on Kubernetes; delete it with `kubectl delete -k DIR` "
                                    "on the manifests `fleetspec compile --target k8s` wrote")
    driver = drivers.for_runtime(target, pathlib.Path(file), name)
    found = driver.observe(name)
    reconcile_plan = session.destroy_plan(name, found)
    if not reconcile_plan.has_changes:
        where = "processes (running or stopped) on this machine" if target == "local" else "containers"
        click.echo(f"Nothing to destroy: fleet {name} has no {where}.")
        return 0
    click.echo(reconcile_views.destroy_text(name, found))
    _confirm(f"Destroy fleet {name}?", yes, _again("fleetspec destroy", file, overrides_opt.make(**override).describe()))
    result = session.destroy(pathlib.Path(file), name, driver, reconcile_plan, progress=_progress)
    click.echo(reconcile_views.outcomes_text(result, teardown=True))
    return 0 if result.ok else 1


@click.command()
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")
@overrides_opt.options
def rollback(file: str, yes: bool, **override) -> int:
    """Re-apply the fleet file as it was before the last successful apply (engines, adapters, routes).

    Running it again goes forward to the newer one, like `cd -`."""
    from fleetspec.reconcile import session, state
    from fleetspec.spec import loading, overrides

    current = loading.load_path(file)
    fleet_state = state.load(pathlib.Path(file), current.spec.name)
    if not fleet_state.previous_applied_text:
        raise errors.FleetspecError(
            f"there is nothing to roll back to: fleet {current.spec.name} has been applied at most once"
        )
    previous = loading.load_text(fleet_state.previous_applied_text, file, base_dir=current.base_dir)
    changes = overrides_opt.make(**override)
    prepared = session.prepare_loaded(overrides.apply(previous, changes))
    if changes:
        prepared = dataclasses.replace(prepared, overrides=changes.describe())
    click.echo(f"Rolling back fleet {current.spec.name} to the fleet file applied before "
               f"{fleet_state.last_applied_at}.", err=True)
    code = run_apply(prepared, session.open_driver(prepared), yes, "human", "fleetspec rollback")
    if code == 0:
        click.echo(f"note: {file} still holds the newer version; `fleetspec apply` or `watch` would bring it back. "
                   "Revert the file too if the rollback should stick.", err=True)
    return code
