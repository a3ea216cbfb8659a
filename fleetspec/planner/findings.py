"""The planner's findings: one sentence of what is wrong, one hint with a change that works.

Every number in a hint comes from `planner.fixes`, which re-plans with the change before it is
offered. Paths point at the field to edit.
"""

from __future__ import annotations

import math

from fleetspec.catalog import gpus as catalog_gpus
from fleetspec.catalog import models as catalog_models
from fleetspec.catalog import overheads, vllm_flags
from fleetspec.errors import Diagnostic, Severity
from fleetspec.planner import budget, engine, fixes, memory
from fleetspec.spec import derived, paths
from fleetspec.spec import models as spec_models

ERROR, WARNING, INFO = Severity.ERROR, Severity.WARNING, Severity.INFO
GIB = 1 << 30
MAX_LORA_VOCAB = 258048  # logits_processor.py:90-92


SIZE_UNITS = (("GiB", GIB), ("MiB", 1 << 20), ("KiB", 1 << 10))  # largest first


def gib(value: float) -> str:
    """A size in a sentence, in the largest unit that still shows it: 39.1 GiB, 0.50 GiB, 0.15 MiB
    (a tiny model's LoRA buffers read "0.00 GiB" otherwise), 56.00 KiB."""
    if abs(value) >= GIB:
        return f"{value / GIB:.1f} GiB"
    name, scale = next((u for u in SIZE_UNITS if abs(value) / u[1] >= 0.01), SIZE_UNITS[-1])
    return f"{value / scale:.2f} {name}" if value else "0.00 GiB"


def finding(severity: Severity, code: str, path: tuple, message: str, hint: str = "") -> Diagnostic:
    return Diagnostic(severity, code, paths.format_path(path), message, hint)


def unknown_model(base: spec_models.BaseModelSpec) -> Diagnostic:
    return finding(
        ERROR, "unknown-base-model", ("base_model", "id"),
        f"fleetspec does not know the architecture of `{base.id}`, so it cannot plan GPU memory",
        "add base_model.architecture with hidden_size, intermediate_size, num_hidden_layers, "
        "num_attention_heads, num_key_value_heads, vocab_size and max_position_embeddings copied "
        "from the model's config.json (or point base_model.id at a local directory that has one)",
    )


def model_findings(spec: spec_models.FleetSpec, facts: catalog_models.ModelFacts) -> list[Diagnostic]:
    found = []
    for i, server in enumerate(spec.servers):
        found.extend(_tensor_parallel(facts, server, i, spec))
        found.extend(_lora_support(facts, server, i))
        found.extend(_context_limit(spec, facts, server, i))
        found.extend(_parallel_shape(facts, server, i, spec))
        found.extend(_unmodelled_extra_args(server, i))
    scope = version_scope_finding(spec.runtime.vllm_version)
    return (found + ([scope] if scope else []) + architecture_findings(facts) + hybrid_state_findings(spec, facts)
            + lora_residency_findings(spec))


