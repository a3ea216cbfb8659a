"""Prometheus text exposition for the router, without a client library.

The router is one asyncio thread, so counters are plain dicts. Label values are escaped as the
exposition format requires; histograms are cumulative with `le` buckets, `_sum` and `_count`.
"""

from __future__ import annotations

import bisect
import dataclasses
from collections.abc import Iterable, Sequence

BASE_LABEL = "_base"  # specialist label of base-model requests ("_" cannot start a specialist name)

DECISION_BUCKETS = (5e-6, 1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 5e-3)
EMBEDDING_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
LOAD_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)  # real vLLM loads take seconds


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(names: Sequence[str], values: Sequence[str], extra: str = "") -> str:
    parts = [f'{n}="{_escape(str(v))}"' for n, v in zip(names, values, strict=True)]
    if extra:
        parts.append(extra)
    return "{" + ",".join(parts) + "}" if parts else ""


@dataclasses.dataclass
class Counter:
    name: str
    help: str
    labels: tuple[str, ...] = ()
    kind: str = "counter"
    values: dict[tuple[str, ...], float] = dataclasses.field(default_factory=dict)

    def inc(self, *label_values: str, amount: float = 1.0) -> None:
        self.values[label_values] = self.values.get(label_values, 0.0) + amount

    def set(self, *label_values: str, value: float) -> None:
        self.values[label_values] = value

    def render(self) -> Iterable[str]:
        yield f"# HELP {self.name} {self.help}"
        yield f"# TYPE {self.name} {self.kind}"
        for key in sorted(self.values):
            yield f"{self.name}{_labels(self.labels, key)} {_number(self.values[key])}"


@dataclasses.dataclass
class Histogram:
    name: str
    help: str
    buckets: tuple[float, ...]
    labels: tuple[str, ...] = ()
    series: dict[tuple[str, ...], list] = dataclasses.field(default_factory=dict)  # [counts..., sum, count]

    def observe(self, value: float, *label_values: str) -> None:
        row = self.series.get(label_values)
        if row is None:
            row = self.series[label_values] = [0] * len(self.buckets) + [0.0, 0]
        index = bisect.bisect_left(self.buckets, value)
        if index < len(self.buckets):
            row[index] += 1
        row[-2] += value
        row[-1] += 1

    def render(self) -> Iterable[str]:
        yield f"# HELP {self.name} {self.help}"
        yield f"# TYPE {self.name} histogram"
        for key in sorted(self.series):
            row = self.series[key]
            running = 0
            for bound, count in zip(self.buckets, row, strict=False):
                running += count
                le = 'le="' + _number(bound) + '"'
                yield f"{self.name}_bucket{_labels(self.labels, key, le)} {running}"
            inf = 'le="+Inf"'
            yield f"{self.name}_bucket{_labels(self.labels, key, inf)} {row[-1]}"
            yield f"{self.name}_sum{_labels(self.labels, key)} {_number(row[-2])}"
            yield f"{self.name}_count{_labels(self.labels, key)} {row[-1]}"

    def quantile(self, q: float, *label_values: str) -> float | None:
        """Upper bound of the bucket holding the q-quantile (for /admin/stats); None when empty."""
        row = self.series.get(label_values)
        if not row or not row[-1]:
            return None
        target, running = q * row[-1], 0
        for bound, count in zip(self.buckets, row, strict=False):
            running += count
            if running >= target:
                return bound
        return float("inf")


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))


# What a serving process of a multi-process router counts itself (its requests and connections); the
# coordinator counts the rest (engine health, reloads, loads, the shared store) once for the router.
SERVING_FAMILIES = ("requests", "latency", "fallbacks", "decisions", "embeddings", "upstream_errors", "refused",
                    "connections", "body_bytes", "gaps", "adapter_cache", "fast_path")


