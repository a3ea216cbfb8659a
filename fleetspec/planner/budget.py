"""One GPU's budget for one replica: every term of DESIGN.md §4 added up, and what is left for KV."""

from __future__ import annotations

import dataclasses

from fleetspec.catalog import gpus as catalog_gpus
from fleetspec.catalog import models as catalog_models
from fleetspec.catalog import overheads
from fleetspec.planner import engine, explain, memory, nontorch

GIB = 1 << 30


@dataclasses.dataclass(frozen=True)
class GpuBudget:
    total: int
    budget: int  # ceil(total × gpu_memory_utilization)
    weights: int
    lora: int
    activation: int
    non_torch: int
    cudagraph: int
    cudagraph_in_budget: bool  # vLLM ≥ 0.21 subtracts graphs from the KV budget
    cuda_context: int  # outside the budget; must fit in total − budget
    kv_cache: int  # budget minus everything above; negative when it does not even load
    kv_bytes_per_token: float
    kv_tokens: int
    request_bytes: float  # KV one request of max_model_len needs
    max_model_len: int
    largest_model_len: int  # longest max_model_len that would fit
    max_concurrency: float
    host: bool = False  # vLLM's CPU build: every term is host RAM; cuda_context holds its side processes
    # V1's sampler warm-up after the KV cache is allocated (0 on V0 and on the CPU build), and the
    # GPU memory free when it runs with this replica alone on its GPUs (memory.warmup_free_bytes).
    sampler_warmup: int = 0
    warmup_free: int = 0
    # KV cache groups (memory.KvLayout): the kind of each group and the layers per group.
    kv_groups: tuple[str, ...] = ("full",)
    kv_group_size: int = 0
    # Per term: its source and confidence (planner.explain), for `plan --explain` and the JSON.
    terms: tuple = ()
    # Pipeline parallel: this budget is the binding stage's (`stage`), every stage's own budget is in
    # `stages`, and kv_tokens is the replica's: the fewest blocks of any stage.
    stage: memory.Stage | None = None
    stage_gpu: str | None = None
    stages: tuple[GpuBudget, ...] = ()
    # What non_torch is made of (planner.nontorch), and how sure that is.
    non_torch_parts: tuple[tuple[str, int], ...] = ()
    non_torch_confidence: str = "measured"
    # When extra_args fix the KV cache's size (fixed_kv_cache): the most the GPU could still hold
    # beside everything else. vLLM allocates the fixed size anyway and runs out of memory above it.
    kv_ceiling: int | None = None
    # V0 and Mamba / hybrid models: the MambaCacheManager's states, allocated in the profile run and
    # kept (memory.v0_state_cache_bytes); part of the non-KV memory.
    state_cache: int = 0
    # What vLLM's "Model loading took X" line measures: the weights, plus the LoRA buffers where the
    # manager is built inside load_model's profiler (V1; V0 from 0.8.0: memory.lora_in_weights_line).
    # The scorer compares it with that line; `lora` stays its own term, counted once in the total.
    weights_line: int = 0
    # False on V0 0.7.x, whose KV sizing counts the LoRA buffers in no term: they sit beyond the budget
    # (memory.lora_in_kv_budget).
    lora_in_budget: bool = True

    @property
    def warmup_fits(self) -> bool:
        return self.sampler_warmup <= self.warmup_free

    @property
    def fits(self) -> bool:
        within = self.kv_ceiling is None or self.kv_cache <= self.kv_ceiling
        return self.kv_cache > 0 and self.request_bytes <= self.kv_cache and within

    @property
    def resident_outside(self) -> int:
        """Allocated beyond the budget once the engine runs, beside the CUDA context: the CUDA graphs
        before vLLM 0.21 and, on V0 0.7.x, the LoRA buffers."""
        return (0 if self.cudagraph_in_budget else self.cudagraph) + (0 if self.lora_in_budget else self.lora)

    @property
    def non_kv(self) -> int:
        return self.budget - self.kv_cache

    def to_json(self) -> dict:
        def gib(value: float) -> float:
            return round(value / GIB, 2)

        return {
            "total_gib": gib(self.total), "budget_gib": gib(self.budget), "weights_gib": gib(self.weights),
            "weights_line_gib": gib(self.weights_line), "lora_gib": gib(self.lora),
            "lora_in_budget": self.lora_in_budget, "activation_gib": gib(self.activation),
            "non_torch_gib": gib(self.non_torch), "cudagraph_gib": gib(self.cudagraph),
            "kv_cache_gib": gib(max(self.kv_cache, 0)), "cuda_context_gib": gib(self.cuda_context),
            "cudagraph_in_budget": self.cudagraph_in_budget,
            "kv_bytes_per_token": round(self.kv_bytes_per_token, 2),
            "sampler_warmup_gib": gib(self.sampler_warmup), "warmup_free_gib": gib(self.warmup_free),
            **({"state_cache_gib": gib(self.state_cache)} if self.state_cache else {}),
            "kv_cache_groups": {"kinds": list(self.kv_groups), "layers_per_group": self.kv_group_size},
            "terms": [t.to_json() for t in self.terms],
            "memory": "host" if self.host else "gpu",
            **({"pipeline_stages": [b.stage_json() for b in self.stages], "binding_stage": self.stage.index}
               if self.stages and self.stage is not None else {}),
        }

    def stage_json(self) -> dict:
        gib = lambda value: round(value / GIB, 2)  # noqa: E731
        st = self.stage
        return {"stage": st.index, "layers": st.layers, "first_layer": st.start, "gpu_type": self.stage_gpu,
                "total_gib": gib(self.total), "weights_gib": gib(self.weights), "lora_gib": gib(self.lora),
                "kv_cache_gib": gib(max(self.kv_cache, 0)), "kv_tokens": self.kv_tokens,
                "sampler_warmup_gib": gib(self.sampler_warmup), "fits": self.fits and self.warmup_fits}


