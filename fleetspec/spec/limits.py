"""Fleet-wide limits: totals that no single field bounds (replicas and GPUs of the whole fleet, the
last port a server's replicas take).

Checked by the loader right after the models, so a LoadedFleet never holds a fleet whose totals would
make a later stage (port assignment, GPU placement, one process per replica) do unbounded work.
Each bound and its reason is listed in docs/spec.md ("Limits").
"""

from __future__ import annotations

from fleetspec.errors import Diagnostic, Severity
from fleetspec.spec import models, paths

MAX_PORT = 65_535


def check(spec: models.FleetSpec, locate) -> list[Diagnostic]:
    """Located errors for every fleet-wide total over its limit; [] when all are within."""
    found: list[Diagnostic] = []

    def error(path: tuple, code: str, message: str, hint: str) -> None:
        found.append(Diagnostic(Severity.ERROR, code, paths.format_path(path), message, hint, locate(path)))

    replicas = sum(s.replicas for s in spec.servers)
    if replicas > models.MAX_TOTAL_REPLICAS:
        largest = max(range(len(spec.servers)), key=lambda i: spec.servers[i].replicas)
        error(
            ("servers", largest, "replicas"),
            "too-many-replicas",
            f"the servers have {replicas:,} replicas in all; a fleet may have at most "
            f"{models.MAX_TOTAL_REPLICAS:,}, because each replica is a process or container with its own port "
            f"(`{spec.servers[largest].name}` alone has {spec.servers[largest].replicas:,})",
            "lower replicas, or split the fleet into several fleet files",
        )
    if isinstance(spec.gpus, list):
        gpus = sum(g.count for g in spec.gpus)
        if gpus > models.MAX_TOTAL_GPUS:
            error(
                ("gpus",),
                "too-many-gpus",
                f"the GPU groups hold {gpus:,} GPUs in all; a fleet may have at most {models.MAX_TOTAL_GPUS:,}, "
                "because the planner places every replica on them one by one",
                "split the fleet into several fleet files, one per cluster of hosts",
            )
    found.extend(_port_ranges(spec, locate))
    return found


def _port_ranges(spec: models.FleetSpec, locate) -> list[Diagnostic]:
    """A server's replicas take consecutive ports from its `port`, the rest from runtime.base_port:
    the last one must still be a port."""
    found = []
    shared = 0
    for index, server in enumerate(spec.servers):
        if server.port is None:
            shared += server.replicas
            continue
        last = server.port + server.replicas - 1
        if last > MAX_PORT:
            path = ("servers", index, "port")
            found.append(
                Diagnostic(
                    Severity.ERROR,
                    "port-out-of-range",
                    paths.format_path(path),
                    f"`{server.name}` has {server.replicas:,} replicas on consecutive ports from {server.port}, so the "
                    f"last would be {last:,}; ports end at {MAX_PORT:,}",
                    f"set port to {MAX_PORT - server.replicas + 1:,} or lower, or lower replicas",
                    locate(path),
                )
            )
    # The shared range skips ports claimed explicitly, so it ends at least this far up.
    last_shared = spec.runtime.base_port + shared - 1
    if shared and last_shared > MAX_PORT:
        path = ("runtime", "base_port")
        found.append(
            Diagnostic(
                Severity.ERROR,
                "port-out-of-range",
                paths.format_path(path),
                f"{shared:,} replicas take consecutive ports from base_port {spec.runtime.base_port}, so the last "
                f"would be {last_shared:,}; ports end at {MAX_PORT:,}",
                f"set base_port to {MAX_PORT - shared + 1:,} or lower, or give some servers their own `port`",
                locate(path),
            )
        )
    return found
