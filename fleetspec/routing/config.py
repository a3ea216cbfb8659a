"""The router's config file: the fleet's routing plus where the engines are.

The document (JSON; YAML readers accept it too) is what `compile --target router` writes and the
reconciler hands to the router. `document()` builds it (pure); `parse()`/`load()` read it back at
the router (edge: reads the file and the router's environment for `${VAR}` secrets).

    {
      "format": "fleetspec-router/1",
      "fleet": {...},                      # the FleetSpec as JSON: the table is compiled from it
      "cluster_maps": {"0": {"c5": "x"}},  # entries of each hash rule's map_file, by rule index
      "upstreams": [{"server": "main", "replica": 0, "url": "http://127.0.0.1:8000"}],  # "draining": true
                                           # while apply replaces that replica; "discover": true when the
                                           # host is a headless Service whose pods are each a replica;
                                           # "agent_port": 8081 where each pod runs `fleetspec agent`
      "adapter_paths": {"python--1.0.0": "/adapters/python/1.0.0"},  # as engines see them (warm)
      "refresh_seconds": 2.0               # how often each upstream's /health and /v1/models are read
    }

Embedding the spec itself (instead of a second, compiled format) keeps `fleetspec route` and the
running router on the very same `RoutingTable.from_spec`.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
import pathlib
import re
import urllib.parse
from collections.abc import Mapping, Sequence

import pydantic
import yaml

from fleetspec import errors
from fleetspec.errors import Diagnostic, Severity
from fleetspec.routing import redis_url
from fleetspec.routing import table as table_mod
from fleetspec.spec import derived, models

FORMAT = "fleetspec-router/1"
DEFAULT_REFRESH_SECONDS = 2.0
_SECRET = re.compile(r"^\$\{([A-Za-z_][A-Za-z0-9_]*)\}$")
_SECRET_ANYWHERE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


@dataclasses.dataclass(frozen=True)
class Upstream:
    server: str
    replica: int
    url: str  # http://host:port, no trailing slash
    draining: bool = False  # about to be replaced: chosen only when no other replica can serve
    # The url's host is a headless Service (Kubernetes): the router resolves it and routes to each
    # pod (one A record each) as a replica of its own, so residency sees what every pod holds.
    discover: bool = False
    # Port of the `fleetspec agent` sidecar beside each engine (Kubernetes pods of a LoRA server): the
    # router reads its /status at the replica's own address and shows the agent's problem in /health.
    agent_port: int | None = None

    def to_json(self) -> dict:
        data = {"server": self.server, "replica": self.replica, "url": self.url}
        if self.discover:
            data["discover"] = True
        if self.agent_port is not None:
            data["agent_port"] = self.agent_port
        return {**data, "draining": True} if self.draining else data


@dataclasses.dataclass(frozen=True, eq=False)
class RouterConfig:
    spec: models.FleetSpec
    table: table_mod.RoutingTable
    upstreams: tuple[Upstream, ...]
    adapter_paths: Mapping[str, str]  # served adapter name → path as the engines see it
    admin_token: str | None  # resolved; None: the admin API is off
    client_api_key: str | None  # resolved runtime.router.api_key; None: clients need no key
    engine_api_key: str | None  # resolved runtime.engine_api_key: what the router sends the engines
    redis: redis_url.Address | None  # resolved runtime.router.redis_url; None: runtime state in memory
    refresh_seconds: float
    hash: str  # sha256 of the canonical document, as compile.desired computes it

    def adapter_path(self, specialist: str, version: str) -> str | None:
        # Asked on every routed request; the answer only changes with the config, so it is kept per
        # (specialist, version) the fleet declares (a bounded set: unknown names are not remembered).
        key = (specialist, version)
        if key in self._adapter_path_memo:
            return self._adapter_path_memo[key]
        served = self.table.served.get(key)
        if served in self.adapter_paths:
            return self.adapter_paths[served]
        found = self.spec.specialist(specialist)
        entry = found.version_entry(version) if found else None
        if entry is not None:
            self._adapter_path_memo[key] = entry.path
        return entry.path if entry else None

    def hosts(self, specialist: str | None) -> frozenset[str]:
        """Server names whose replicas may serve a specialist; every server for the base model."""
        return self._hosts.get(specialist, frozenset())

    @functools.cached_property
    def _adapter_path_memo(self) -> dict[tuple[str, str], str]:
        return {}

    @functools.cached_property
    def _hosts(self) -> dict[str | None, frozenset[str]]:
        """Built once per config (the hosting index makes it linear in the fleet), not per request."""
        hosts: dict[str | None, frozenset[str]] = {None: frozenset(s.name for s in self.spec.servers)}
        for specialist in self.spec.specialists:
            hosts[specialist.name] = frozenset(s.name for s in self.spec.hosts_of(specialist))
        return hosts


def document(spec: models.FleetSpec, upstreams: Sequence[Upstream | Mapping], *,
             cluster_maps: Mapping[int, Mapping[str, str]] | None = None,
             adapter_paths: Mapping[str, str] | None = None,
             refresh_seconds: float = DEFAULT_REFRESH_SECONDS) -> dict:
    """The config document for a fleet (pure, deterministic: same input, same bytes via `dumps`)."""
    return {
        "format": FORMAT,
        "fleet": spec.model_dump(mode="json", exclude_defaults=True),
        "cluster_maps": {str(i): dict(sorted(m.items())) for i, m in sorted((cluster_maps or {}).items())},
        "upstreams": [u.to_json() if isinstance(u, Upstream) else dict(u) for u in upstreams],
        "adapter_paths": dict(sorted((adapter_paths or {}).items())),
        "refresh_seconds": refresh_seconds,
    }


def with_draining(document_: Mapping, server: str, replica: int, draining: bool) -> dict | None:
    """The document with one upstream marked draining (or not); None when it lists no such replica."""
    upstreams, found = [], False
    for item in document_.get("upstreams") or []:
        entry = {k: v for k, v in item.items() if k != "draining"}
        if entry.get("server") == server and entry.get("replica") == replica:
            found = True
            if draining:
                entry["draining"] = True
        elif item.get("draining"):
            entry["draining"] = True
        upstreams.append(entry)
    return {**document_, "upstreams": upstreams} if found else None


def with_versions(document_: Mapping, held_back: Mapping[str, tuple[str, str]]) -> dict:
    """The document with each held-back specialist still on (version, path as engines see it): apply
    moves a specialist to its new version only once that version loaded everywhere it should."""
    fleet = dict(document_["fleet"])
    specialists = []
    for item in fleet.get("specialists") or []:
        kept = held_back.get(item.get("name"))
        if kept is not None and kept[0] != item.get("version"):
            version, path = kept
            # The new version stays declared (explicit requests for it still resolve), the kept one is active.
            new = {k: item[k] for k in ("version", "path", "rank", "alpha", "target_modules") if k in item}
            item = {**item, "version": version, "path": path,
                    "versions": [*(v for v in item.get("versions") or [] if v.get("version") != version), new]}
            if item.get("previous_version") == version:
                del item["previous_version"]
        specialists.append(item)
    fleet["specialists"] = specialists
    routing = dict(fleet.get("routing") or {})
    if routing.get("splits"):
        routing["splits"] = [s for s in routing["splits"] if s.get("specialist") not in held_back]
        fleet["routing"] = routing
    paths = dict(document_.get("adapter_paths") or {})
    for name, (version, path) in held_back.items():
        paths[derived.served_adapter_name(name, version)] = path
    return {**document_, "fleet": fleet, "adapter_paths": dict(sorted(paths.items()))}


def dumps(document_: Mapping) -> str:
    return json.dumps(document_, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def config_hash(document_: Mapping) -> str:
    text = json.dumps(document_, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def load(path: str | pathlib.Path, env: Mapping[str, str] | None = None) -> RouterConfig:
    return parse(read(path), env, str(path))


def read(path: str | pathlib.Path):
    """The config file's document, unparsed (a multi-process router sends it to every process)."""
    file = pathlib.Path(path)
    try:
        text = file.read_text(encoding="utf-8")
        # JSON (what fleetspec writes) parses ~100x faster than PyYAML; hand-written YAML still works.
        data = json.loads(text) if text.lstrip().startswith("{") else yaml.safe_load(text)
    except FileNotFoundError:
        raise errors.PermanentError(f"the router config {path} does not exist; compile it with "
                                    "`fleetspec compile FILE --target router`") from None
    except (OSError, UnicodeDecodeError, ValueError, yaml.YAMLError) as exc:
        raise errors.TemporaryError(f"the router config {path} cannot be read ({exc.__class__.__name__}: {exc}); "
                                    "if it is being rewritten, the next read will pick it up") from None
    return data


