"""`plan_fleet`: the whole fleet's GPU plan — placement, per-GPU budgets, host RAM, findings.

Pure: a FleetSpec (and, for `gpus: {discover: true}`, the GPU groups the CLI discovered) in, a
frozen FleetPlan out. Replicas of one server on one GPU type have identical budgets, so each
(server, GPU type) pair is computed once however many replicas there are.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Mapping, Sequence

from fleetspec.catalog import gpus as catalog_gpus
from fleetspec.catalog import models as catalog_models
from fleetspec.errors import Diagnostic, Location, Severity
from fleetspec.planner import budget, engine, findings, memory, placement, scheduling
from fleetspec.spec import models as spec_models

GIB = 1 << 30


@dataclasses.dataclass(frozen=True)
class ReplicaPlan:
    index: int
    gpus: tuple[int, ...]  # empty when the replica could not be placed
    gpu_type: str | None
    budget: budget.GpuBudget | None  # per GPU; for an unplaced replica, what it would get
    data_parallel_size: int = 1  # engine ranks, each with this budget's KV cache

    @property
    def placed(self) -> bool:
        return bool(self.gpus)

    @property
    def fits(self) -> bool:
        return self.placed and self.budget is not None and self.budget.fits

    def to_json(self) -> dict:
        b = self.budget
        return {
            "index": self.index, "gpus": list(self.gpus), "gpu_type": self.gpu_type, "fits": self.fits,
            "kv_cache_tokens": b.kv_tokens if b else 0,
            "max_concurrency": round(b.max_concurrency, 2) if b else 0.0,
            "largest_max_model_len": b.largest_model_len if b else 0,
            "data_parallel_size": self.data_parallel_size,
            "max_concurrency_all_ranks": round(b.max_concurrency * self.data_parallel_size, 2) if b else 0.0,
            "per_gpu": b.to_json() if b else None,
        }


@dataclasses.dataclass(frozen=True)
class LoraPlan:
    max_loras: int
    max_lora_rank: int
    max_cpu_loras: int
    wrapped_modules: tuple[str, ...]
    seed_formula_bytes: int  # max_loras × 2 × rank × hidden × layers × modules × bytes
    largest_adapter_bytes: int
    cpu_cache_bytes: int  # host RAM per replica for the CPU adapter cache

    def to_json(self) -> dict:
        return {
            "max_loras": self.max_loras, "max_lora_rank": self.max_lora_rank, "max_cpu_loras": self.max_cpu_loras,
            "wrapped_modules": list(self.wrapped_modules),
            "seed_formula_gib": round(self.seed_formula_bytes / GIB, 2),
            "largest_adapter_gib": round(self.largest_adapter_bytes / GIB, 3),
            "cpu_cache_gib_per_replica": round(self.cpu_cache_bytes / GIB, 2),
            # exact figures too: small adapters round to 0 GiB
            "largest_adapter_bytes": self.largest_adapter_bytes,
            "cpu_cache_bytes_per_replica": self.cpu_cache_bytes,
        }


@dataclasses.dataclass(frozen=True)
class ServerPlan:
    index: int
    name: str
    settings: engine.EngineSettings | None
    replicas: tuple[ReplicaPlan, ...]
    lora: LoraPlan | None

    @property
    def fits(self) -> bool:
        return all(r.fits for r in self.replicas)

    def to_json(self) -> dict:
        s = self.settings
        out = {"name": self.name, "fits": self.fits, "replicas": [r.to_json() for r in self.replicas]}
        if s is not None:
            out["settings"] = {
                "tensor_parallel_size": s.tensor_parallel_size, "pipeline_parallel_size": s.pipeline_parallel_size,
                "gpu_memory_utilization": s.gpu_memory_utilization, "max_model_len": s.max_model_len,
                "max_num_seqs": s.max_num_seqs, "max_num_batched_tokens": s.max_num_batched_tokens,
                "enforce_eager": s.enforce_eager, "quantization": s.quantization,
                "vllm_version": ".".join(map(str, s.vllm_version)),
            }
        out["lora"] = self.lora.to_json() if self.lora else None
        return out


@dataclasses.dataclass(frozen=True)
class FleetPlan:
    fleet: str
    model: str
    servers: tuple[ServerPlan, ...]
    cpu_lora_cache_bytes: int
    findings: tuple[Diagnostic, ...]

    @property
    def errors(self) -> list[Diagnostic]:
        return [f for f in self.findings if f.severity is Severity.ERROR]

    @property
    def fits(self) -> bool:
        return not self.errors and all(s.fits for s in self.servers)

    def to_json(self) -> dict:
        return {
            "fleet": self.fleet, "model": self.model, "fits": self.fits,
            "servers": [s.to_json() for s in self.servers],
            "host": {"cpu_lora_cache_gib": round(self.cpu_lora_cache_bytes / GIB, 2)},
            "findings": [f.to_json() for f in self.findings],
        }


# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class InspectedAdapter:
    """What reading an adapter's files told us (adapters.survey), in the planner's own terms."""

    rank: int | None  # largest real rank over its modules
    modules: tuple[str, ...] | None  # module suffixes it trains (q_proj, ...)
    elements: int | None  # LoRA elements; host bytes = elements × lora dtype bytes


@dataclasses.dataclass(frozen=True)
class _Adapters:
    """What the planner knows about the adapters one server hosts (every deployable version)."""

    ranks: tuple[int | None, ...]
    modules: tuple[tuple[str, ...] | None, ...]
    elements: tuple[int | None, ...] = ()  # per adapter when its files were read, else None

    @property
    def largest_rank(self) -> int | None:
        return None if not self.ranks or None in self.ranks else max(self.ranks)

    @property
    def trained_modules(self) -> set[str] | None:
        if not self.modules or None in self.modules:
            return None
        return {m.rsplit(".", 1)[-1] for group in self.modules for m in group}


def plan_fleet(spec: spec_models.FleetSpec, gpus_override: Sequence[spec_models.GpuGroup] | None = None,
               locate: Callable[[tuple], Location | None] | None = None,
               inspected: Mapping[tuple[str, str], InspectedAdapter] | None = None) -> FleetPlan:
    """Plan every server replica of the fleet; `locate` maps finding paths to file positions.

    `inspected` ((specialist, version) → facts read from the adapter files) replaces declared ranks
    and modules, and gives the CPU cache its real sizes."""
    found: list[Diagnostic] = []
    facts = catalog_models.resolve(spec.base_model)
    if facts is None:
        found.append(findings.unknown_model(spec.base_model))
    else:
        found.extend(findings.model_findings(spec, facts))
    slots, problems = placement.inventory(_gpu_groups(spec, gpus_override, found))
    found.extend(problems)
    planner = _Planner(spec, facts, slots, inspected or {})
    assignments, shortages = placement.place(planner.demands(), slots, planner.prefer)
    found.extend(shortages)
    found.extend(scheduling.check(spec, assignments, slots))  # k8s: what the scheduler will do
    servers = tuple(planner.server_plan(i, assignments, found) for i in range(len(spec.servers)))
    found.extend(planner.headroom(assignments))
    if facts is not None:
        first = engine.settings_for(spec, spec.servers[0], facts, _any_gpu(slots))
        quant = findings.quantization_finding(first)
        found.extend([quant] if quant else [])
        skipped = findings.bnb_skip_finding(first)
        found.extend([skipped] if skipped else [])
    cpu = sum(s.lora.cpu_cache_bytes * len(s.replicas) for s in servers if s.lora)
    located = tuple(_locate(f, locate) for f in _dedupe(found))
    return FleetPlan(spec.name, facts.id if facts else spec.base_model.id, servers, cpu, located)


def _gpu_groups(spec, override, found) -> list[spec_models.GpuGroup]:
    if override is not None:
        return list(override)
    if isinstance(spec.gpus, list):
        return spec.gpus
    found.append(findings.finding(
        Severity.ERROR, "gpus-not-discovered", ("gpus",),
        "`gpus: {discover: true}` asks this machine's NVIDIA driver for its GPUs, and none were given to the planner",
        "run `fleetspec plan` on the GPU host, or list the GPUs, e.g. gpus: \"2x A100-80GB\"",
    ))
    return []


def _any_gpu(slots) -> catalog_gpus.GpuFacts:
    return slots[0].gpu if slots else catalog_gpus.GpuFacts("none", 0, "")


class _Planner:
    def __init__(self, spec: spec_models.FleetSpec, facts: catalog_models.ModelFacts | None, slots, inspected):
        self.spec, self.facts, self.slots = spec, facts, slots
        self._budgets: dict[tuple, tuple[engine.EngineSettings, budget.GpuBudget]] = {}
        self._adapters = _hosted_adapters(spec, inspected)

    def demands(self) -> list[placement.Demand]:
        from fleetspec.spec import derived

        def canonical(name: str | None) -> str | None:
            return catalog_gpus.canonical_name(name) or name if name else None

        return [
            placement.Demand(i, s.name, s.replicas, s.gpus_per_replica, derived.utilization(self.spec, s),
                             canonical(s.gpu_type),
                             tuple(canonical(t) for t in s.stage_gpu_types()) if s.mixed_gpu_types else (),
                             s.tensor_parallel_size, s.data_parallel_size)
            for i, s in enumerate(self.spec.servers)
        ]

    def budget(self, i: int, gpu: catalog_gpus.GpuFacts, stage_gpus: tuple[catalog_gpus.GpuFacts, ...] = (),
               ) -> tuple[engine.EngineSettings, budget.GpuBudget]:
        """Settings and budget of server i on `gpu`, or across `stage_gpus` when its pipeline stages
        sit on different types (the settings that depend on the device, batch defaults among them,
        are the first stage's: vLLM's engine reads them from device 0)."""
        key = (i, gpu.type, gpu.total_bytes, tuple((g.type, g.total_bytes) for g in stage_gpus))
        if key not in self._budgets:
            settings = engine.settings_for(self.spec, self.spec.servers[i], self.facts, gpu)
            self._budgets[key] = settings, budget.compute(self.facts, settings, gpu.total_bytes, stage_gpus or None)
        return self._budgets[key]

    def _stage_fallback(self, server: spec_models.Server) -> tuple[catalog_gpus.GpuFacts, ...]:
        """For a mixed-type pipeline that could not be placed: one GPU of each stage's type."""
        if not server.mixed_gpu_types:
            return ()
        found = []
        for gpu_type in server.stage_gpu_types():
            wanted = catalog_gpus.canonical_name(gpu_type) or gpu_type
            gpu = next((s.gpu for s in self.slots if s.gpu.type == wanted), None)
            if gpu is None:
                return ()
            found.append(gpu)
        return tuple(found)

    def prefer(self, demand: placement.Demand, gpu: catalog_gpus.GpuFacts) -> bool:
        return self.facts is not None and self.budget(demand.server_index, gpu)[1].fits

    def server_plan(self, i: int, assignments, found: list[Diagnostic]) -> ServerPlan:
        server = self.spec.servers[i]
        placed = {a.replica: a for a in assignments if a.server_index == i}
        stage_fallback = self._stage_fallback(server)
        fallback = stage_fallback[0] if stage_fallback else \
            next((s.gpu for s in self.slots if self._matches(server, s.gpu)), None)
        replicas, settings = [], None
        for r in range(server.replicas):
            gpu = placed[r].gpu if r in placed else fallback
            stages = placed[r].stage_gpus if r in placed else stage_fallback
            b = None
            if self.facts is not None and gpu is not None:
                settings, b = self.budget(i, gpu, stages)
            gpu_type = "+".join(dict.fromkeys(g.type for g in stages)) if stages else gpu.type if gpu else None
            replicas.append(ReplicaPlan(r, placed[r].gpu_ids if r in placed else (), gpu_type, b,
                                        server.data_parallel_size))
        if self.facts is not None and server.replicas:
            # Once per distinct placement (GPU type, or the types of the stages), not per replica.
            used = {(a.gpu.type, tuple(g.type for g in a.stage_gpus)): (a.gpu, a.stage_gpus) for a in placed.values()}
            if not used and fallback is not None:
                used = {(): (fallback, stage_fallback)}
            found.extend(self._memory_findings(i, list(used.values())))
        if settings is None and self.facts is not None and fallback is not None:
            settings = self.budget(i, fallback, stage_fallback)[0]
        return ServerPlan(i, server.name, settings, tuple(replicas), self._lora_plan(i, settings))

    def _matches(self, server: spec_models.Server, gpu: catalog_gpus.GpuFacts) -> bool:
        wanted = catalog_gpus.canonical_name(server.gpu_type) or server.gpu_type if server.gpu_type else None
        return wanted in (None, gpu.type)

    def _memory_findings(self, i: int, gpus_used: list[tuple[catalog_gpus.GpuFacts, tuple]]) -> list[Diagnostic]:
        out: list[Diagnostic] = []
        adapters = self._adapters[i]
        for gpu, stages in gpus_used:
            settings, b = self.budget(i, gpu, stages)
            binding = stages[b.stage.index] if stages and b.stage is not None else gpu
            available = sum(1 for s in self.slots if s.gpu.type == binding.type)
            out.extend(findings.memory_findings(self.spec, i, self.facts, settings, binding, b, available,
                                                (adapters.trained_modules, adapters.largest_rank)))
        if gpus_used:
            settings = self.budget(i, *gpus_used[0])[0]
            for extra in (findings.rank_finding(i, self.facts, settings, adapters.largest_rank),
                          findings.targets_finding(i, self.facts, settings, adapters.trained_modules),
                          findings.seed_formula_finding(i, self.facts, settings)):
                if extra is not None:
                    out.append(extra)
        return out

    def _lora_plan(self, i: int, settings: engine.EngineSettings | None) -> LoraPlan | None:
        server = self.spec.servers[i]
        if server.lora is None or self.facts is None or settings is None:
            return None
        lora, facts = server.lora, self.facts
        adapters = self._adapters[i]
        sizes = sorted(
            # Read from the files when we could; otherwise an adapter without declared
            # target_modules trains what the server wraps (vLLM rejects other modules), else every
            # linear projection.
            (elements * settings.lora_dtype_bytes if elements is not None else
             memory.adapter_bytes(facts, rank or lora.max_lora_rank, settings.lora_dtype_bytes,
                                  modules or lora.target_modules)
             for rank, modules, elements in zip(adapters.ranks, adapters.modules, adapters.elements, strict=True)),
            reverse=True,
        )
        cached = min(lora.max_cpu_loras or lora.max_loras, len(sizes))
        seed = lora.max_loras * memory.seed_adapter_bytes(facts, lora.max_lora_rank, settings.lora_dtype_bytes,
                                                          lora.target_modules)
        return LoraPlan(lora.max_loras, lora.max_lora_rank, lora.max_cpu_loras or lora.max_loras,
                        memory.lora_targets(facts, lora.target_modules), seed, sizes[0] if sizes else 0,
                        sum(sizes[:cached]))

    def headroom(self, assignments) -> list[Diagnostic]:
        """Per GPU: the budgets of every replica on it plus each one's CUDA context must fit."""
        if self.facts is None:
            return []
        booked: dict[int, list[tuple[int, catalog_gpus.GpuFacts, tuple[int, tuple]]]] = {}
        for a in assignments:
            server = self.spec.servers[a.server_index]
            per_rank = server.tensor_parallel_size * server.pipeline_parallel_size
            for position, gpu_id in enumerate(a.gpu_ids):
                stage = (position % per_rank) // server.tensor_parallel_size
                gpu = a.stage_gpus[stage] if a.stage_gpus else a.gpu
                booked.setdefault(gpu_id, []).append((a.server_index, gpu, (stage, (a.gpu, a.stage_gpus))))
        out = []
        for gpu_id, users in sorted(booked.items()):
            used = outside = graphs = 0.0
            warmups: list[tuple[int, budget.GpuBudget]] = []
            for i, _gpu, (stage, placed_on) in users:
                settings, b = self.budget(i, *placed_on)
                b = b.stages[stage] if b.stages else b  # this GPU's own stage
                used += settings.gpu_memory_utilization
                outside += b.cuda_context
                graphs += b.resident_outside  # graphs before 0.21, LoRA buffers on V0 0.7
                warmups.append((i, b))
            problem = findings.headroom_finding(gpu_id, users[0][1], used, round(outside), users[-1][0])
            # Only once every process has started: graphs captured outside the budget, then each
            # replica's sampler warm-up in the activation room its own budget freed (memory.py).
            problem = problem or findings.warmup_finding(gpu_id, users[0][1], used, round(outside + graphs),
                                                         warmups)
            if problem is not None:
                out.append(problem)
        return out


