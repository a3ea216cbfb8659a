"""`fleetspec status`: what runs, read from the runtime and from each engine (its /health and its
/v1/models, through the one engine client), and how it differs from the file.

A Kubernetes fleet is read through its router (fleetspec has no access to the cluster's API): the
router's /health lists every pod it discovered, its engine's health and adapters, and what the pod's
agent says of its ConfigMap (`--router-url`, by default the fleet's Ingress host).

With --detailed-exitcode it is a monitor's check, like `plan --detailed-exitcode`: 0 in sync, 2 when
anything drifted (a dead or unhealthy replica included, and on Kubernetes an agent that refused its
ConfigMap or does not answer), 1 when status itself could not be told.
"""

from __future__ import annotations

import click

from fleetspec.cli import app, overrides_opt, status_views, views


@click.command()
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("--format", "output", type=click.Choice(["human", "json"]), default="human", show_default=True)
@click.option("--detailed-exitcode", is_flag=True,
              help="Exit 2 when the fleet differs from FILE (a replica down or unhealthy included), 0 when in sync.")
@click.option("--router-url", metavar="URL",
              help="runtime.target k8s: the fleet's router, whose /health lists the pods (default: "
                   "http://<runtime.kubernetes.ingress_host>).")
@overrides_opt.options
def status(file: str, output: str, detailed_exitcode: bool, router_url: str | None, **override) -> int:
    """Show each replica's process or container, its health and the adapters it serves, and drift from FILE.

    Exit 0, or 1 on any error; with --detailed-exitcode, 2 when anything differs from FILE."""
    from fleetspec.reconcile import router_edge, session

    prepared = overrides_opt.prepare(file, overrides_opt.make(**override))
    spec = prepared.fleet.spec
    if spec.runtime.target == "k8s":
        in_sync = _kubernetes(prepared, router_url, output)
        return app.EXIT_CHANGES if detailed_exitcode and not in_sync else app.EXIT_OK
    if router_url is not None:
        raise click.UsageError(f"--router-url is for fleets on Kubernetes; {file} runs on runtime "
                               f"{spec.runtime.target}, whose router fleetspec finds itself.")
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


def _kubernetes(prepared, router_url: str | None, output: str) -> bool:
    """Print the pods as the fleet's router sees them; True when in sync with the file."""
    from fleetspec import errors
    from fleetspec.compile import k8s
    from fleetspec.reconcile import router_edge
    from fleetspec.routing import config as router_config

    spec, fleet = prepared.fleet.spec, prepared.fleet
    if not spec.runtime.router.enabled:
        raise errors.PermanentError(
            "fleetspec status reads a Kubernetes fleet through its router's /health, and this fleet disables "
            "the router (runtime.router.enabled: false), so there is nothing it can read: use kubectl.")
    url = (router_url or status_views.k8s_router_url(spec) or "").rstrip("/")
    if not url:
        raise errors.PermanentError(
            "fleetspec status reads a Kubernetes fleet through its router and this fleet sets no "
            "runtime.kubernetes.ingress_host, so pass --router-url (for example `kubectl -n "
            f"{k8s.namespace_of(spec)} port-forward svc/router 8080:8080` "
            "and --router-url http://127.0.0.1:8080).")
    want = status_views.k8s_desired(spec, fleet.base_dir, router_config.load_cluster_maps(fleet))
    health = router_edge.read_health(url)
    rows = status_views.pod_rows(want, health)
    router = status_views.k8s_router_row(want, health, url, router_edge.router_drift(spec, url))
    in_sync = status_views.in_sync(rows, (), router)
    if output == "json":
        click.echo(views.dump_json({"fleet": spec.name, "target": "k8s", "namespace": want.namespace,
                                    "router_url": url, "pods": rows, "router": router, "in_sync": in_sync}))
    else:
        click.echo(status_views.k8s_status_text(want, rows, router))
    return in_sync
