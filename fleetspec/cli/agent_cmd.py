"""`fleetspec agent`: the sidecar of an engine pod on Kubernetes (compiled by `compile --target k8s`)."""

from __future__ import annotations

import logging
import os
import pathlib
import signal
import threading

import click


@click.command()
@click.option(
    "--config-dir",
    required=True,
    type=click.Path(file_okay=False, path_type=pathlib.Path),
    help="The mounted ConfigMap directory holding adapters.json (mount it whole: a subPath mount "
    "never receives kubelet's updates).",
)
@click.option(
    "--engine", "engine_url", default="http://127.0.0.1:8000", show_default=True, help="The pod's own engine."
)
@click.option("--host", default="0.0.0.0", show_default=True, help="Address of /ready, /status and /metrics.")
@click.option("--port", type=click.IntRange(0, 65535), default=8081, show_default=True)
@click.option(
    "--state-dir",
    type=click.Path(file_okay=False, path_type=pathlib.Path),
    default=None,
    help="Where the last good set is kept across agent restarts (an emptyDir).",
)
@click.option(
    "--api-key-env",
    default=None,
    metavar="VAR",
    help="Environment variable holding the engine's API key, if it requires one.",
)
@click.option(
    "--poll", "poll_s", type=click.FloatRange(min=0.05), default=1.0, show_default=True, metavar="SECONDS"
)
@click.option(
    "--retry",
    "retry_s",
    type=click.FloatRange(min=0.1),
    default=30.0,
    show_default=True,
    metavar="SECONDS",
    help="How often a set the engine refused is tried again.",
)
def agent(
    config_dir: pathlib.Path,
    engine_url: str,
    host: str,
    port: int,
    state_dir: pathlib.Path | None,
    api_key_env: str | None,
    poll_s: float,
    retry_s: float,
) -> int:
    """Serve the ConfigMap's adapter set on this pod's engine, and keep serving the last good set
    through a bad edit (reported on /status, /metrics and in the log)."""
    from fleetspec.agent import endpoints, reconciler

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    api_key = None
    if api_key_env:
        api_key = os.environ.get(api_key_env)
        if not api_key:
            raise click.ClickException(
                f"--api-key-env {api_key_env}: that variable is not set in the agent's "
                "environment; give the container the same Secret key as the engine"
            )
    if state_dir is not None:
        state_dir.mkdir(parents=True, exist_ok=True)
    settings = reconciler.Settings(
        config_dir=config_dir,
        engine_url=engine_url,
        api_key=api_key,
        state_dir=state_dir,
        poll_s=poll_s,
        retry_s=retry_s,
    )
    worker = reconciler.Agent(settings)
    server = endpoints.serve(worker, host, port)
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    logging.getLogger("fleetspec.agent").info(
        "agent for %s watching %s, endpoints on %s:%d", engine_url, config_dir, host, server.server_address[1]
    )
    try:
        worker.run(stop)
    finally:
        server.shutdown()
    return 0
