"""The engine settings a server replica really runs with: the spec's values, else vLLM's defaults
for the pinned vLLM version and the GPU (vllm-facts §1.2, §1.2.1)."""

from __future__ import annotations

import dataclasses

from fleetspec.catalog import gpus as catalog_gpus
from fleetspec.catalog import models as catalog_models
from fleetspec.catalog import overheads, quantization, vllm_flags
from fleetspec.planner import allocator, memory
from fleetspec.spec import derived
from fleetspec.spec import models as spec_models

FALLBACK_MAX_MODEL_LEN = 4096  # only when neither the spec nor config.json says; reported as an error


@dataclasses.dataclass(frozen=True)
class EngineSettings:
    vllm_version: tuple[int, ...]
    tensor_parallel_size: int
    pipeline_parallel_size: int
    gpu_memory_utilization: float
    max_model_len: int
    max_model_len_known: bool
    max_num_seqs: int
    max_num_batched_tokens: int
    enforce_eager: bool
    dtype_bytes: int
    kv_cache_dtype: str
    kv_bytes: float
    quantization: str
    group_size: int | None
    lora: spec_models.LoraLimits | None
    lora_dtype_bytes: int
    host: bool = False  # vLLM's CPU build: host RAM, no CUDA context or graphs, 128-token blocks
    block_size: int = 16
    compute_capability: tuple[int, int] | None = None  # the GPU's, where kernels pad weights differently
    data_parallel_size: int = 1
    expert_parallel: bool = False
    layer_partition: tuple[int, ...] | None = None  # decoder layers per pipeline stage, when the fleet sets it
    interconnect: str = "nvlink"  # between the replica's GPUs (catalog.gpus.GpuFacts.interconnect)
    v0: bool = False  # the V0 engine: before 0.8, and V1's fallback on older GPUs (memory.runs_v0) or for
    # Mamba / hybrid models before 0.10.2 (memory.state_model_runs_v0)
    flashinfer_sampler: bool = False  # V1 samples with FlashInfer's top-k/top-p (memory.flashinfer_samples)
    # --num-gpu-blocks-override in extra_args: the KV cache's block count instead of the budget's.
    # (--kv-cache-memory-bytes is fleetspec's own flag on CPU hosts and refused in extra_args.)
    num_gpu_blocks_override: int | None = None
    # Hybrid Mamba / Gated DeltaNet models: --enable-prefix-caching / --no-enable-prefix-caching and
    # --mamba-ssm-cache-dtype in extra_args (None: the release's default).
    prefix_caching: bool | None = None
    mamba_ssm_cache_dtype: str | None = None
    # bitsandbytes checkpoints: base_model.quantization_skip_modules / bnb_4bit_use_double_quant
    # (planner/bnb.py Checkpoint); None: nothing said.
    bnb_checkpoint: object | None = None
    # The server's PYTORCH_CUDA_ALLOC_CONF as the caching allocator reads it (planner/allocator.py):
    # block rounding in "Model loading took" (e.g. Unsloth's expandable segments and power-of-two
    # divisions).
    alloc_conf: allocator.AllocatorConfig = allocator.DEFAULT

    def replace(self, **changes) -> EngineSettings:
        return dataclasses.replace(self, **changes)


def batch_defaults(gpu: catalog_gpus.GpuFacts, version: tuple[int, ...] = (0, 33)) -> tuple[int, int]:
    """(max_num_batched_tokens, max_num_seqs) `vllm serve` of this release picks for this device
    (overheads.yaml batch_defaults: the ≥ 160 GiB row since 0.28, A100s excluded since 0.9)."""
    if gpu.host:
        row = overheads.load().cpu.batch_default
        return row.max_num_batched_tokens, row.max_num_seqs
    for row in overheads.load().batch_defaults:
        if version < row.since or gpu.total_gib < row.min_memory_gib:
            continue
        if gpu.type in row.excluded_types and version >= row.excluded_since:
            continue
        return row.max_num_batched_tokens, row.max_num_seqs
    last = overheads.load().batch_defaults[-1]
    return last.max_num_batched_tokens, last.max_num_seqs


def v0_batch_defaults(server: spec_models.Server, max_model_len: int) -> tuple[int, int]:
    """(max_num_seqs, max_num_batched_tokens) of the V0 engine (vLLM < 0.8, overheads.yaml
    engine.v0_defaults): no per-device table, and without chunked prefill one step must hold a
    whole max_model_len prompt."""
    d = overheads.load().v0_defaults
    seqs = server.max_num_seqs or d.max_num_seqs
    if server.max_num_batched_tokens:
        return seqs, server.max_num_batched_tokens
    if max_model_len > d.chunked_prefill_above_len:
        return seqs, d.chunked_batched_tokens
    return seqs, max(max_model_len, d.min_batched_tokens)