def lora_buffer_bytes(facts: catalog_models.ModelFacts, s: engine.EngineSettings,
                      stage: memory.Stage | None = None) -> int:
    if s.lora is None:
        return 0
    return memory.lora_bytes(
        facts, s.tensor_parallel_size, s.pipeline_parallel_size, s.lora.max_loras, s.lora.max_lora_rank,
        s.lora_dtype_bytes, s.lora.target_modules, s.lora.fully_sharded, stage=stage, shard=expert_shard(s),
        vllm_version=s.vllm_version,
    )


def expert_shard(s: engine.EngineSettings) -> memory.ExpertShard:
    return memory.ExpertShard.of(s.tensor_parallel_size, s.data_parallel_size, s.expert_parallel)


def stages_of(facts: catalog_models.ModelFacts, s: engine.EngineSettings) -> tuple[memory.Stage, ...]:
    layers = facts.architecture.num_hidden_layers
    split = s.layer_partition
    if split is not None and sum(split) != layers:
        split = None  # vLLM refuses it (findings says so); plan the default split meanwhile
    return memory.pipeline_stages(layers, s.pipeline_parallel_size, split)


def _stage_shape(facts: catalog_models.ModelFacts, stage: memory.Stage) -> tuple:
    """What a stage's budget depends on: two stages of one shape have the same budget, so a
    pipeline of a thousand stages costs a handful of budgets."""
    kinds = facts.layer_kinds[stage.start:stage.start + stage.layers] if facts.layer_kinds else ()
    dense, _ = memory.dense_and_moe_layers(facts, stage.layers, stage.start)
    mixers = facts.mixers[stage.start:stage.start + stage.layers]
    hybrid = tuple(mixers.count(m) for m in ("attention", "mamba2", "gdn", "")) if mixers else ()
    return stage.layers, stage.first, stage.last, kinds.count("sliding"), kinds.count("mamba"), hybrid, dense


