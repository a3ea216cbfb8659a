"""Cross-field validation: rules that relate several parts of a fleet file.

Pure: takes a LoadedFleet (for locations) and returns diagnostics; never raises for user mistakes.
Only what the spec alone decides is checked here. Memory fit and GPU placement are the planner's
job; what needs the catalog, the planner or the routing table is `fleetspec.validation.checks`.
"""

from __future__ import annotations

import collections
import difflib
from collections.abc import Iterator

from fleetspec.errors import Diagnostic, Severity
from fleetspec.spec import derived, models

ERROR, WARNING = Severity.ERROR, Severity.WARNING



def check_fields(fleet) -> list[Diagnostic]:
    """Every cross-field problem of the fleet that the spec alone decides (errors and warnings).
    The full validation, with the catalog's engine refusals and the routing analysis, is
    `fleetspec.validation.checks.check`."""
    found: list[Diagnostic] = []
    for checker in (_unique_names, _lora_limits, _hosting, _versions, _routing_targets, _splits,
                    _pinned, _gpu_inventory, _ports, _env_secrets, _router_secrets, _quantization):
        found.extend(checker(fleet))
    return found


def _unique_names(fleet) -> Iterator[Diagnostic]:
    spec = fleet.spec
    for kind, items in (("servers", spec.servers), ("specialists", spec.specialists)):
        first: dict[str, int] = {}
        for i, item in enumerate(items):
            if item.name in first:
                yield fleet.diagnostic(
                    ERROR, "duplicate-name", (kind, i, "name"),
                    f"{kind[:-1]} name `{item.name}` is already used by {kind}[{first[item.name]}]",
                    "give every entry its own name; versions of one specialist go under `versions:`",
                )
            first.setdefault(item.name, i)
    served = {s.name for s in spec.specialists}
    if spec.base_model.id in served:
        index = next(i for i, s in enumerate(spec.specialists) if s.name == spec.base_model.id)
        yield fleet.diagnostic(ERROR, "name-conflicts-with-base", ("specialists", index, "name"),
                               "a specialist cannot share its name with the base model (vLLM refuses it)",
                               "rename the specialist")


def _lora_limits(fleet) -> Iterator[Diagnostic]:
    for i, server in enumerate(fleet.spec.servers):
        lora = server.lora
        if lora is None or lora.max_cpu_loras is None or lora.max_cpu_loras >= lora.max_loras:
            continue
        yield fleet.diagnostic(
            ERROR, "cpu-loras-below-gpu-loras", ("servers", i, "lora", "max_cpu_loras"),
            f"max_cpu_loras ({lora.max_cpu_loras}) must be at least max_loras ({lora.max_loras}); vLLM refuses to start",
            f"set max_cpu_loras to {lora.max_loras} or more",
        )


def _hosting(fleet) -> Iterator[Diagnostic]:
    spec = fleet.spec
    names = [s.name for s in spec.servers]
    for i, specialist in enumerate(spec.specialists):
        for j, server_name in enumerate(specialist.servers or []):
            server = spec.server(server_name)
            if server is None:
                yield fleet.diagnostic(ERROR, "unknown-server", ("specialists", i, "servers", j),
                                       f"there is no server named `{server_name}`", _did_you_mean(server_name, names))
            elif server.lora is None:
                yield fleet.diagnostic(
                    ERROR, "server-without-lora", ("specialists", i, "servers", j),
                    f"server `{server_name}` cannot host adapters: it has no `lora` section",
                    f"add `lora: {{max_loras: 4, max_lora_rank: {derived.rank_ceiling(specialist.rank or 16)}}}` to it",
                )
        hosts = spec.hosts_of(specialist)
        if not hosts and not specialist.servers:
            yield fleet.diagnostic(ERROR, "specialist-without-server", ("specialists", i),
                                   f"no server can host `{specialist.name}`: none has a `lora` section",
                                   "add `lora: {max_loras: 4}` to a server")
        yield from _ranks_fit(fleet, i, specialist, hosts)


