"""The router process: parse arguments, load the config, serve until SIGTERM or SIGINT.

Exit statuses: 0 after a signal, 1 when the config cannot be loaded or the port cannot be bound,
2 for a usage error.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys

from fleetspec import errors
from fleetspec.router import discovery, httplimits


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fleetspec.router")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="run the OpenAI-compatible router")
    serve.add_argument("--config", required=True, help="router config file (fleetspec compile --target router)")
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0 inside a container)")
    serve.add_argument("--port", type=int, help="port to listen on; runtime.router.port of the fleet by default")
    serve.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    serve.add_argument("--resolver", default=os.environ.get("FLEETSPEC_ROUTER_RESOLVER"),
                       help="DNS server (IP[:port]) for upstreams that discover pods through a headless Service; "
                            "the system resolver by default (the cluster's DNS in a pod)")
    serve.add_argument("--processes", type=int, default=None,
                       help="serving processes sharing the port (SO_REUSEPORT), for machines with more cores; "
                            "runtime.router.processes of the fleet by default (1: one process serves)")
    # How a multi-process router's coordinator starts its serving processes (fleetspec/router/processes.py).
    serve.add_argument("--control-fd", type=int, help=argparse.SUPPRESS)
    serve.add_argument("--process-index", type=int, default=0, help=argparse.SUPPRESS)
    limits = serve.add_argument_group("limits", "bounds on clients and engines (fleetspec/router/httplimits.py)")
    httplimits.Limits.add_arguments(limits)
    args = parser.parse_args(argv)
    try:
        bounds = httplimits.Limits.from_arguments(args)
        resolver = discovery.parse_resolver(args.resolver) if args.resolver else None
    except ValueError as exc:
        parser.error(str(exc))
    who = "fleetspec.router" if args.control_fd is None else f"fleetspec.router[{args.process_index}]"
    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr,
                        format=f"%(asctime)s %(levelname)s {who}: %(message)s")
    if args.control_fd is not None:
        return _serve_for_coordinator(args, bounds)
    from fleetspec.router import processes, server

    if args.processes is not None and not 1 <= args.processes <= processes.MAX_PROCESSES:
        parser.error(f"--processes takes 1 to {processes.MAX_PROCESSES}, not {args.processes}")
    router = server.Router(args.config, limits=bounds, resolver=resolver)
    try:
        router.load()
        count = args.processes or router.config.spec.runtime.router.processes
        if count > 1:
            router = processes.Coordinator(args.config, count, limits=bounds, resolver=resolver,
                                           log_level=args.log_level)
            router.load()  # the file once more: a config is small next to starting the serving processes
    except errors.FleetspecError as exc:
        sys.stderr.write(f"error: {exc}\n")
        return 1
    port = args.port or router.config.spec.runtime.router.port
    try:
        with asyncio.Runner(loop_factory=_event_loop_factory()) as runner:
            runner.run(_run(router, args.host, port))
    except processes.StartupFailed as exc:
        sys.stderr.write(f"error: the router did not start: {exc}\n")
        return 1
    except OSError as exc:
        sys.stderr.write(f"error: the router cannot listen on {args.host}:{port} ({exc.strerror or exc}); "
                         "free the port or pass another with --port\n")
        return 1
    return 0


def _serve_for_coordinator(args: argparse.Namespace, bounds: httplimits.Limits) -> int:
    """A serving process: it takes its config from the coordinator and exits when the coordinator goes."""
    from fleetspec.router import serving_process

    port = args.port
    try:
        with asyncio.Runner(loop_factory=_event_loop_factory()) as runner:
            runner.run(_run_task(serving_process.run(args.config, args.control_fd, args.process_index, args.host,
                                                     port, bounds)))
    except OSError as exc:
        sys.stderr.write(f"error: serving process {args.process_index} cannot listen on {args.host}:{port} "
                         f"({exc.strerror or exc})\n")
        return 1
    return 0


def _event_loop_factory():
    """uvloop where it is installed (a declared dependency on Linux and macOS): libuv's loop and
    transports cost the router less CPU per proxied request than asyncio's own (docs/benchmarks.md,
    "Router HTTP front: side by side"); the router's code is the same on either.
    FLEETSPEC_ROUTER_EVENT_LOOP=asyncio keeps asyncio's loop (to compare, or to rule uvloop out)."""
    if os.environ.get("FLEETSPEC_ROUTER_EVENT_LOOP", "uvloop") == "asyncio":
        return None
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


async def _run(router, host: str, port: int) -> None:
    await _run_task(router.serve(host, port))


async def _run_task(coroutine) -> None:
    """Run until done, or until SIGTERM or SIGINT cancels it."""
    loop = asyncio.get_running_loop()
    task = asyncio.create_task(coroutine)
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, task.cancel)
    try:
        await task
    except asyncio.CancelledError:
        logging.getLogger("fleetspec.router").info("router stopped")