def parse(data, env: Mapping[str, str] | None = None, source: str = "router config") -> RouterConfig:
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise errors.PermanentError(
            f"{source} is not a fleetspec router config (expected \"format\": \"{FORMAT}\"); "
            "recompile it with `fleetspec compile FILE --target router`")
    try:
        spec = models.FleetSpec.model_validate(data.get("fleet"))
    except pydantic.ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise errors.PermanentError(
            f"the fleet inside {source} is invalid at {where or 'the top'} ({first['type']}); "
            "recompile the router config from a fleet.yaml that passes `fleetspec validate`") from None
    cluster_maps = _cluster_maps(data.get("cluster_maps") or {}, source)
    environment = os.environ if env is None else env
    return RouterConfig(
        spec=spec,
        table=routing_table(spec, cluster_maps),
        upstreams=tuple(parse_upstream(u, source) for u in data.get("upstreams") or []),
        adapter_paths={str(k): str(v) for k, v in (data.get("adapter_paths") or {}).items()},
        admin_token=resolve_secret(spec.runtime.router.admin_token, environment, "runtime.router.admin_token",
                                   "remove admin_token to run without the admin API"),
        client_api_key=resolve_secret(spec.runtime.router.api_key, environment, "runtime.router.api_key",
                                      "remove api_key to let every client through"),
        engine_api_key=resolve_secret(spec.runtime.engine_api_key, environment, "runtime.engine_api_key",
                                      "without it every engine refuses the router"),
        redis=redis_address(spec.runtime.router.redis_url, environment),
        refresh_seconds=float(data.get("refresh_seconds") or DEFAULT_REFRESH_SECONDS),
        hash=config_hash(data),
    )


