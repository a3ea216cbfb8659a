"""`fleetspec plan FILE`: does every server replica fit its GPUs, and what to change if not."""

from __future__ import annotations

import dataclasses
import json

import click

from fleetspec.cli import views

EXIT_OK, EXIT_ERROR = 0, 1


def build_plan(path: str):
    """Load, cross-check and plan a fleet file: (LoadedFleet, FleetPlan with every finding)."""
    from fleetspec import errors
    from fleetspec.planner import report
    from fleetspec.spec import loading
    from fleetspec.spec import models as spec_models

    loaded = loading.load_path(path)  # a broken file raises SpecError; app.main prints it
    checked = _checks(loaded)
    override = None
    if isinstance(loaded.spec.gpus, spec_models.GpuDiscovery):
        from fleetspec.planner import discovery

        override = discovery.discover()
    plan = report.plan_fleet(loaded.spec, override, locate=loaded.locate)
    planned = {(f.code, f.path) for f in plan.findings}
    merged = [d for d in checked if (d.code, d.path) not in planned] + list(plan.findings)
    return loaded, dataclasses.replace(plan, findings=tuple(sorted(merged, key=errors.sort_key)))


def _checks(loaded) -> list:
    try:
        from fleetspec.spec import checks
    except ImportError:  # cross-field checks are optional for planning
        return []
    return checks.check(loaded)


@click.command()
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("--format", "output", type=click.Choice(["human", "markdown", "json"]), default="human",
              show_default=True, help="markdown is meant for pull-request comments.")
@click.option("--detailed-exitcode", is_flag=True,
              help="Exit 2 when the fleet fits and changes are pending (needs live state; plan alone never returns 2).")
def plan(file: str, output: str, detailed_exitcode: bool) -> int:
    """Plan GPU memory: per server and GPU, weights, LoRA buffers, KV cache and what to change.

    Exit 0 when every replica fits, 1 on any error or when something does not fit.
    """
    from fleetspec.cli import plan_views

    _, fleet_plan = build_plan(file)
    if output == "json":
        click.echo(json.dumps(fleet_plan.to_json(), indent=2, ensure_ascii=False))
    elif output == "markdown":
        click.echo(plan_views.render_markdown(fleet_plan), nl=False)
    else:
        plan_views.render_human(fleet_plan)
        views.print_diagnostics(fleet_plan.findings, err=False)
        click.echo(plan_views.summary(fleet_plan))
    # Without live state there are never pending changes, so --detailed-exitcode cannot yield 2 yet.
    return EXIT_OK if fleet_plan.fits else EXIT_ERROR