def compute(facts: catalog_models.ModelFacts, s: engine.EngineSettings, total: int,
            stage_gpus: tuple[catalog_gpus.GpuFacts, ...] | None = None) -> GpuBudget:
    """The per-GPU budget of one replica with these settings on GPUs of `total` bytes (or, for a
    pipeline whose stages sit on different GPUs, `stage_gpus`, one per stage).

    Pipeline parallel: every stage is its own budget (its layers; the embedding on the first, the
    lm_head on the last), each worker sizes its KV cache from its own free memory, and the engine
    gives every worker the fewest blocks any of them can hold (get_kv_cache_configs,
    vllm/v1/core/kv_cache_utils.py of 0.32: "change the num_blocks of each worker to the smallest").
    Data parallel ranks are copies: the budget is per GPU, whatever the rank.

    On vLLM's CPU build the same terms live in host RAM: the worker process holds weights, LoRA
    buffers, activations and the KV cache over its own base; the API server and engine core
    processes stand outside the budget where the CUDA context does on a GPU; there are no graphs."""
    if s.pipeline_parallel_size == 1:
        return _stage_budget(facts, s, total, None)
    budgets, shapes = [], {}
    for stage in stages_of(facts, s):
        gpu = stage_gpus[stage.index] if stage_gpus else None
        key = (_stage_shape(facts, stage), gpu)
        if key not in shapes:
            settings = s.replace(compute_capability=gpu.compute_capability) if gpu else s
            shapes[key] = _stage_budget(facts, settings, gpu.total_bytes if gpu else total, stage)
        budgets.append(dataclasses.replace(shapes[key], stage=stage, stage_gpu=gpu.type if gpu else None))
    # The stage that does not fit (its KV cache, or the sampler warm-up on the last), else the one
    # with the fewest tokens, speaks for the replica.
    binding = min(budgets, key=lambda b: (b.fits and b.warmup_fits, b.kv_tokens))
    tokens = min(b.kv_tokens for b in budgets)
    return dataclasses.replace(binding, kv_tokens=tokens, stages=tuple(budgets),
                               max_concurrency=min(b.max_concurrency for b in budgets))


def fixed_kv_cache(s: engine.EngineSettings, layout: memory.KvLayout, profiled: int,
                   free: int) -> tuple[int, int | None]:
    """(KV cache bytes, ceiling) when --num-gpu-blocks-override fixes the KV cache's size, else
    (profiled, None).

    vLLM profiles as usual, then replaces the block count (may_override_num_blocks,
    vllm/v1/core/kv_cache_utils.py of 0.32; V0's CacheConfig.num_gpu_blocks_override likewise) and
    allocates that many blocks whatever the budget says. `free` (the GPU minus the CUDA context,
    weights, LoRA, activation, non-torch and CUDA graphs) is the ceiling above which the engine
    runs out of memory at startup."""
    if s.host or s.num_gpu_blocks_override is None:
        return profiled, None
    return round(s.num_gpu_blocks_override * layout.bytes_per_block), free