def _ranks_fit(fleet, index: int, specialist: models.Specialist, hosts) -> Iterator[Diagnostic]:
    for version in specialist.all_versions:
        entry = specialist.version_entry(version)
        if entry is None or entry.rank is None:
            continue
        for server in hosts:
            if server.lora is None or entry.rank <= server.lora.max_lora_rank:
                continue
            where = ("specialists", index, "rank") if version == specialist.version else (
                "specialists", index, "versions", specialist.all_versions.index(version) - 1, "rank")
            yield fleet.diagnostic(
                ERROR, "rank-above-max-lora-rank", where,
                f"`{specialist.name}` version {version} has rank {entry.rank}, above max_lora_rank "
                f"{server.lora.max_lora_rank} of server `{server.name}`; vLLM will refuse to load it",
                f"raise servers[{fleet.spec.servers.index(server)}].lora.max_lora_rank to "
                f"{derived.rank_ceiling(entry.rank)}",
            )


def _pinned(fleet) -> Iterator[Diagnostic]:
    """Pinned specialists must all fit the GPU slots of every server hosting them, preloaded."""
    spec = fleet.spec
    for i, specialist in enumerate(spec.specialists):
        if specialist.pinned and not specialist.preload:
            yield fleet.diagnostic(ERROR, "pinned-not-preloaded", ("specialists", i, "preload"),
                                   f"`{specialist.name}` is pinned but not preloaded, so it would not be resident",
                                   "remove `preload: false`, or unpin it")
    for j, server in enumerate(spec.servers):
        if server.lora is None:
            continue
        pinned = [s.name for s in spec.hosted_by(server) if s.pinned]
        if len(pinned) > server.lora.max_loras:
            yield fleet.diagnostic(
                ERROR, "pinned-above-max-loras", ("servers", j, "lora", "max_loras"),
                f"server `{server.name}` hosts {len(pinned)} pinned specialists ({', '.join(pinned)}) but has "
                f"{server.lora.max_loras} GPU adapter slots, so they cannot all stay resident",
                f"raise max_loras to {len(pinned)}, or unpin some of them",
            )


def _versions(fleet) -> Iterator[Diagnostic]:
    for i, specialist in enumerate(fleet.spec.specialists):
        seen = collections.Counter(specialist.all_versions)
        for j, entry in enumerate(specialist.versions):
            if seen[entry.version] > 1:
                yield fleet.diagnostic(ERROR, "duplicate-version", ("specialists", i, "versions", j, "version"),
                                       f"version {entry.version} of `{specialist.name}` is declared twice",
                                       "each version appears once: the active one at the top, others under `versions:`")
        paths = collections.Counter(specialist.version_entry(v).path for v in set(specialist.all_versions))
        for path, count in paths.items():
            if count > 1:
                yield fleet.diagnostic(
                    ERROR, "shared-version-path", ("specialists", i),
                    f"several versions of `{specialist.name}` use the same path {path}",
                    "give every version its own directory: vLLM caches by path, so a shared path serves stale results",
                )
        previous = specialist.previous_version
        if previous is not None and previous not in specialist.all_versions[1:]:
            yield fleet.diagnostic(
                ERROR, "unknown-previous-version", ("specialists", i, "previous_version"),
                f"previous_version {previous} of `{specialist.name}` is not listed under `versions:`",
                f"add `- {{version: {previous}, path: ...}}` under versions",
            )


def _resolve_target(fleet, target: str) -> tuple[str | None, str]:
    """(problem, hint) for a rule target `name` or `name@version`; problem None when it resolves."""
    name, _, version = target.partition("@")
    specialist = fleet.spec.specialist(name)
    if specialist is None:
        return f"routes to `{name}`, which is not a declared specialist", _did_you_mean(
            name, [s.name for s in fleet.spec.specialists]) or "declare it under `specialists:`"
    if version and version not in specialist.all_versions:
        return (f"routes to version {version} of `{name}`, which is not declared",
                "declared versions: " + ", ".join(specialist.all_versions))
    return None, ""


def _routing_targets(fleet) -> Iterator[Diagnostic]:
    for i, rule in enumerate(fleet.spec.routing.rules):
        if hasattr(rule, "to"):
            problem, hint = _resolve_target(fleet, rule.to)
            if problem:
                yield fleet.diagnostic(ERROR, "unknown-route-target", ("routing", "rules", i, "to"),
                                       f"this rule {problem}", hint)
        elif isinstance(rule, models.HashClusterRule):
            for cluster, target in rule.hash_clusters.map.items():
                problem, hint = _resolve_target(fleet, target)
                if problem:
                    yield fleet.diagnostic(ERROR, "unknown-route-target",
                                           ("routing", "rules", i, "hash_clusters", "map", cluster),
                                           f"cluster {cluster} {problem}", hint)


