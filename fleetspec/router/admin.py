"""The admin API: seed 000's operations (set one cluster mapping, bulk mappings, warm adapters,
clear, stats), plus the state the reconciler reads to report runtime changes as drift.

Off unless `runtime.router.admin_token` is set; every call needs `Authorization: Bearer <token>`.
Seed 000's paths (`/admin/ensemble...`) answer too, so its runbook works unchanged (plus the token).

Cluster mappings live where `runtime_state` keeps them: in this router's memory, or in Redis when
the fleet sets runtime.router.redis_url, so that every replica routes alike. They survive config
reloads (re-checked against each new table), are listed by `GET /admin/state`, and vanish on
`POST /admin/clusters/clear` (or, in memory, a router restart). Adapters warmed through this router
are its own record. fleet.yaml stays the source of truth; `fleetspec plan` shows the difference.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import hmac
import urllib.parse

from fleetspec.engine_api import contract
from fleetspec.router import gaplog, httpio, httpjson, httplimits, ondemand, resp, runtime_state
from fleetspec.routing import table

WARM_TIMEOUT_S = 600.0  # a warm call waits for real loads (seconds each on vLLM)
CLEAR_NOTE = ("vLLM's unload stops serving the name at once but frees the adapter's GPU slot only when its LRU "
              "evicts it (vllm-project/vllm#54839); preloaded adapters are kept because fleet.yaml declares them.")


class AdminError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


_STATS_COUNTERS = ("fallbacks", "routed", "cluster_hits", "cluster_misses")


@dataclasses.dataclass
class Stats:
    """Seed 000's ensemble stats: how often prompts missed, and which clusters miss."""

    requests: int = 0
    fallbacks: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    routed: collections.Counter = dataclasses.field(default_factory=collections.Counter)  # "name@version"
    cluster_hits: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    cluster_misses: collections.Counter = dataclasses.field(default_factory=collections.Counter)

    def record(self, decision: table.Decision) -> None:
        self.requests += 1
        if decision.specialist is None:
            self.fallbacks[decision.fallback_reason or "explicit-base"] += 1
        else:
            self.routed[f"{decision.specialist}@{decision.version}"] += 1
        if decision.cluster is not None:
            bucket = self.cluster_misses if decision.fallback_reason == table.CLUSTER_UNMAPPED else self.cluster_hits
            bucket[decision.cluster] += 1

    def snapshot(self) -> dict:
        return {"requests": self.requests, **{name: dict(getattr(self, name)) for name in _STATS_COUNTERS}}

    def absorb(self, snapshot: dict) -> None:
        """Add another process's counts (a multi-process router's totals)."""
        self.requests += int(snapshot.get("requests", 0))
        for name in _STATS_COUNTERS:
            getattr(self, name).update({str(k): int(v) for k, v in (snapshot.get(name) or {}).items()})

    def to_json(self) -> dict:
        misses = sum(n for reason, n in self.fallbacks.items() if reason != "explicit-base")
        return {
            "requests": self.requests,
            "miss_rate": round(misses / self.requests, 6) if self.requests else None,
            "fallbacks": dict(self.fallbacks),
            "routed": dict(self.routed.most_common()),
            "clusters": {"hits": dict(self.cluster_hits.most_common(50)),
                         "unmapped": dict(self.cluster_misses.most_common(50))},
        }


def authorized(token: str | None, header: str | None) -> bool:
    if token is None or not header or not header.startswith("Bearer "):
        return False
    return hmac.compare_digest(header[len("Bearer "):].encode(), token.encode())


async def handle(router, request: httpio.Request) -> tuple[int, dict]:
    """(status, JSON body) for an /admin/ request."""
    token = router.config.admin_token
    if token is None:
        return 404, _error("the admin API is off: set runtime.router.admin_token (as ${VAR}) and restart the router")
    if not authorized(token, request.headers.get("authorization")):
        return 401, _error("missing or wrong admin token: send `Authorization: Bearer <token>`")
    operation = ROUTES.get((request.method, request.path))
    if operation is None:
        known = any(path == request.path for _, path in ROUTES)
        return (405, _error("method not allowed")) if known else (404, _error(f"no admin route {request.path}"))
    try:
        return await operation(router, request)
    except AdminError as exc:
        return exc.status, _error(str(exc))


