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
import urllib.error
import urllib.request

from fleetspec import errors
from fleetspec.compile import deploy, desired
from fleetspec.drivers import files
from fleetspec.reconcile import fastpath
from fleetspec.routing import config as router_config


def router_url(spec) -> str:
    return f"http://{desired.reachable_host(spec)}:{spec.runtime.router.port}"


router_config_hash = fastpath.router_config_hash  # one way to ask, shared with the fast path


def router_drift(spec, url: str | None = None) -> list[str]:
    """Sentences for what the running router changed at runtime through its admin API (cluster
    mappings, warmed adapters): drift from the fleet file, reported, never silently kept. `url`: where
    the router answers (by default where this machine runs it).

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
    request = urllib.request.Request(f"{url or router_url(spec)}/admin/state",
                                     headers={"Authorization": f"Bearer {token}"})
    try:
        state_ = json.loads(_bounded_get(request, 2.0, MAX_STATE_BYTES))
    except (OSError, ValueError):
        return []  # no router answering (or not a router's answer): the plan already says it will start one
    if not isinstance(state_, dict):
        return []
    found = [f"the router maps cluster {c['cluster']} to {c['specialist']} at runtime (fleet.yaml says "
             f"{c.get('declared') or 'nothing'}); put it in the fleet file or clear it (POST /admin/clusters/clear)"
             for c in state_.get("clusters", []) if c.get("specialist") != c.get("declared")]
    # (An override that maps a cluster where the file maps it too changes no route: not drift.)
    found += [f"the router warmed {w['served_name']} on {w['server']}/{w['replica']} at runtime; "
              "the next apply unloads it unless the fleet file declares it" for w in state_.get("warmed", [])]
    return found


MAX_HEALTH_BYTES = 16 << 20  # hundreds of pods, each with its adapters and its agent's last good set
MAX_STATE_BYTES = 16 << 20  # every cluster mapping of a large hash-cluster rule, and the warmed adapters


class _TooLarge(ValueError):
    pass


def _bounded_get(request, timeout_s: float, cap: int) -> bytes:
    """The body of a GET to the fleet's router, at most `cap` bytes (_TooLarge beyond): --router-url
    may point anywhere, and nothing read from it may exhaust this process."""
    with urllib.request.urlopen(request, timeout=timeout_s) as response:  # noqa: S310 - the fleet's router
        body = response.read(cap + 1)
    if len(body) > cap:
        raise _TooLarge(f"larger than {cap >> 20} MiB")
    return body


def read_health(url: str, timeout_s: float = 5.0) -> dict:
    """The router's GET /health, bounded in time and size; TemporaryError with a sentence when it
    cannot be read (for a Kubernetes fleet, the router is all fleetspec can see of the cluster)."""
    where = f"{url.rstrip('/')}/health"
    try:
        body = _bounded_get(where, timeout_s, MAX_HEALTH_BYTES)
    except urllib.error.HTTPError as exc:
        raise errors.TemporaryError(f"the router at {url} answered /health with HTTP {exc.code}; is {url} the "
                                    "fleet's router (check --router-url)?") from None
    except _TooLarge as exc:
        raise errors.TemporaryError(f"the router's /health at {url} is {exc}; fleetspec does not read it") from None
    except (OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        raise errors.TemporaryError(f"the router does not answer at {where} ({reason}); check --router-url, or "
                                    "reach the router with `kubectl port-forward`") from None
    try:
        health = json.loads(body)
    except ValueError:
        health = None
    if not isinstance(health, dict) or not isinstance(health.get("replicas"), list):
        raise errors.TemporaryError(f"{where} did not answer with a fleetspec router's health (JSON with "
                                    "`replicas`); is --router-url the fleet's router?")
    return health


def update_router(driver, prepared, progress=lambda _: None, document=None) -> str:
    """Write the router's config (`document`, by default the desired one), (re)start the router if
    its container changed, and wait until it serves that config. The router re-reads its file
    itself: routes move without a restart."""

    spec, want = prepared.fleet.spec, prepared.desired
    document = want.router_config if document is None else document
    config_path = _config_path(want)
    files.write_atomic(config_path, router_config.dumps(document))
    current = [c for c in driver.observe(spec.name) if c.role == "router"]
    fresh = [c for c in current if c.running and c.spec_hash == want.router.spec_hash()]
    started = None
    if not fresh:
        for old in current:
            driver.remove(old.id)
        progress("Starting the router")
        started = driver.create(want.router)
        driver.wait_running(started, timeout_s=30.0)
    expected, url = router_config.config_hash(document), router_url(spec)
    _wait_for_config(url, expected, config_path)
    # In the runtime's words (process, PID and log; container and id), as apply names engines it starts.
    serves = f"serves routing config {expected[:12]} at {url}"
    return f"started {driver.describe(started)}, which {serves}" if started else f"the router {serves}"


def _config_path(want) -> pathlib.Path:
    return pathlib.Path(want.router.argv[want.router.argv.index("--config") + 1])


def _wait_for_config(url: str, expected: str, config_path: pathlib.Path, seconds: float = 15.0) -> None:
    deadline = time.monotonic() + seconds
    while router_config_hash(url) != expected:
        if time.monotonic() > deadline:
            raise errors.TemporaryError(f"the router at {url} did not pick up its new config within {seconds:.0f} s; "
                                        f"its config file is {config_path}")
        time.sleep(0.05)


DRAIN_TIMEOUT_S = 30.0  # longest a replica's requests in flight may hold up its replacement


class RouterLink:
    """What apply asks of a running router besides a new config: stop sending to a replica before it
    is replaced (drain), send to it again once it serves its adapters, and move specialists to new
    versions only where those loaded (the rest stay on the version that still serves).

    Drain and undrain edit the config the router serves now (the file on disk), not the desired
    one: mid-apply, upstreams and versions must stay what they were until the router update step."""

    def __init__(self, driver, prepared, progress=lambda _: None, drain_timeout_s: float = DRAIN_TIMEOUT_S):
        self.driver, self.prepared, self.progress = driver, prepared, progress
        self.drain_timeout_s = drain_timeout_s
        self.url = router_url(prepared.fleet.spec)

    def update(self, held_back: dict[str, tuple[str, str]] | None = None) -> str:
        """Publish the desired config, with each held-back specialist kept on (version, path)."""
        document = self.prepared.desired.router_config
        if held_back:
            document = router_config.with_versions(document, held_back)
        return update_router(self.driver, self.prepared, self.progress, document)

    def drain(self, server: str, replica: int) -> bool:
        """Ask the running router to stop choosing this replica and wait (bounded) for its requests
        in flight to finish. False when no router serves yet: there is nothing to drain."""
        if not self._set_draining(server, replica, True):
            return False
        self.progress(f"Draining {server}/{replica}: the router sends new requests to the other replicas")
        deadline = time.monotonic() + self.drain_timeout_s
        while time.monotonic() < deadline and _inflight(self.url, server, replica):
            time.sleep(0.05)
        return True

    def settle(self, server: str, replica: int, served_name: str) -> bool:
        """Wait (bounded) until the router has no request in flight for one adapter on one replica:
        called after the router moved a specialist off `served_name` and before the engine unloads it,
        so requests the router placed there just before the switch are not sent after the unload."""
        deadline = time.monotonic() + self.drain_timeout_s
        while _inflight(self.url, server, replica, served_name):
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.05)
        return True

    def undrain(self, server: str, replica: int) -> None:
        self._set_draining(server, replica, False)

    def _set_draining(self, server: str, replica: int, draining: bool) -> bool:
        want = self.prepared.desired
        if want.router is None or router_config_hash(self.url) is None:
            return False
        path = _config_path(want)
        try:
            served = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return False
        changed = router_config.with_draining(served, server, replica, draining)
        if changed is None:
            return False  # the running config does not list this replica: the router never sends to it
        files.write_atomic(path, router_config.dumps(changed))
        _wait_for_config(self.url, router_config.config_hash(changed), path)
        return True


def _inflight(url: str, server: str, replica: int, served_name: str | None = None) -> int:
    """Requests the router has in flight on one replica (its /health lists them), only those for
    `served_name` when given; 0 when unknown."""
    try:
        health = json.loads(_bounded_get(f"{url}/health", 2.0, MAX_HEALTH_BYTES))
    except (OSError, ValueError):
        return 0
    rows = health.get("replicas") if isinstance(health, dict) else None
    for row in rows if isinstance(rows, list) else ():
        if isinstance(row, dict) and row.get("server") == server and row.get("replica") == replica:
            counts = row if served_name is None else row.get("inflight_by_model")
            count = counts.get("inflight" if served_name is None else served_name) if isinstance(counts, dict) else 0
            return count if isinstance(count, int) and count > 0 else 0
    return 0
    for row in health.get("replicas", []):
        if row.get("server") == server and row.get("replica") == replica:
            if served_name is None:
                return int(row.get("inflight") or 0)
            by_model = row.get("inflight_by_model")
            return int(by_model.get(served_name) or 0) if isinstance(by_model, dict) else 0
    return 0