def hybrid_state_findings(spec: spec_models.FleetSpec, facts: catalog_models.ModelFacts) -> list[Diagnostic]:
    """What the planner does not model for hybrid attention + Mamba / Gated DeltaNet models: the state
    before the hybrid KV cache manager (V1 < 0.10 and V0 kept it in a MambaCacheManager of
    max_num_seqs slots, outside the KV cache), and LoRA on the state layers' projections."""
    if not facts.is_hybrid:
        return []
    out = []
    version = derived.vllm_version_tuple(spec.runtime.vllm_version)
    if version < overheads.load().mamba.v0_until and "mamba2" in facts.mixers:
        out.append(finding(
            INFO, "hybrid-state-v0-cache", ("runtime", "vllm_version"),
            f"vLLM {spec.runtime.vllm_version} runs {facts.id} on the V0 engine (Mamba models fall back to it "
            "before 0.10.2), which keeps each sequence's Mamba state in a MambaCacheManager of max_num_seqs slots "
            "(padded to a CUDA-graph size) allocated in the profile run: the plan's state_cache term, taken from "
            "the KV budget",
            "lower max_num_seqs to shrink the state cache, or plan with runtime.vllm_version 0.10.2 or later",
        ))
    elif version < overheads.load().hybrid_kv_since or memory.runs_v0(version):
        out.append(finding(
            WARNING, "hybrid-state-not-modelled", ("runtime", "vllm_version"),
            f"vLLM {spec.runtime.vllm_version} keeps the Mamba / linear-attention state of {facts.id} in a separate "
            "cache of max_num_seqs slots, which the planner does not model: its KV cache is planned as 0.10+ lays "
            "it out (state pages in the KV cache pool)",
            "plan with runtime.vllm_version 0.10 or later, or compare with the engine's startup log",
        ))
    if any(server.lora is not None for server in spec.servers):
        out.append(finding(
            INFO, "hybrid-lora-not-modelled", ("base_model", "id"),
            "LoRA buffers are sized as for an attention + MLP decoder on every layer; vLLM wraps the state "
            "layers' projections differently (not modelled)",
            "compare the LoRA term with the engine's startup log",
        ))
    return out


def lora_residency_findings(spec: spec_models.FleetSpec) -> list[Diagnostic]:
    """What vLLM really holds in its adapter caches (issue #18 item 7), read in the 0.32 and 0.33
    wheels, vllm/entrypoints/openai/models/serving.py OpenAIServingModels:
    - unload_lora_adapter only deletes the name from `lora_requests`; it never calls the engine's
      remove_lora, so the adapter keeps its CPU-cache entry (and its GPU slot until another adapter
      needs it) until LRU eviction (vllm-project/vllm#54839);
    - load_lora_adapter reuses the name's lora_int_id only while the name is still registered
      (an in-place reload); a name loaded again after an unload gets a new id from
      lora_id_counter, so the old id's cache entry and the new one both count;
    - fleetspec loads a new version before it unloads the old one (reconcile/apply.py), so during a
      switch requests for the old version still run on its slot while the new one takes another.
    The spec checks count pinned specialists against max_loras; these findings count what a
    fleet's versions and switches make vLLM hold."""
    out = []
    for j, server in enumerate(spec.servers):
        if server.lora is None:
            continue
        hosted = spec.hosted_by(server)
        names = sum(len(s.all_versions) for s in hosted)
        cpu = server.lora.max_cpu_loras or server.lora.max_loras
        if names > cpu and names > len(hosted):  # the excess comes from versions replaced or kept
            out.append(finding(
                INFO, "lora-cache-holds-unloaded", ("servers", j, "lora", "max_cpu_loras"),
                f"server `{server.name}` can load {names} adapter versions over time but caches {cpu}; vLLM's "
                "unload does not free a cached adapter (vllm-project/vllm#54839), so unloaded versions stay "
                "until LRU eviction and an idle preloaded adapter can be evicted first and reloaded from disk "
                "on its next request",
                f"raise servers[{j}].lora.max_cpu_loras to {names}, or keep fewer versions deployable",
            ))
        pinned = [s for s in hosted if s.pinned]
        switching = [s.name for s in pinned if len(s.all_versions) > 1]
        if switching and len(pinned) + 1 > server.lora.max_loras:
            out.append(finding(
                WARNING, "pinned-switch-needs-a-slot", ("servers", j, "lora", "max_loras"),
                f"server `{server.name}` has {len(pinned)} pinned specialist(s) in {server.lora.max_loras} GPU "
                f"slot(s); switching the version of {switching[0]} loads the new version (a new lora_int_id) "
                "while requests on the old one still hold its slot, so for that moment vLLM needs "
                f"{len(pinned) + 1} slots and a pinned specialist is not resident",
                f"raise servers[{j}].lora.max_loras to {len(pinned) + 1}",
            ))
    return out