def _error(message: str) -> dict:
    return {"error": {"message": message}}


# -- reading parameters ----------------------------------------------------------------------------


def _params(request: httpio.Request):
    """JSON body, or a form body / query string as seed 000's curl commands send them."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip()
    if content_type == "application/json" or request.body.lstrip()[:1] in (b"{", b"["):
        try:
            return httpjson.loads(request.body, httplimits.Limits.max_json_depth)
        except httpjson.TooDeep as exc:
            raise AdminError(400, str(exc)) from None
        except ValueError:
            if content_type == "application/json":
                raise AdminError(400, "the body is not valid JSON") from None
    params = dict(request.query)
    if request.body:
        params.update(urllib.parse.parse_qsl(request.body.decode("utf-8", "replace")))
    return params


def _hash_rule(router, wanted) -> table.RuleRef:
    rules = router.config.table.hash_rules()
    if not rules:
        raise AdminError(409, "this fleet has no hash_clusters rule, so there are no clusters to map; "
                              "add one under routing.rules")
    if wanted in (None, ""):
        return rules[0]
    for ref in rules:
        if str(wanted) in (ref.name, str(ref.index)):
            return ref
    raise AdminError(400, f"no hash_clusters rule is named `{wanted}`; rules: "
                          + ", ".join(r.name for r in rules))


def _checked_mapping(router, ref: table.RuleRef, cluster, target) -> tuple[str, str]:
    base = router.config.table
    clusters = base.rules[ref.index].clusters
    cluster, target = str(cluster or ""), str(target or "")
    if not cluster.startswith(clusters.prefix) or not cluster[len(clusters.prefix):].isdigit() \
            or int(cluster[len(clusters.prefix):]) >= clusters.num_clusters:
        raise AdminError(400, f"`{cluster}` is not a cluster of rule `{ref.name}`: ids run from "
                              f"{clusters.prefix}0 to {clusters.prefix}{clusters.num_clusters - 1}")
    resolved = base.target(target) or base.aliases.get(target)
    if resolved is None:
        raise AdminError(400, f"`{target}` is not a specialist of this fleet; declared: "
                              + ", ".join(sorted(base.specialists)))
    return cluster, str(resolved)


# -- operations ------------------------------------------------------------------------------------


async def _set_cluster(router, request) -> tuple[int, dict]:
    params = _params(request)
    if not isinstance(params, dict):
        raise AdminError(400, 'send {"cluster_id": "c17", "specialist": "name"}')
    ref = _hash_rule(router, params.get("rule"))
    cluster, target = _checked_mapping(router, ref, params.get("cluster_id") or params.get("cluster"),
                                       params.get("specialist") or params.get("adapter_tag"))
    await _store(router.set_cluster_overrides(ref, {cluster: target}))
    return 200, {"rule": ref.name, "cluster": cluster, "specialist": target}


async def _bulk(router, request) -> tuple[int, dict]:
    params = _params(request)
    if isinstance(params, dict) and isinstance(params.get("map"), dict):
        ref, entries = _hash_rule(router, params.get("rule")), params["map"]
    elif isinstance(params, dict):
        ref, entries = _hash_rule(router, None), params
    else:
        raise AdminError(400, 'send a JSON object of cluster → specialist, e.g. {"c10": "python"}')
    checked = dict(_checked_mapping(router, ref, c, t) for c, t in entries.items())
    await _store(router.set_cluster_overrides(ref, checked))
    return 200, {"rule": ref.name, "mapped": checked}


async def _clear_clusters(router, request) -> tuple[int, dict]:
    cleared = await _store(router.clear_cluster_overrides())
    return 200, {"cleared": cleared}


async def _store(change):
    """Await a change of the runtime store; a shared store that cannot take it is a 503, and no
    replica (this one included) has changed."""
    try:
        return await change
    except runtime_state.Unavailable as exc:
        raise AdminError(503, f"the shared runtime state is unavailable, so no router changed ({exc}); "
                              "routing goes on with the last mappings read. Retry once /health shows "
                              "runtime_state.healthy: true") from None


async def _state(router, request) -> tuple[int, dict]:
    return 200, state(router)


def state(router) -> dict:
    """What runs differently from fleet.yaml because of admin calls (the reconciler's drift input)."""
    base = router.config.table
    ignored = {o.key: why for o, why in router.ignored}
    clusters, unused = [], []
    for override in sorted(router.runtime.overrides.values(), key=lambda o: (o.rule_index, o.cluster)):
        row = {"rule": override.rule, "rule_index": override.rule_index, "cluster": override.cluster,
               "specialist": override.target, "changed_at": override.changed_at}
        if override.key in ignored:
            unused.append({**row, "reason": ignored[override.key]})
        else:
            clusters.append({**row, "declared": base.cluster_map(override.rule_index).get(override.cluster)})
    loads = sorted(router.runtime.warmed.values(), key=lambda w: (w.url, w.served_name))
    warmed = [dataclasses.asdict(w) for w in loads if not on_demand_allowed(router.config, w)]
    on_demand = [dataclasses.asdict(w) for w in loads if on_demand_allowed(router.config, w)]
    return {"fleet": router.config.spec.name, "config_hash": router.config.hash, "config_loaded_at": router.loaded_at,
            "drift": bool(clusters or warmed), "clusters": clusters, "warmed": warmed, "on_demand": on_demand,
            "ignored": unused, "runtime_state": router.runtime.health()}


def on_demand_allowed(config, loaded: ondemand.Loaded) -> bool:
    """Whether fleet.yaml lets this adapter be loaded when wanted (`preload: false`, a live version):
    then the router's load of it is the fleet working as declared, not drift."""
    specialist = config.spec.specialist(loaded.specialist)
    if specialist is None or specialist.preload or loaded.server not in config.hosts(loaded.specialist):
        return False
    split = config.table.splits.get(loaded.specialist)
    live = {v for _, v in split.ranges} if split else {specialist.version}
    return loaded.version in live


async def _stats(router, request) -> tuple[int, dict]:
    out = router.stats.to_json()
    decisions = router.totals().decisions  # every serving process's, where there are several
    p50, p99 = (decisions.quantile(q) for q in (0.5, 0.99))
    out["decision_seconds"] = {"p50_at_most": p50, "p99_at_most": p99}
    out["runtime_mappings"] = len(router.runtime.overrides) - len(router.ignored)
    out["runtime_state"] = router.runtime.health()
    out["upstreams"] = [r.to_json() for r in router.upstreams.replicas.values()]
    return 200, out


async def _gaps(router, request) -> tuple[int, dict]:
    """Seed 001's routing gaps, newest first (`?limit=N`, default 100)."""
    raw = request.query.get("limit", "100")
    if not str(raw).isdigit() or not 1 <= int(raw) <= gaplog.READ_LIMIT:
        raise AdminError(400, f"limit must be a whole number from 1 to {gaplog.READ_LIMIT}")
    gap_log = gaplog.for_router(router)
    if gap_log is None:
        raise AdminError(409, "the routing-gap log is off for this fleet: set routing.gap_log.enabled: true")
    try:
        entries = await gap_log.read(int(raw))
    except (resp.Unavailable, resp.RedisError) as exc:
        raise AdminError(503, f"the routing-gap stream in Redis cannot be read now ({exc}); retry once Redis answers") from None
    return 200, {"store": gap_log.settings.store, "where": gap_log.sink.where, "count": len(entries),
                 "gaps": entries}


async def _reload(router, request) -> tuple[int, dict]:
    ok, message = await router.reload(force=True)
    return (200 if ok else 500), {"reloaded": ok, "message": message, "config_hash": router.config.hash}


async def _warm(router, request) -> tuple[int, dict]:
    """Load adapters onto every healthy replica that should hold them and does not yet."""
    params = _params(request)
    names = params.get("specialists") if isinstance(params, dict) else params
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise AdminError(400, 'send a JSON list of specialists, e.g. ["python", "sql@1.1.0"]')
    jobs = []
    for name in names:
        for specialist, version in _versions_to_warm(router, name):
            served = router.config.table.served[(specialist, version)]
            path = router.config.adapter_path(specialist, version)
            for replica in router.upstreams.replicas.values():
                if replica.server in router.config.hosts(specialist) and replica.healthy is not False:
                    jobs.append(_load_one(router, replica, specialist, version, served, path))
    results = await asyncio.gather(*jobs)
    failed = [r for r in results if r["result"] == "failed"]
    return (502 if failed else 200), {"results": results}


def _versions_to_warm(router, name: str) -> list[tuple[str, str]]:
    base = router.config.table
    target = base.target(name) or base.aliases.get(name)
    if target is None:
        raise AdminError(400, f"`{name}` is not a specialist of this fleet; declared: " + ", ".join(sorted(base.specialists)))
    if target.version is not None:
        return [(target.specialist, target.version)]
    split = base.splits.get(target.specialist)
    versions = [v for _, v in split.ranges] if split else [base.specialists[target.specialist].version]
    return [(target.specialist, v) for v in versions]


async def _load_one(router, replica, specialist: str, version: str, served: str, path: str) -> dict:
    row = {"url": replica.upstream.url, "server": replica.server, "replica": replica.upstream.replica,
           "served_name": served}
    if served in replica.models:
        return {**row, "result": "already-loaded"}
    failed = await router.loader.ensure(replica, specialist, version, served, path, router.cache_capacity(replica),
                                        WARM_TIMEOUT_S)
    return {**row, "result": "failed", "error": failed} if failed else {**row, "result": "loaded"}


async def _clear_cache(router, request) -> tuple[int, dict]:
    """Unload the adapters this router loaded (warmed, or on demand). Preloaded ones stay: they are
    fleet.yaml's desired state, and the reconciler would load them again."""
    results = []
    for url, served in list(router.runtime.warmed):
        row = {"url": url, "served_name": served}
        replica = router.upstreams.replicas.get(url)
        if replica is None:
            del router.runtime.warmed[(url, served)]  # that replica left the fleet, and its adapters with it
            results.append({**row, "result": "gone"})
            continue
        failed = await router.loader.unload(replica, served)
        results.append({**row, "result": "failed", "error": failed} if failed else {**row, "result": "unloaded"})
    kept = sorted({(r.upstream.url, name) for r in router.upstreams.replicas.values() for name in r.adapters}
                  - set(router.runtime.warmed))
    body = {"results": results,
            "kept": [{"url": url, "served_name": name, "reason": "preloaded: fleet.yaml declares it"}
                     for url, name in kept],
            "note": CLEAR_NOTE}
    return (502 if any(r["result"] == "failed" for r in results) else 200), body


def _engine_message(answer: bytes, status: int) -> str:
    text = answer.decode("utf-8", "replace")
    return f"{status}: {contract.error_message(text) or text[:300]}"


def _engine_headers(router) -> list[tuple[str, str]]:
    return [contract.JSON, *contract.auth_headers(router.config.engine_api_key)]


ROUTES = {
    ("GET", "/admin/state"): _state,
    ("GET", "/admin/stats"): _stats,
    ("GET", "/admin/ensemble/stats"): _stats,
    ("POST", "/admin/clusters"): _set_cluster,
    ("POST", "/admin/ensemble"): _set_cluster,
    ("POST", "/admin/clusters/bulk"): _bulk,
    ("POST", "/admin/ensemble/bulk"): _bulk,
    ("POST", "/admin/clusters/clear"): _clear_clusters,
    ("POST", "/admin/warm"): _warm,
    ("POST", "/admin/ensemble/cache/warm"): _warm,
    ("POST", "/admin/cache/clear"): _clear_cache,
    ("POST", "/admin/ensemble/cache/clear"): _clear_cache,
    ("GET", "/admin/gaps"): _gaps,
    ("POST", "/admin/reload"): _reload,
}
