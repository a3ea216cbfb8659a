"""`fleetspec status`: what runs, read from the runtime and from each engine (its /health and its
/v1/models, through the one engine client), and how it differs from the file.

With --detailed-exitcode it is a monitor's check, like `plan --detailed-exitcode`: 0 in sync, 2 when
anything drifted (a dead or unhealthy replica included), 1 when status itself could not be told.
"""

from __future__ import annotations

import click

from fleetspec.cli import app, overrides_opt, status_views, views


@click.command()
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("--format", "output", type=click.Choice(["human", "json"]), default="human", show_default=True)
@click.option("--detailed-exitcode", is_flag=True,
              help="Exit 2 when the fleet differs from FILE (a replica down or unhealthy included), 0 when in sync.")
@overrides_opt.options
def status(file: str, output: str, detailed_exitcode: bool, **override) -> int:
    """Show each replica's process or container, its health and the adapters it serves, and drift from FILE.

    Exit 0, or 1 on any error; with --detailed-exitcode, 2 when anything differs from FILE."""
    from fleetspec.reconcile import router_edge, session

    prepared = overrides_opt.prepare(file, overrides_opt.make(**override))
    spec = prepared.fleet.spec
    have = session.observe(session.open_driver(prepared), spec)
    rows = status_views.status_rows(prepared.desired, have)
    drift = router_edge.router_drift(spec) if have.router is not None else []
    router = status_views.router_row(prepared.desired, have, router_edge.router_url(spec), drift)
    in_sync = status_views.in_sync(rows, have.strays, router)
    if output == "json":
        click.echo(views.dump_json({"fleet": spec.name, "replicas": rows, "router": router,
                                    "strays": [c.to_json() for c in have.strays],
                                    "stray_drift": status_views.stray_drift(have.strays), "in_sync": in_sync}))
    else:
        click.echo(status_views.status_text(spec.name, rows, have.strays, router))
    return app.EXIT_CHANGES if detailed_exitcode and not in_sync else app.EXIT_OK