def architecture_findings(facts: catalog_models.ModelFacts) -> list[Diagnostic]:
    """What the planner took from the architecture and what it could not model, said in the plan
    (issue #18 items 3 and 4)."""
    out = []
    if facts.matched_by_name:
        quantized = (f", with its linear layers in {facts.checkpoint_quantization}"
                     if facts.checkpoint_quantization != "none" else "")
        out.append(finding(
            INFO, "model-matched-by-name", ("base_model", "id"),
            f"`{facts.id}` is not in the catalog; its name says it re-publishes `{facts.matched_by_name}`, "
            f"so it is planned with that model's shapes{quantized}",
            "if the checkpoint is a different architecture, copy its config.json numbers into "
            "base_model.architecture (they win over the catalog)",
        ))
    counts = memory.parameter_counts(facts)
    published, derived = counts["published"], counts["derived"]
    if published and derived and abs(published - derived) / published > 0.02:
        used = "used" if counts["layer_scale"] != 1.0 else "ignored (catalog guard: more than 25 % from the shapes)"
        out.append(finding(
            INFO, "parameter-count-differs", ("base_model", "architecture", "num_parameters"),
            f"the published count is {published / 1e9:.3f} B parameters, the shapes give {derived / 1e9:.3f} B; "
            f"the published count is {used} (decoder layers scaled ×{counts['layer_scale']:.3f})",
            "if the shapes miss something, say it in base_model.architecture: `mlp: plain` for a two-matrix "
            "fc1/fc2 MLP, n_shared_experts / shared_expert_intermediate_size, first_k_dense_replace, vision_config",
        ))
    if facts.window_layers_unknown:
        out.append(finding(
            INFO, "sliding-window-layers-unknown", ("base_model", "architecture", "sliding_window"),
            f"config.json gives sliding_window {facts.architecture.sliding_window} but not which layers use it, and "
            f"fleetspec does not know the `{facts.family}` family: every layer is planned as full attention "
            "(more KV per request than a windowed layer needs)",
            "copy layer_types (or sliding_window_pattern) from config.json into base_model.architecture",
        ))
    if facts.architecture.vision_config is not None:
        out.append(finding(
            INFO, "vision-encoder-profile-not-modelled", ("base_model", "architecture", "vision_config"),
            "the vision tower's weights are counted, but the activation of vLLM's dummy multimodal profile run "
            "(encoder cache, dummy images) is modelled only for the V0 engine and the Qwen2-VL family's dummy "
            "data: elsewhere the KV cache may come out smaller than planned",
            "compare with the engine's startup log, or set limit_mm_per_prompt low in extra_args",
        ))
    return out


def version_scope_finding(version: str) -> Diagnostic | None:
    """Say how far the memory model's constants are from the release the fleet names: they were
    measured on vLLM 0.19 (overheads.yaml); V0 (< 0.8) and releases outside 0.6-0.34 are extrapolated."""
    v = tuple(int(p) for p in version.split("."))
    low, high = memory.MODELLED_RELEASES
    if low <= v[:2] <= high and memory.warms_up_sampler_after_kv(v):  # a V1 release
        return None
    if not low <= v[:2] <= high:
        what = (f"vLLM {version} is outside the releases the memory model follows "
                f"({low[0]}.{low[1]} to {high[0]}.{high[1]}); every measured term is extrapolated")
    else:
        what = (f"vLLM {version} runs the V0 engine: weights, KV bytes, batch defaults and the profile run's peak "
                "follow its code, but the sampler's share, non-torch and CUDA-graph sizes are extrapolated from "
                "later releases' measurements")
    return finding(INFO, "memory-model-extrapolated", ("runtime", "vllm_version"), what,
                   "compare `plan` with the engine's own startup log (bench/score_startup_logs.py) before relying on "
                   "the last GiB")