class RouterMetrics:
    def __init__(self) -> None:
        self.requests = Counter("fleetspec_router_requests_total",
                                "Requests proxied, by specialist, version and HTTP status.",
                                ("specialist", "version", "code"))
        self.latency = Histogram("fleetspec_router_request_duration_seconds",
                                 "Time from request to the last byte of the answer.", LATENCY_BUCKETS,
                                 ("specialist", "version"))
        self.fallbacks = Counter("fleetspec_router_fallbacks_total",
                                 "Prompts no specialist took (seed 000's ensemble misses), by reason.", ("reason",))
        self.decisions = Histogram("fleetspec_router_decision_seconds",
                                   "Time to pick a specialist and version for one request.", DECISION_BUCKETS)
        self.embeddings = Histogram("fleetspec_router_embedding_seconds",
                                    "Time the embedding tier took for a prompt no rule matched.", EMBEDDING_BUCKETS)
        self.upstream_errors = Counter("fleetspec_router_upstream_errors_total",
                                       "Failed exchanges with engines, by replica and kind.",
                                       ("server", "replica", "kind"))
        self.refused = Counter("fleetspec_router_refused_total",
                               "Client requests answered with an error before they reached routing (malformed, "
                               "too large, too slow, router full), by status or reason.", ("reason",))
        self.fast_path = Counter("fleetspec_router_fast_path_total",
                                 "Requests by how they were answered: `answered` from the connection callbacks "
                                 "(the fast path), else by why the coroutine path took them.", ("outcome",))
        self.connections = Counter("fleetspec_router_client_connections",
                                   "Client connections open now.", (), kind="gauge")
        self.body_bytes = Counter("fleetspec_router_inflight_body_bytes",
                                  "Request-body bytes held by requests in flight (bounded by "
                                  "--max-inflight-body-bytes).", (), kind="gauge")
        self.upstream_up = Counter("fleetspec_router_upstream_healthy",
                                   "1 when the engine replica answered its last health check.",
                                   ("server", "replica", "url"), kind="gauge")
        self.agent_up = Counter("fleetspec_router_agent_up",
                                "1 when the pod's fleetspec agent answered its last /status read, 0 when it did "
                                "not (the engine's own health is fleetspec_router_upstream_healthy).",
                                ("server", "replica", "url"), kind="gauge")
        self.agent_applied = Counter("fleetspec_router_agent_config_applied",
                                     "1 when the pod's agent serves its ConfigMap's adapter set, 0 while it refuses "
                                     "it and serves the last good set (no series while the agent does not answer).",
                                     ("server", "replica", "url"), kind="gauge")
        self.reloads = Counter("fleetspec_router_config_reloads_total",
                               "Config reloads, by result.", ("result",))
        self.state_up = Counter("fleetspec_router_runtime_state_healthy",
                                "1 when the runtime cluster-map store answered its last read (memory: always).",
                                ("backend",), kind="gauge")
        self.state_mappings = Counter("fleetspec_router_runtime_mappings",
                                      "Runtime cluster mappings known to this router: in effect, or ignored "
                                      "because the config does not allow them.", ("status",), kind="gauge")
        self.state_syncs = Counter("fleetspec_router_runtime_state_syncs_total",
                                   "Reads of the shared runtime state (Redis), by result.", ("result",))
        self.gaps = Counter("fleetspec_router_routing_gaps_total",
                            "Prompts no routing rule matched, by what became of their routing-gap log entry: "
                            "recorded, queue-full (dropped: the writer fell behind) or write-failed.", ("result",))
        self.adapter_cache = Counter("fleetspec_router_adapter_cache_total",
                                     "Requests for an adapter, by replica and whether the replica chosen already "
                                     "held it (hit) or had to load it first (miss).", ("server", "replica", "result"))
        self.adapter_loads = Counter("fleetspec_router_adapter_loads_total",
                                     "Adapter loads the router asked an engine for (on demand, spill-over, warm), "
                                     "by result.", ("server", "replica", "result"))
        self.adapter_load_seconds = Histogram("fleetspec_router_adapter_load_seconds",
                                              "Time an engine took to load an adapter the router asked for.",
                                              LOAD_BUCKETS, ("server", "replica"))
        self.adapter_evictions = Counter("fleetspec_router_adapter_evictions_total",
                                         "Adapters the router unloaded to make room for another in the server's "
                                         "adapter cache (max_cpu_loras).", ("server", "replica"))
        # Seed 000's names, so its dashboards and its alert query keep working unchanged:
        # rate(ensemble_miss_total[5m]) / rate(swarm_router_requests_total[5m]). Derived, at render
        # time, from fleetspec's own counters above.
        self.ensemble_misses = Counter("ensemble_miss_total",
                                       "Seed 000's name: prompts no specialist took (the sum of "
                                       "fleetspec_router_fallbacks_total over reasons).")
        self.ensemble_requests = Counter("swarm_router_requests_total",
                                         "Seed 000's name: requests answered (the sum of "
                                         "fleetspec_router_requests_total).")
        self.ensemble_cache_hits = Counter("ensemble_cache_hits_total",
                                           "Seed 000's name: fleetspec_router_adapter_cache_total{result=\"hit\"}, "
                                           "summed over replicas.")
        self.ensemble_cache_misses = Counter("ensemble_cache_misses_total",
                                             "Seed 000's name: fleetspec_router_adapter_cache_total{result=\"miss\"}, "
                                             "summed over replicas.")
        self.ensemble_cache_evictions = Counter("ensemble_cache_evictions_total",
                                                "Seed 000's name: fleetspec_router_adapter_evictions_total, summed "
                                                "over replicas.")
        self.ensemble_miss_rate = Counter("ensemble_miss_rate",
                                          "Seed 000's name: ensemble_miss_total / swarm_router_requests_total since "
                                          "the router started (its target: < 0.10).", (), kind="gauge")

    def families(self) -> dict[str, Counter | Histogram]:
        return {name: value for name, value in vars(self).items() if isinstance(value, Counter | Histogram)}

    def snapshot(self, names: Iterable[str] | None = None) -> dict:
        """The families' values as JSON (a serving process reports them to its coordinator)."""
        families = self.families()
        out = {}
        for name in families if names is None else names:
            family = families[name]
            rows = family.values if isinstance(family, Counter) else family.series
            out[name] = [[list(key), value] for key, value in rows.items()]
        return out

    def absorb(self, snapshot: dict) -> None:
        """Add another process's snapshot to these values (counters, histograms and gauges alike:
        every family a process reports is one whose total is the sum over processes)."""
        families = self.families()
        for name, rows in snapshot.items():
            family = families.get(name)
            if family is None:
                continue
            for key, value in rows:
                key = tuple(str(k) for k in key)
                if isinstance(family, Counter):
                    family.values[key] = family.values.get(key, 0.0) + float(value)
                elif len(value) == len(family.buckets) + 2:
                    row = family.series.setdefault(key, [0] * len(family.buckets) + [0.0, 0])
                    for i, amount in enumerate(value):
                        row[i] += amount

    def agents(self, replicas) -> None:
        """Copy each pod agent's standing into the gauges, just before they are rendered (pods come
        and go with discovery: only the replicas known now have series)."""
        self.agent_up.values.clear()
        self.agent_applied.values.clear()
        for replica in replicas:
            if replica.upstream.agent_port is None or replica.agent_state is None:
                continue
            key = (replica.server, str(replica.upstream.replica), replica.upstream.url)
            self.agent_up.set(*key, value=0.0 if replica.agent is None else 1.0)
            if replica.agent is not None:
                self.agent_applied.set(*key, value=float(replica.agent.problem_kind is None and replica.agent.last_good is not None))

    def runtime_state(self, health: dict, active: int, ignored: int, syncs: dict | None) -> None:
        """Copy the runtime store's standing into the gauges, just before they are rendered."""
        self.state_up.values.clear()
        self.state_up.set(health["backend"], value=1.0 if health["healthy"] else 0.0)
        self.state_mappings.set("active", value=active)
        self.state_mappings.set("ignored", value=ignored)
        for result, count in (syncs or {}).items():
            self.state_syncs.set(result, value=count)

    def _ensemble(self) -> None:
        misses, requests = sum(self.fallbacks.values.values()), sum(self.requests.values.values())
        self.ensemble_misses.set(value=misses)
        self.ensemble_requests.set(value=requests)
        for family, result in ((self.ensemble_cache_hits, "hit"), (self.ensemble_cache_misses, "miss")):
            family.set(value=sum(v for k, v in self.adapter_cache.values.items() if k[2] == result))
        self.ensemble_cache_evictions.set(value=sum(self.adapter_evictions.values.values()))
        self.ensemble_miss_rate.values.clear()
        if requests:  # no series before the first request: a rate of nothing is not 0
            self.ensemble_miss_rate.set(value=round(min(1.0, misses / requests), 6))

    def render(self) -> str:
        self._ensemble()
        families = (self.requests, self.latency, self.fallbacks, self.decisions, self.embeddings, self.upstream_errors,
                    self.refused, self.fast_path, self.connections, self.body_bytes, self.upstream_up, self.agent_up,
                    self.agent_applied, self.reloads, self.state_up, self.state_mappings, self.state_syncs,
                    self.gaps, self.adapter_cache, self.adapter_loads, self.adapter_load_seconds,
                    self.adapter_evictions, self.ensemble_misses, self.ensemble_requests, self.ensemble_cache_hits,
                    self.ensemble_cache_misses, self.ensemble_cache_evictions, self.ensemble_miss_rate)
        return "\n".join(line for family in families for line in family.render()) + "\n"
