"""`fleetspec plan FILE`: does every server replica fit its GPUs, and what would apply change.

Two questions, one command: the memory plan (pure, from the file alone) and the reconcile plan
(the file against the running fleet, or against another fleet file with `--against`, which needs
nothing running: what would this pull request restart?).
"""

from __future__ import annotations

import json
import pathlib

import click

from fleetspec.cli import views

EXIT_OK, EXIT_ERROR, EXIT_CHANGES = 0, 1, 2


def build_plan(path: str):
    """Load, cross-check and plan a fleet file: (LoadedFleet, FleetPlan with every finding)."""
    from fleetspec.reconcile import session
    from fleetspec.spec import loading

    loaded = loading.load_path(path)  # a broken file raises SpecError; app.main prints it
    return loaded, session.memory_plan(loaded)


def reconcile_plan(loaded, fleet_plan, against: str | None):
    """(ReconcilePlan or None, note): the changes apply would make, or why they are unknown."""
    from fleetspec import errors
    from fleetspec.reconcile import diff, observed, session

    if not fleet_plan.fits:
        return None, "the fleet file has errors or does not fit, so apply would refuse it"
    new = session.prepare_loaded(loaded, memory=fleet_plan)
    if against is not None:
        old = _prepare_other(against, loaded.base_dir)
        last = {key: replica.container for key, replica in old.desired.replicas.items()}
        return diff.diff(new.desired, observed.from_desired(old.desired), last), None
    try:
        return session.live_plan(new, session.open_driver(new))[0], None
    except errors.FleetspecError as exc:
        return None, f"live state is unavailable ({exc}); showing the memory plan only"


def _prepare_other(path: str, base_dir: pathlib.Path):
    """The --against file, its relative paths read as if it lived next to the planned file (a base
    branch checked out elsewhere), so only real differences show up."""
    from fleetspec import errors
    from fleetspec.reconcile import session
    from fleetspec.spec import loading

    try:
        text = pathlib.Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise errors.FleetspecError(f"cannot read {path} to compare against ({exc.__class__.__name__}); "
                                    "check the path") from None
    try:
        return session.prepare_loaded(loading.load_text(text, path, base_dir=base_dir))
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
def plan(file: str, output: str, detailed_exitcode: bool, against: str | None, memory_only: bool) -> int:
    """Plan GPU memory per server and GPU, and the changes apply would make.

    Exit 0 when every replica fits, 1 on any error or when something does not fit; with
    --detailed-exitcode, 2 when it fits and changes are pending.
    """
    from fleetspec.cli import plan_views, reconcile_views

    loaded, fleet_plan = build_plan(file)
    changes, note = (None, None) if memory_only else reconcile_plan(loaded, fleet_plan, against)
    subject = f"the fleet in {against}" if against else "the running fleet"
    if output == "json":
        data = fleet_plan.to_json()
        data["reconcile"] = changes.to_json() if changes else None
        data["reconcile_note"] = note
        click.echo(json.dumps(data, indent=2, ensure_ascii=False))
    elif output == "markdown":
        click.echo(plan_views.render_markdown(fleet_plan), nl=False)
        if changes is not None:
            click.echo(f"\n### Changes against {subject}\n\n{reconcile_views.plan_markdown(changes)}")
    else:
        plan_views.render_human(fleet_plan)
        views.print_diagnostics(fleet_plan.findings, err=False)
        click.echo(plan_views.summary(fleet_plan))
        if changes is not None:
            click.echo("\n" + reconcile_views.plan_text(changes, subject))
    if note and output != "json":
        click.echo(f"note: {note}", err=True)
    if not fleet_plan.fits:
        return EXIT_ERROR
    return EXIT_CHANGES if detailed_exitcode and changes is not None and changes.has_changes else EXIT_OK