def _tensor_parallel(facts, server, i, spec) -> list[Diagnostic]:
    tp = server.tensor_parallel_size
    method = spec.base_model.quantization if spec.base_model.quantization != "none" else facts.checkpoint_quantization
    group = spec.base_model.quantization_group_size or facts.checkpoint_group_size
    problems = fixes.tensor_parallel_problems(facts, tp, method, group)
    if not problems:
        return []
    valid = fixes.valid_tensor_parallel_sizes(facts, method, group)
    lower = [v for v in valid if v < tp][-1:]
    higher = [v for v in valid if v > tp][:1]
    options = " or ".join(map(str, lower + higher)) or "1"
    code = "heads-not-divisible-by-tp" if facts.architecture.num_attention_heads % tp else "tp-does-not-divide-model"
    return [finding(
        ERROR, code, ("servers", i, "tensor_parallel_size"),
        f"tensor_parallel_size {tp} does not split `{facts.id}`: " + "; ".join(problems) + "; vLLM refuses to start",
        f"use tensor_parallel_size {options}",
    )]


def _parallel_shape(facts, server, i, spec) -> list[Diagnostic]:
    """Pipeline splits, data and expert parallel as vLLM checks or silently ignores them."""
    out = []
    layers = facts.architecture.num_hidden_layers
    split = server.layer_partition
    if split is not None and sum(split) != layers:
        out.append(finding(
            ERROR, "layer-split-does-not-add-up", ("servers", i, "pipeline_stages"),
            f"the pipeline_stages of `{server.name}` hold {sum(split)} layers in all, but `{facts.id}` has {layers}; "
            "vLLM refuses to start (get_pp_indices: sum(partitions) does not match num_hidden_layers)",
            f"make the stages' layers add up to {layers}",
        ))
    elif server.pipeline_parallel_size > layers:
        out.append(finding(
            ERROR, "more-stages-than-layers", ("servers", i, "pipeline_parallel_size"),
            f"pipeline_parallel_size {server.pipeline_parallel_size} is more stages than the {layers} layers of "
            f"`{facts.id}`", f"use pipeline_parallel_size {layers} or fewer"))
    if server.expert_parallel and not facts.is_moe:
        out.append(finding(
            WARNING, "expert-parallel-without-experts", ("servers", i, "expert_parallel"),
            f"`{facts.id}` has no MoE experts, so expert_parallel changes nothing", "remove expert_parallel"))
    elif server.expert_parallel and server.tensor_parallel_size * server.data_parallel_size == 1:
        out.append(finding(
            WARNING, "expert-parallel-on-one-gpu", ("servers", i, "expert_parallel"),
            "expert_parallel spreads experts over data x tensor parallel GPUs, and this server has one per stage, "
            "so vLLM ignores it (FusedMoEParallelConfig: use_ep needs dp x tp > 1)",
            "raise tensor_parallel_size or data_parallel_size, or remove expert_parallel"))
    uses_ep = server.expert_parallel and facts.is_moe and server.tensor_parallel_size * server.data_parallel_size > 1
    version = derived.vllm_version_tuple(spec.runtime.vllm_version)
    if uses_ep and server.lora is not None and server.lora.fully_sharded and version >= (0, 32):
        out.append(finding(
            ERROR, "fully-sharded-lora-with-expert-parallel", ("servers", i, "lora", "fully_sharded"),
            "vLLM refuses MoE LoRA with expert parallel and fully sharded LoRA together: both split over the same "
            "GPUs (FusedMoEWithLoRA._verify_ep_fs, vllm/lora/layers/fused_moe.py of 0.32)",
            "set lora.fully_sharded: false, or remove expert_parallel"))
    if server.mixed_gpu_types and spec.runtime.target != "local":
        out.append(finding(
            WARNING, "mixed-stage-gpus-in-container", ("servers", i, "pipeline_stages"),
            f"`{server.name}` puts pipeline stages on different GPU types, and inside a container CUDA numbers the "
            "GPUs it sees fastest first, not in the order fleetspec placed them, so a stage may land on the other "
            "type", "run this server on the bare host (runtime.target: local), or check the engine's log for "
            "which GPU each stage loaded on"))
    return out