def _stage_budget(facts: catalog_models.ModelFacts, s: engine.EngineSettings, total: int,
                  stage: memory.Stage | None) -> GpuBudget:
    tp, pp = s.tensor_parallel_size, s.pipeline_parallel_size
    shard = expert_shard(s)
    budget = memory.budget_bytes(total, s.gpu_memory_utilization)
    weights = memory.weight_bytes(facts, tp, pp, s.dtype_bytes, s.quantization, s.group_size,
                                  compute_capability=s.compute_capability, stage=stage, shard=shard,
                                  vllm_version=s.vllm_version, bnb_checkpoint=s.bnb_checkpoint,
                                  alloc_conf=s.alloc_conf)
    lora = lora_buffer_bytes(facts, s, stage)
    lora_in_budget = memory.lora_in_kv_budget(s.vllm_version, s.v0)
    budget_lora = lora if lora_in_budget else 0
    activation = memory.activation_bytes(facts, s.max_num_batched_tokens, s.max_num_seqs, pp, s.vllm_version,
                                         tp=tp, dtype_bytes=s.dtype_bytes, v0=s.v0,
                                         flashinfer_sampler=s.flashinfer_sampler, max_model_len=s.max_model_len)
    cpu = overheads.load().cpu
    parallel = None if s.host else nontorch.non_torch(
        tp, pp, s.vllm_version, interconnect=s.interconnect, compute_capability=s.compute_capability,
        hidden=facts.architecture.hidden_size, batched_tokens=s.max_num_batched_tokens, dp=s.data_parallel_size,
        v0=s.v0)
    non_torch = cpu.worker_base_bytes if parallel is None else parallel.in_budget
    graphs = 0 if s.host else memory.cudagraph_bytes(
        facts, pp, s.lora is not None, s.enforce_eager, tp=tp, dtype_bytes=s.dtype_bytes,
        max_num_seqs=s.max_num_seqs, batched_tokens=s.max_num_batched_tokens, vllm_version=s.vllm_version,
        stage=stage, v0=s.v0)
    in_budget = memory.cudagraphs_in_budget(s.vllm_version)
    outside = cpu.side_processes_bytes if parallel is None else parallel.outside
    state = 0 if s.host or not s.v0 else memory.v0_state_cache_bytes(
        facts, tp, pp, s.max_num_seqs, s.enforce_eager, s.dtype_bytes, s.vllm_version,
        mamba_ssm_cache_dtype=s.mamba_ssm_cache_dtype, stage=stage)
    kv_cache = budget - weights - budget_lora - activation - state - non_torch - (graphs if in_budget else 0)
    layout = memory.kv_layout(facts, tp, pp, s.kv_bytes, kv_cache_dtype=s.kv_cache_dtype,
                              batched_tokens=s.max_num_batched_tokens, vllm_version=s.vllm_version,
                              host=s.host, block=s.block_size, stage=stage, dtype_bytes=s.dtype_bytes,
                              prefix_caching=s.prefix_caching, mamba_ssm_cache_dtype=s.mamba_ssm_cache_dtype,
                              max_model_len=s.max_model_len, v0=s.v0 and not s.host)
    kv_cache, kv_ceiling = fixed_kv_cache(s, layout, kv_cache,
                                          total - outside - weights - lora - activation - state - non_torch - graphs)
    per_token = layout.bytes_per_token
    request = layout.request_bytes(s.max_model_len)
    # Only the last pipeline stage computes logits, so only it warms up the sampler
    # (Worker.compile_or_warm_up_model: `get_pp_group().is_last_rank`, v1/worker/gpu_worker.py of 0.32).
    last = stage is None or stage.last
    warmup = 0 if s.host or not last or not memory.warms_up_sampler_after_kv(s.vllm_version, s.v0) else \
        memory.sampler_bytes(facts, s.max_num_seqs, s.vllm_version, flashinfer=s.flashinfer_sampler)
    largest = memory.largest_model_len(facts, tp, pp, s.kv_bytes, kv_cache, s.max_num_batched_tokens,
                                       s.kv_cache_dtype, block=s.block_size, layout=layout)
    result = GpuBudget(
        total=total, budget=budget, weights=weights, lora=lora, activation=activation, non_torch=non_torch,
        cudagraph=graphs, cudagraph_in_budget=in_budget, cuda_context=outside, host=s.host,
        kv_cache=kv_cache, kv_bytes_per_token=per_token,
        kv_tokens=layout.tokens(kv_cache, s.max_model_len), kv_groups=layout.groups,
        kv_group_size=layout.group_size,
        request_bytes=request, max_model_len=s.max_model_len, largest_model_len=largest, kv_ceiling=kv_ceiling,
        max_concurrency=max(kv_cache, 0) / request if request else 0.0,
        sampler_warmup=warmup,
        warmup_free=memory.warmup_free_bytes(total, budget, outside, activation, graphs, in_budget)
        - (lora - budget_lora) if kv_ceiling is None else kv_ceiling - kv_cache + activation,
        stage=stage,
        non_torch_parts=parallel.parts if parallel else (("vLLM CPU build worker base", non_torch),),
        non_torch_confidence=parallel.confidence if parallel else "measured",
        state_cache=state,
        weights_line=weights + (lora if memory.lora_in_weights_line(s.vllm_version, s.v0) else 0),
        lora_in_budget=lora_in_budget,
    )
    return dataclasses.replace(result, terms=explain.terms(facts, s, result))
