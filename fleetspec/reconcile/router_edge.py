"""The router as a fleet component, at the edge: where it listens, which config it serves, what was
changed on it at runtime, and bringing it up to date.

The router re-reads its config file itself (every 0.5 s), so an apply that only changes routes,
versions or upstreams writes the file and waits for the router to report the new config's hash:
nothing restarts. Only a changed router container (image, port, secrets) is replaced.
"""

from __future__ import annotations

import json
import os
import pathlib
import time
import urllib.request

from fleetspec import errors
from fleetspec.compile import deploy, desired
from fleetspec.drivers import files


def router_url(spec) -> str:
    return f"http://{desired.reachable_host(spec)}:{spec.runtime.router.port}"


def router_config_hash(url: str) -> str | None:
    """The hash of the config the running router serves (its /health says), or None."""
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=2.0) as response:  # noqa: S310 - our own router
            return json.loads(response.read()).get("config_hash")
    except (OSError, ValueError):
        return None


def router_drift(spec) -> list[str]:
    """Sentences for what the running router changed at runtime through its admin API (cluster
    mappings, warmed adapters): drift from the fleet file, reported, never silently kept.

    Needs the admin token (runtime.router.admin_token, resolved from this environment); without
    one the admin API is off and there can be no such drift."""
    token = spec.runtime.router.admin_token
    if not token:
        return []
    names = deploy.secret_names(token)
    if any(name not in os.environ for name in names):
        return [f"cannot check the router for runtime changes: export {', '.join(names)} (its admin token)"]
    for name in names:
        token = token.replace(f"${{{name}}}", os.environ[name])
    request = urllib.request.Request(f"{router_url(spec)}/admin/state", headers={"Authorization": f"Bearer {token}"})
    try:
        with urllib.request.urlopen(request, timeout=2.0) as response:  # noqa: S310 - our own router
            state_ = json.loads(response.read())
    except (OSError, ValueError):
        return []  # no router answering: the plan already says it will start one
    found = [f"the router maps cluster {c['cluster']} to {c['specialist']} at runtime (fleet.yaml says "
             f"{c.get('declared') or 'nothing'}); put it in the fleet file or clear it (POST /admin/clusters/clear)"
             for c in state_.get("clusters", [])]
    found += [f"the router warmed {w['served_name']} on {w['server']}/{w['replica']} at runtime; "
              "the next apply unloads it unless the fleet file declares it" for w in state_.get("warmed", [])]
    return found


def update_router(driver, prepared, progress=lambda _: None) -> str:
    """Write the router's config, (re)start the router if its container changed, and wait until it
    serves the new config. The router re-reads its file itself: routes move without a restart."""
    from fleetspec.routing import config as router_config

    spec, want = prepared.fleet.spec, prepared.desired
    config_path = pathlib.Path(want.router.argv[want.router.argv.index("--config") + 1])
    files.write_atomic(config_path, router_config.dumps(want.router_config))
    current = [c for c in driver.observe(spec.name) if c.role == "router"]
    fresh = [c for c in current if c.running and c.spec_hash == want.router.spec_hash()]
    if not fresh:
        for old in current:
            driver.remove(old.id)
        progress("Starting the router")
        driver.wait_running(driver.create(want.router), timeout_s=30.0)
    expected, url = want.router_config_hash(), router_url(spec)
    deadline = time.monotonic() + 15.0
    while router_config_hash(url) != expected:
        if time.monotonic() > deadline:
            raise errors.TemporaryError(f"the router at {url} did not pick up its new config within 15 s; "
                                        f"its config file is {config_path}")
        time.sleep(0.05)
    return f"router serves config {expected[:12]} at {url}" + ("" if fresh else " (started)")
