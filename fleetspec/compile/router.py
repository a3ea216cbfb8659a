"""The router's config file for a compiled fleet (pure): `routing.config.document` with the upstreams
and adapter paths of one deployment style.

The document format belongs to routing (`fleetspec/routing/config.py`, "fleetspec-router/1"): it
embeds the fleet itself, so the running router and `fleetspec route` compile the very same
`RoutingTable` (rules, keyword/extension matchers, hash clusters, splits, fallback). Served names
come from `derived.served_adapter_name` on both sides. This module adds what only compile knows:
where the engines are (`upstreams`, which differ per target) and where each adapter version lives
as the engines see it (`adapter_paths`, relative paths resolved against fleet.yaml). Hash-rule
`map_file` entries are read by the caller (an edge) and passed in as `cluster_maps`.
"""

from __future__ import annotations

import pathlib
from collections.abc import Mapping

from fleetspec.compile import vllm_args
from fleetspec.routing import config
from fleetspec.spec import derived, models


def routing_table(spec: models.FleetSpec, upstreams: list[dict], base_dir: pathlib.Path | None = None,
                  cluster_maps: Mapping[int, Mapping[str, str]] | None = None) -> dict:
    return config.document(spec, upstreams, cluster_maps=cluster_maps, adapter_paths=adapter_paths(spec, base_dir))


def adapter_paths(spec: models.FleetSpec, base_dir: pathlib.Path | None) -> dict[str, str]:
    """Served name → path of every version of every specialist (the router warms any of them)."""
    found = {}
    for specialist in spec.specialists:
        for version in specialist.all_versions:
            entry = specialist.version_entry(version)
            if entry is not None:
                found[derived.served_adapter_name(specialist.name, version)] = vllm_args.resolve_path(entry.path, base_dir)
    return found


def upstream(server: str, replica: int, url: str, discover: bool = False, agent_port: int | None = None) -> dict:
    return config.Upstream(server, replica, url, discover=discover, agent_port=agent_port).to_json()


def to_json(document: dict) -> str:
    """Stable text: same document, same bytes."""
    return config.dumps(document)