def _unmodelled_extra_args(server, i) -> list[Diagnostic]:
    """A plan must say what it does not model: extra_args that change vLLM's memory outside its terms."""
    out = []
    for position, word in enumerate(server.extra_args):
        name = vllm_flags.flag_name(word)
        what = vllm_flags.UNMODELLED_MEMORY_FLAGS.get(name or "")
        if what is not None:
            out.append(finding(
                WARNING, "extra-arg-not-modelled", ("servers", i, "extra_args", position),
                f"{name} changes {what}, which the plan does not model; the engine's KV cache may differ from "
                "the plan's", "compare `plan` with the engine's startup log (bench/score_startup_logs.py) "
                "before relying on the last GiB"))
    return out


def _lora_support(facts, server, i) -> list[Diagnostic]:
    if server.lora is None:
        return []
    if not facts.lora_supported:
        return [finding(ERROR, "lora-unsupported", ("servers", i, "lora"),
                        f"vLLM does not support LoRA adapters on {facts.architecture.architectures or [facts.family]}",
                        "remove `lora:` from this server, or serve a base model whose architecture supports LoRA")]
    if facts.embedding_lora and facts.architecture.vocab_size > MAX_LORA_VOCAB:
        return [finding(ERROR, "vocab-too-large-for-lora", ("servers", i, "lora"),
                        f"with LoRA, vLLM requires a vocabulary of at most {MAX_LORA_VOCAB} tokens; "
                        f"this model has {facts.architecture.vocab_size}",
                        "restrict lora.target_modules to the attention and MLP projections")]
    return []


def _context_limit(spec, facts, server, i) -> list[Diagnostic]:
    length = spec.max_model_len_of(server)
    limit = facts.max_position_embeddings
    if length is None:
        if limit is None:
            return [finding(ERROR, "max-model-len-unknown", ("base_model", "max_model_len"),
                            "neither the fleet file nor the model's config says how long a request may be",
                            "set base_model.max_model_len (for example 8192)")]
        return []
    if limit is not None and length > limit:
        where = ("servers", i, "max_model_len") if server.max_model_len else ("base_model", "max_model_len")
        return [finding(ERROR, "max-model-len-above-model-limit", where,
                        f"max_model_len {length} is longer than the {limit} tokens `{facts.id}` was trained for; "
                        "vLLM refuses it",
                        f"lower max_model_len to {limit}")]
    return []


# ---------------------------------------------------------------------------------------------
# Memory


def _length_path(spec, server, i) -> tuple:
    if server.max_model_len is not None:
        return ("servers", i, "max_model_len")
    if spec.base_model.max_model_len is not None:
        return ("base_model", "max_model_len")
    return ("servers", i, "max_model_len")