def routing_table(spec: models.FleetSpec, cluster_maps: Mapping[int, Mapping[str, str]] | None = None
                  ) -> table_mod.RoutingTable:
    """The spec's routing table, with the embedding tier when routing.embedding is enabled (which
    loads the model: the only path that imports the embedding extra)."""
    index = None
    if spec.routing.embedding.enabled:
        from fleetspec.routing import embedding

        index = embedding.index_for(spec)
    return table_mod.RoutingTable.from_spec(spec, cluster_maps, embedding=index)


def resolve_secret(value: str | None, env: Mapping[str, str], field: str, otherwise: str) -> str | None:
    """`${VAR}` → the variable's value; a literal stays as it is; None stays None."""
    if value is None:
        return None
    match = _SECRET.match(value)
    if match is None:
        return value
    resolved = env.get(match.group(1))
    if not resolved:
        raise errors.PermanentError(
            f"{field} refers to ${{{match.group(1)}}}, but {match.group(1)} is not set in the router's "
            f"environment; export {match.group(1)} where the router starts ({otherwise})")
    return resolved


def redis_address(url: str | None, env: Mapping[str, str]) -> redis_url.Address | None:
    """runtime.router.redis_url with every `${VAR}` in it replaced from the environment (values are
    percent-encoded on the way in, so a password may hold `@`, `:` or `/`)."""
    if url is None:
        return None

    def value(match: re.Match) -> str:
        name = match.group(1)
        if not env.get(name):
            raise errors.PermanentError(
                f"runtime.router.redis_url refers to ${{{name}}}, but {name} is not set in the router's environment; "
                f"export {name} where the router starts, or remove redis_url to keep runtime mappings in memory")
        return urllib.parse.quote(env[name], safe="")

    expanded = _SECRET_ANYWHERE.sub(value, url)
    try:
        return redis_url.parse_url(expanded)
    except ValueError as exc:
        raise errors.PermanentError(f"runtime.router.redis_url cannot be used: {exc}; write it like "
                                    "redis://:${REDIS_PASSWORD}@redis-host:6379/0") from None


def parse_upstream(item, source: str) -> Upstream:
    try:
        agent_port = item.get("agent_port")
        if agent_port is not None and (isinstance(agent_port, bool) or not 0 < int(agent_port) < 65536):
            raise ValueError(agent_port)
        return Upstream(str(item["server"]), int(item.get("replica", 0)), str(item["url"]).rstrip("/"),
                        item.get("draining") is True, item.get("discover") is True,
                        None if agent_port is None else int(agent_port))
    except (KeyError, TypeError, ValueError, AttributeError):
        raise errors.PermanentError(
            f"{source} lists an upstream without `server` and `url`: {item!r}; each upstream looks like "
            '{"server": "main", "replica": 0, "url": "http://127.0.0.1:8000"} (`agent_port`, when given, a port '
            'number)') from None


def _cluster_maps(raw, source: str) -> dict[int, dict[str, str]]:
    try:
        return {int(i): {str(c): str(t) for c, t in m.items()} for i, m in raw.items()}
    except (TypeError, ValueError, AttributeError):
        raise errors.PermanentError(f"`cluster_maps` in {source} must map rule indexes to {{cluster: specialist}}"
                                    ) from None


# -- map_file: read at compile time and by `fleetspec route` (edge) ---------------------------------


def load_cluster_maps(fleet) -> dict[int, dict[str, str]]:
    """The entries of every hash rule's `map_file` (YAML or JSON, `cluster: specialist`), resolved
    against the fleet file's directory. Raises SpecError located at the `map_file` field."""
    found: dict[int, dict[str, str]] = {}
    problems: list[Diagnostic] = []
    for index, rule in enumerate(fleet.spec.routing.rules):
        if not isinstance(rule, models.HashClusterRule) or rule.hash_clusters.map_file is None:
            continue
        where = ("routing", "rules", index, "hash_clusters", "map_file")
        path = fleet.resolve_path(rule.hash_clusters.map_file)
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
            problems.append(fleet.diagnostic(
                Severity.ERROR, "map-file-unreadable", where, f"the cluster map file {path} cannot be read ({exc.__class__.__name__})",
                "check the path (relative paths start at fleet.yaml's directory) and that it is YAML or JSON"))
            continue
        if not isinstance(data, dict) or not all(isinstance(v, str) for v in data.values()):
            problems.append(fleet.diagnostic(
                Severity.ERROR, "map-file-shape", where, f"the cluster map file {path} is not a mapping of cluster id to specialist",
                'write it as `c17: python-lora` lines (YAML) or {"c17": "python-lora"} (JSON)'))
            continue
        found[index] = {str(k): v for k, v in data.items()}
    if problems:
        raise errors.SpecError(problems)
    return found