def _splits(fleet) -> Iterator[Diagnostic]:
    seen: set[str] = set()
    for i, split in enumerate(fleet.spec.routing.splits):
        where = ("routing", "splits", i)
        specialist = fleet.spec.specialist(split.specialist)
        if specialist is None:
            yield fleet.diagnostic(ERROR, "unknown-route-target", (*where, "specialist"),
                                   f"the split names `{split.specialist}`, which is not a declared specialist",
                                   _did_you_mean(split.specialist, [s.name for s in fleet.spec.specialists]))
            continue
        if split.specialist in seen:
            yield fleet.diagnostic(ERROR, "duplicate-split", (*where, "specialist"),
                                   f"`{split.specialist}` has more than one split", "merge them into one")
        seen.add(split.specialist)
        for version in split.weights:
            if version not in specialist.all_versions:
                yield fleet.diagnostic(ERROR, "unknown-split-version", (*where, "weights", version),
                                       f"version {version} of `{split.specialist}` is not declared",
                                       "declared versions: " + ", ".join(specialist.all_versions))
        total = sum(split.weights.values())
        if total != 100:
            yield fleet.diagnostic(ERROR, "split-weights-sum", (*where, "weights"),
                                   f"the weights of this split add up to {total}, not 100",
                                   "make the percentages add up to 100")


def _gpu_inventory(fleet) -> Iterator[Diagnostic]:
    spec = fleet.spec
    if not isinstance(spec.gpus, list):
        return  # discovered at plan time
    total = sum(g.count for g in spec.gpus)
    seen_ids: dict[int, int] = {}
    for g_index in range(len(spec.gpus)):
        for device in derived.group_device_ids(spec.gpus, g_index):
            if device in seen_ids:
                yield fleet.diagnostic(ERROR, "duplicate-gpu-id", ("gpus", g_index, "ids"),
                                       f"GPU id {device} is listed twice", "every GPU id appears in one group once")
            seen_ids[device] = g_index
    types = {g.type for g in spec.gpus}
    for i, server in enumerate(spec.servers):
        if server.gpu_type is not None and server.gpu_type not in types:
            yield fleet.diagnostic(ERROR, "unknown-gpu-type", ("servers", i, "gpu_type"),
                                   f"no GPU group of type `{server.gpu_type}` is declared under `gpus:`",
                                   _did_you_mean(server.gpu_type, [t for t in types if t]) or "declare it under gpus")
            continue
        if server.mixed_gpu_types:
            yield from _stage_inventory(fleet, i, server, types)
            continue
        pool = sum(g.count for g in spec.gpus if server.stage_gpu_types()[0] in (None, g.type))
        if server.gpus_per_replica > pool:
            yield fleet.diagnostic(
                ERROR, "replica-larger-than-inventory", ("servers", i, "tensor_parallel_size"),
                f"one replica of `{server.name}` needs {server.gpus_per_replica} GPUs but only {pool} are declared",
                "lower data_parallel_size / tensor_parallel_size / pipeline_parallel_size, or declare more GPUs",
            )
    needed = sum(s.replicas * s.gpus_per_replica * derived.utilization(spec, s) for s in spec.servers)
    if needed > total + 1e-9:
        yield fleet.diagnostic(
            ERROR, "not-enough-gpus", ("gpus",),
            f"the servers need {needed:.2f} GPUs' worth of memory (replicas × GPUs per replica × "
            f"gpu_memory_utilization) but {total} GPU(s) are declared",
            "declare more GPUs, lower replicas, or lower gpu_memory_utilization so replicas can share a GPU",
        )