def memory_findings(spec: spec_models.FleetSpec, i: int, facts: catalog_models.ModelFacts,
                    s: engine.EngineSettings, gpu: catalog_gpus.GpuFacts, b: budget.GpuBudget,
                    gpus_available: int, adapters: tuple[set[str] | None, int | None]) -> list[Diagnostic]:
    """`adapters`: (modules every hosted adapter trains, largest hosted rank), None when unknown."""
    server = spec.servers[i]
    on = f"one {gpu.type} ({gib(gpu.total_bytes)})"
    if b.stage is not None:
        on = (f"pipeline stage {b.stage.index} (layers {b.stage.start}-{b.stage.start + b.stage.layers - 1}) "
              f"on {on}")
    if b.fits:
        return []
    if b.kv_ceiling is not None and b.kv_cache > b.kv_ceiling:
        # A ceiling is set only by --num-gpu-blocks-override (budget.fixed_kv_cache).
        position, _ = vllm_flags.extra_arg_value(server.extra_args, "--num-gpu-blocks-override")
        largest = int(b.kv_ceiling // (b.kv_cache / s.num_gpu_blocks_override))
        return [finding(
            ERROR, "kv-blocks-override-too-large", ("servers", i, "extra_args", position),
            f"--num-gpu-blocks-override {s.num_gpu_blocks_override} asks for {gib(b.kv_cache)} of KV cache on {on}, "
            f"which has {gib(max(b.kv_ceiling, 0))} left beside the weights, activations and overheads; vLLM "
            "allocates the blocks anyway and runs out of memory at startup",
            f"lower it to {largest} blocks or fewer, or remove it and let the budget size the cache"
            if largest > 0 else "remove it: this GPU has no room left for the KV cache",
        )]
    options = _options(facts, s, gpu, b, gpus_available,
                       adapters, server.replicas)
    if b.kv_cache <= 0:
        lora = b.lora if b.lora_in_budget else 0  # V0 0.7 sizes its KV cache without them
        used = b.weights + lora + b.activation + b.non_torch + (b.cudagraph if b.cudagraph_in_budget else 0)
        path = ("servers", i, "lora", "max_loras") if server.lora else ("servers", i, "tensor_parallel_size")
        return [finding(
            ERROR, "no-room-for-kv-cache", path,
            f"`{server.name}` does not fit on {on}: weights {gib(b.weights)}, LoRA buffers {gib(b.lora)}, "
            f"activations {gib(b.activation)} and overheads {gib(used - b.weights - lora - b.activation)} "
            f"take {gib(used)} of the {gib(b.budget)} budget per GPU and leave nothing for the KV cache",
            _join(options) or "use a larger GPU, a quantized checkpoint, or more tensor parallelism",
        )]
    return [finding(
        ERROR, "kv-cache-too-small", _length_path(spec, server, i),
        f"max_model_len {s.max_model_len} needs {gib(b.request_bytes)} of KV cache per GPU, "
        f"{gib(b.kv_cache)} is left on {on}",
        _join(options) or "use a larger GPU or more tensor parallelism",
    )]


def _options(facts, s, gpu, b, gpus_available, adapters, replicas) -> list[str]:
    adapter_modules, largest_rank = adapters
    options = []
    length = fixes.shorter_model_len(facts, s, gpu, b)
    if length:
        options.append(f"lower max_model_len to {length}")
    util = fixes.higher_utilization(facts, s, gpu, b)
    if util:
        options.append(f"raise gpu_memory_utilization to {util:.2f}")
    rank = fixes.smaller_rank(facts, s, gpu, largest_rank)
    if rank:
        options.append(f"lower lora.max_lora_rank to {rank} (your largest adapter's rank)")
    loras = fixes.fewer_loras(facts, s, gpu, b)
    if loras:
        options.append(f"lower lora.max_loras to {loras}")
    narrowed = fixes.narrower_targets(facts, s, adapter_modules)
    if narrowed and fixes.fits(facts, s.replace(lora=s.lora.model_copy(update={"target_modules": narrowed[0]})), gpu):
        options.append(f"set lora.target_modules to [{', '.join(narrowed[0])}] (all your adapters train only those)")
    tp = fixes.more_tensor_parallel(facts, s, gpu, gpus_available, replicas)
    if tp:
        options.append(f"raise tensor_parallel_size to {tp}")
    if fixes.eager_fits(facts, s, gpu, b):
        options.append(f"set enforce_eager: true (frees {gib(b.cudagraph)} of CUDA graphs; decoding gets slower)")
    return options


def _join(options: list[str]) -> str:
    if len(options) <= 1:
        return "".join(options)
    return ", ".join(options[:-1]) + " or " + options[-1]


def rank_finding(i: int, facts: catalog_models.ModelFacts, s: engine.EngineSettings,
                 largest_rank: int | None) -> Diagnostic | None:
    """max_lora_rank above every hosted adapter's rank wastes every slot's padding."""
    if s.lora is None or largest_rank is None:
        return None
    needed = fixes.smallest_rank(largest_rank)
    if needed >= s.lora.max_lora_rank:
        return None
    current = budget.lora_buffer_bytes(facts, s)
    smaller = budget.lora_buffer_bytes(facts, s.replace(lora=s.lora.model_copy(update={"max_lora_rank": needed})))
    return finding(
        WARNING, "max-lora-rank-above-adapters", ("servers", i, "lora", "max_lora_rank"),
        f"max_lora_rank {s.lora.max_lora_rank} but your largest adapter is rank {largest_rank}",
        f"set max_lora_rank to {needed} and free {gib(current - smaller)} per GPU",
    )


def targets_finding(i: int, facts: catalog_models.ModelFacts, s: engine.EngineSettings,
                    adapter_modules: set[str] | None) -> Diagnostic | None:
    narrowed = fixes.narrower_targets(facts, s, adapter_modules)
    if narrowed is None or narrowed[1] < GIB // 10:
        return None
    return finding(
        INFO, "lora-buffers-for-untrained-modules", ("servers", i, "lora", "target_modules"),
        "vLLM gives every slot buffers on all projections, but your adapters train only "
        + ", ".join(narrowed[0]),
        f"set lora.target_modules to [{', '.join(narrowed[0])}] and free {gib(narrowed[1])} per GPU",
    )


def seed_formula_finding(i: int, facts: catalog_models.ModelFacts, s: engine.EngineSettings) -> Diagnostic | None:
    """Users compare with the seeds' 2 × rank × hidden × layers × modules × bytes; show both."""
    if s.lora is None:
        return None
    real = budget.lora_buffer_bytes(facts, s)
    modules = s.lora.target_modules
    simple = s.lora.max_loras * memory.seed_adapter_bytes(facts, s.lora.max_lora_rank, s.lora_dtype_bytes, modules)
    if simple and abs(real - simple) / simple < 0.2:
        return None
    return finding(
        INFO, "lora-preallocation", ("servers", i, "lora"),
        f"vLLM preallocates {gib(real)} per GPU for {s.lora.max_loras} LoRA slots at rank {s.lora.max_lora_rank}; "
        f"the simple formula 2 × rank × hidden × layers × modules × bytes gives {gib(simple)}",
        "the plan uses vLLM's number: every slot gets buffers at max_lora_rank on every wrapped module "
        "(all projections unless lora.target_modules narrows them), whether or not an adapter is loaded",
    )


def headroom_finding(gpu_id: int, gpu: catalog_gpus.GpuFacts, used_fraction: float, outside: int,
                     server_index: int) -> Diagnostic | None:
    """vLLM refuses to start when the memory left outside the budgets cannot hold the CUDA context."""
    free = gpu.total_bytes * (1 - used_fraction)
    if free + 1 >= outside:
        return None
    ceiling = math.floor((1 - outside / gpu.total_bytes) * 100) / 100
    if gpu.host:
        return finding(
            ERROR, "no-headroom-outside-budget", ("servers", server_index, "gpu_memory_utilization"),
            f"the `cpu` host's {gib(gpu.total_bytes)} is booked to {used_fraction:.2f} for the engines' workers, "
            f"leaving {gib(free)} for their API server and engine core processes, which need {gib(outside)}; "
            "the host would run out of memory",
            f"keep the gpu_memory_utilization of the replicas on this host at {ceiling:.2f} or less in total, "
            "or give the host more memory_gib if it has it",
        )
    return finding(
        ERROR, "no-headroom-outside-budget", ("servers", server_index, "gpu_memory_utilization"),
        f"GPU {gpu_id} ({gpu.type}) is booked to {used_fraction:.2f} of its memory, leaving {gib(free)} for "
        f"the CUDA context and graphs that need {gib(outside)}; vLLM stops with \"Free memory on device "
        "... is less than desired GPU memory utilization\"",
        f"keep the gpu_memory_utilization of the replicas on this GPU at {ceiling:.2f} or less in total",
    )


def warmup_finding(gpu_id: int, gpu: catalog_gpus.GpuFacts, used_fraction: float, resident_outside: int,
                   replicas: list[tuple[int, budget.GpuBudget]]) -> Diagnostic | None:
    """After the KV cache is allocated vLLM captures CUDA graphs (outside the budget before 0.21) and,
    on the V1 engine, warms the sampler up over max_num_seqs rows; both need memory the budget does
    not hold, so a replica that sized its KV cache can still die here (Worker.compile_or_warm_up_model,
    GPUModelRunner._dummy_sampler_run: "CUDA out of memory occurred when warming up sampler")."""
    free = gpu.total_bytes * (1 - used_fraction) - resident_outside
    worst_index, worst = max(replicas, key=lambda r: r[1].sampler_warmup - r[1].activation)
    # The replica warming up gets back the activation peak its budget reserved for the profile run.
    missing = worst.sampler_warmup - worst.activation - free
    graphs = resident_outside - sum(b.cuda_context for _, b in replicas)
    if missing <= 0 or (worst.sampler_warmup == 0 and graphs <= 0):
        return None
    step = "warming up the sampler" if worst.sampler_warmup else "capturing CUDA graphs"
    return finding(
        ERROR, "fails-after-kv-cache-allocation", ("servers", worst_index, "gpu_memory_utilization"),
        f"GPU {gpu_id} ({gpu.type}) sizes its KV cache, then runs out of memory {step}: the CUDA context and "
        f"graphs outside the budget ({gib(resident_outside)}) and the sampler warm-up over max_num_seqs rows "
        f"({gib(worst.sampler_warmup)}) need {gib(missing)} more than the {gib(gpu.total_bytes * (1 - used_fraction))} "
        "left outside the budgets plus the activation room the profile run reserved",
        "lower gpu_memory_utilization or max_num_seqs, or set enforce_eager (no CUDA graphs)",
    )


def bnb_skip_finding(s: engine.EngineSettings) -> Diagnostic | None:
    """Dotted bitsandbytes skip entries on a release that does not match them (planner/bnb.py)."""
    from fleetspec.planner import bnb

    if s.quantization != "bitsandbytes":
        return None
    entries = bnb.stock_cannot_load(s.bnb_checkpoint, s.vllm_version)
    if not entries:
        return None
    release = ".".join(map(str, s.vllm_version))
    return finding(
        WARNING, "bnb-skip-modules-not-matched", ("base_model", "quantization_skip_modules"),
        f"vLLM {release} matches llm_int8_skip_modules by single name only (is_layer_skipped_bnb before 0.7.3), "
        f"so {', '.join(entries[:3])}{' ...' if len(entries) > 3 else ''} get 4-bit parameters and stock vLLM "
        "cannot load their 16-bit tensors; the plan sizes them in 16 bit, as a patched vLLM (Unsloth) holds them",
        "use vLLM 0.7.3 or later for a checkpoint that keeps single layers unquantized",
    )


def quantization_finding(s: engine.EngineSettings) -> Diagnostic | None:
    from fleetspec.catalog import quantization

    cost = quantization.weight_cost(s.quantization, s.group_size, s.dtype_bytes)
    if not cost.estimated:
        return None
    per_weight = cost.bytes_per_weight
    if s.quantization == "bitsandbytes":
        from fleetspec.planner import bnb

        per_weight = bnb.bytes_per_weight(s.vllm_version, s.bnb_checkpoint)
    return finding(
        INFO, "quantization-size-estimated", ("base_model", "quantization"),
        f"the in-memory size of `{s.quantization}` weights depends on the checkpoint; "
        f"the plan assumes {per_weight:.3f} bytes per weight",
        "check the first replica's \"Model loading took ... GiB\" log line against the plan",
    )