def _hosted_adapters(spec: spec_models.FleetSpec, inspected: Mapping[tuple[str, str], InspectedAdapter],
                     ) -> list[_Adapters]:
    index = {s.name: i for i, s in enumerate(spec.servers)}
    lora_servers = [i for i, s in enumerate(spec.servers) if s.lora is not None]
    per_server: list[list[tuple]] = [[] for _ in spec.servers]
    for specialist in spec.specialists:
        hosts = lora_servers if specialist.servers is None else [index[n] for n in specialist.servers if n in index]
        for version in specialist.all_versions:
            entry = specialist.version_entry(version)
            declared = (entry.rank, tuple(entry.target_modules) if entry.target_modules else None, None)
            read = inspected.get((specialist.name, version))
            found = (read.rank or declared[0], read.modules or declared[1], read.elements) if read else declared
            for i in hosts:
                per_server[i].append(found)
    return [_Adapters(*(tuple(column) for column in zip(*rows, strict=True))) if rows else _Adapters((), (), ())
            for rows in per_server]


ONCE_PER_FLEET = {"lora-preallocation"}  # the same explanation on every server is noise


def _dedupe(found: list[Diagnostic]) -> list[Diagnostic]:
    seen, out = set(), []
    for f in found:
        key = (f.code,) if f.code in ONCE_PER_FLEET else (f.code, f.path, f.message)
        if key not in seen:
            seen.add(key)
            out.append(f)
    return out


_PATH_PART = re.compile(r"([^.\[\]]+)|\[(\d+)\]")


def parse_path(text: str) -> tuple:
    """`servers[0].lora.max_lora_rank` → ("servers", 0, "lora", "max_lora_rank")."""
    return tuple(int(index) if index else name for name, index in _PATH_PART.findall(text))


def _locate(f: Diagnostic, locate) -> Diagnostic:
    if locate is None or f.location is not None:
        return f
    path = parse_path(f.path)
    while path:
        location = locate(path)
        if location is not None:
            return dataclasses.replace(f, location=location)
        path = path[:-1]  # a defaulted field has no position: point at its parent
    return f