def model_dtype(base: spec_models.BaseModelSpec, facts: catalog_models.ModelFacts) -> str:
    return facts.default_dtype if base.dtype == "auto" else base.dtype


def settings_for(spec: spec_models.FleetSpec, server: spec_models.Server,
                 facts: catalog_models.ModelFacts, gpu: catalog_gpus.GpuFacts) -> EngineSettings:
    base = spec.base_model
    configured_len = spec.max_model_len_of(server)
    max_model_len = configured_len or facts.max_position_embeddings or FALLBACK_MAX_MODEL_LEN
    version = derived.vllm_version_tuple(spec.runtime.vllm_version)
    default_tokens, default_seqs = batch_defaults(gpu, version)
    max_num_seqs = server.max_num_seqs or default_seqs
    batched = server.max_num_batched_tokens or min(default_tokens, max_num_seqs * max_model_len)
    v0 = not gpu.host and (memory.runs_v0(version, gpu.compute_capability, lora=server.lora is not None,
                                          use_v1_env=server.env.get("VLLM_USE_V1"))
                           or memory.state_model_runs_v0(facts, version, server.env.get("VLLM_USE_V1")))
    if v0:
        # Also V0 as 0.8-0.9's fallback: EngineArgs._set_default_args_v0 (arg_utils.py:1500-1535
        # @0.8.5) keeps chunked prefill off up to 32K, as 0.6/0.7 did.
        max_num_seqs, batched = v0_batch_defaults(server, max_model_len)
    dtype_bytes = quantization.dtype_bytes(model_dtype(base, facts))
    lora_bytes = dtype_bytes
    if server.lora is not None and server.lora.lora_dtype != "auto":
        lora_bytes = quantization.dtype_bytes(server.lora.lora_dtype)
    method = base.quantization if base.quantization != "none" else facts.checkpoint_quantization
    return EngineSettings(
        vllm_version=version,
        tensor_parallel_size=server.tensor_parallel_size,
        pipeline_parallel_size=server.pipeline_parallel_size,
        gpu_memory_utilization=derived.utilization(spec, server),
        max_model_len=max_model_len,
        max_model_len_known=bool(configured_len or facts.max_position_embeddings),
        max_num_seqs=max_num_seqs,
        max_num_batched_tokens=batched,
        enforce_eager=server.enforce_eager,
        dtype_bytes=dtype_bytes,
        kv_cache_dtype=base.kv_cache_dtype,
        kv_bytes=quantization.kv_cache_bytes(base.kv_cache_dtype, dtype_bytes),
        quantization=method,
        group_size=base.quantization_group_size or facts.checkpoint_group_size,
        lora=server.lora,
        lora_dtype_bytes=lora_bytes,
        host=gpu.host,
        block_size=overheads.load().cpu.block_size if gpu.host else
        vllm_flags.block_size(server.extra_args) or overheads.load().block_size,
        compute_capability=gpu.compute_capability,
        data_parallel_size=server.data_parallel_size,
        expert_parallel=server.expert_parallel,
        layer_partition=server.layer_partition,
        interconnect=gpu.interconnect,
        v0=v0,
        flashinfer_sampler=not gpu.host and memory.flashinfer_samples(
            version, flashinfer_installed(spec, version), server.env.get("VLLM_USE_FLASHINFER_SAMPLER"), v0),
        num_gpu_blocks_override=vllm_flags.num_gpu_blocks_override(server.extra_args),
        prefix_caching=vllm_flags.prefix_caching(server.extra_args),
        mamba_ssm_cache_dtype=vllm_flags.mamba_ssm_cache_dtype(server.extra_args),
        bnb_checkpoint=_bnb_checkpoint(base),
        alloc_conf=allocator.AllocatorConfig.parse(server.env.get("PYTORCH_CUDA_ALLOC_CONF")),
    )


def _bnb_checkpoint(base: spec_models.BaseModelSpec):
    """What the fleet says about a bitsandbytes checkpoint's storage (planner/bnb.py)."""
    from fleetspec.planner import bnb

    return bnb.checkpoint_of(base.quantization_skip_modules, base.bnb_4bit_use_double_quant, None)


def flashinfer_installed(spec: spec_models.FleetSpec, version: tuple[int, ...]) -> bool:
    """runtime.flashinfer, else: vLLM's images carry FlashInfer, and pip brings it from 0.14."""
    if spec.runtime.flashinfer is not None:
        return spec.runtime.flashinfer
    since = overheads.load().flashinfer_sampler["pip_dependency_since"]
    return spec.runtime.target in ("docker", "k8s") or version >= derived.vllm_version_tuple(since)