def _stage_inventory(fleet, i: int, server, types: set) -> Iterator[Diagnostic]:
    """A replica whose pipeline stages name different GPU types needs, of each type, data x tensor
    parallel GPUs per stage on that type."""
    wanted: dict[str, int] = {}  # every stage names a type here (spec.models.Server)
    for stage, gpu_type in enumerate(server.stage_gpu_types()):
        if gpu_type is not None and gpu_type not in types:
            yield fleet.diagnostic(ERROR, "unknown-gpu-type", ("servers", i, "pipeline_stages", stage, "gpu_type"),
                                   f"no GPU group of type `{gpu_type}` is declared under `gpus:`",
                                   _did_you_mean(gpu_type, [t for t in types if t]) or "declare it under gpus")
            return
        wanted[gpu_type] = wanted.get(gpu_type, 0) + server.data_parallel_size * server.tensor_parallel_size
    for gpu_type, count in wanted.items():
        pool = sum(g.count for g in fleet.spec.gpus if gpu_type in (None, g.type))
        if count > pool:
            yield fleet.diagnostic(
                ERROR, "replica-larger-than-inventory", ("servers", i, "pipeline_stages"),
                f"one replica of `{server.name}` needs {count} {gpu_type} GPUs for its pipeline stages "
                f"but only {pool} are declared",
                "declare more GPUs of that type, or move layers to a stage on another type",
            )


def _ports(fleet) -> Iterator[Diagnostic]:
    owners: dict[int, str] = {}
    for (server, replica), port in derived.replica_ports(fleet.spec).items():
        index = next(i for i, s in enumerate(fleet.spec.servers) if s.name == server)
        owner = f"replica {replica} of `{server}`"
        if port in owners:
            yield fleet.diagnostic(ERROR, "port-collision", ("servers", index, "port"),
                                   f"port {port} of {owner} is already taken by {owners[port]}",
                                   "give the servers port ranges that do not overlap (each replica takes the next port)")
        owners.setdefault(port, owner)
    router = fleet.spec.runtime.router
    if router.enabled and router.port in owners:
        yield fleet.diagnostic(ERROR, "port-collision", ("runtime", "router", "port"),
                               f"the router's port {router.port} is also used by {owners[router.port]}",
                               "move the router or the server to another port")


def _env_secrets(fleet) -> Iterator[Diagnostic]:
    for i, server in enumerate(fleet.spec.servers):
        for key, value in server.env.items():
            if models.literal_secret(key, value):
                yield fleet.diagnostic(
                    WARNING, "inline-secret", ("servers", i, "env", key),
                    f"{key} holds a literal value; it would be written into compiled files and process lists",
                    f"write it as ${{{key}}} and export {key} where fleetspec runs",
                )


def _router_secrets(fleet) -> Iterator[Diagnostic]:
    """The admin token and a Redis password written out: they would reach the router's config file
    (and a Kubernetes Secret fleetspec has to write), where a ${VAR} reference stays a reference."""
    router = fleet.spec.runtime.router
    if router.admin_token and not models.SECRET_REF.search(router.admin_token):
        yield fleet.diagnostic(
            WARNING, "inline-secret", ("runtime", "router", "admin_token"),
            "admin_token holds a literal token; it would be written into the router's compiled config and "
            "anyone who can read the fleet file or its output could use the admin API",
            "write admin_token: ${FLEETSPEC_ADMIN_TOKEN} and export FLEETSPEC_ADMIN_TOKEN where fleetspec and "
            "the router run",
        )
    if models.literal_redis_password(router.redis_url):
        yield fleet.diagnostic(
            WARNING, "inline-secret", ("runtime", "router", "redis_url"),
            "redis_url holds a literal password; it would be written into the router's compiled config",
            "write the password as ${REDIS_PASSWORD}, e.g. redis://:${REDIS_PASSWORD}@redis:6379/0, and export "
            "REDIS_PASSWORD where fleetspec and the router run",
        )


def _quantization(fleet) -> Iterator[Diagnostic]:
    method = fleet.spec.base_model.quantization
    if method in ("bitsandbytes", "gguf"):
        yield fleet.diagnostic(
            WARNING, "out-of-tree-quantization", ("base_model", "quantization"),
            f"vLLM 0.24 and later serve {method} only through the vllm-{'bnb' if method == 'bitsandbytes' else 'gguf'}-plugin package",
            "install the plugin in the engine image, or use an AWQ/GPTQ checkpoint",
        )


def _did_you_mean(word: str, choices: list[str]) -> str:
    guess = difflib.get_close_matches(word, choices, n=1, cutoff=0.6)
    return f"did you mean `{guess[0]}`?" if guess else ""
