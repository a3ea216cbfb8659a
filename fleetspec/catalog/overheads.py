"""Calibrated constants of the memory model (`data/overheads.yaml`), as typed values.

The formulas that use them live in `fleetspec.planner.memory`; this module only reads the data so
every measured number stays in one file next to where it was measured.
"""

from __future__ import annotations

import dataclasses
import functools

from fleetspec.catalog import data_files

GIB = 1 << 30


@dataclasses.dataclass(frozen=True)
class BatchDefault:
    min_memory_gib: float
    max_num_batched_tokens: int
    max_num_seqs: int
    excluded_types: tuple[str, ...]
    since: tuple[int, ...] = (0,)  # first vLLM release with this row
    excluded_since: tuple[int, ...] = (0,)  # first release that excludes `excluded_types`


@dataclasses.dataclass(frozen=True)
class SamplerEra:
    since: tuple[int, ...]
    factor: float  # dummy sampler peak ÷ one fp32 logits tensor


@dataclasses.dataclass(frozen=True)
class CaptureEra:
    since: tuple[int, ...]
    style: str  # "doubled_seqs" (min(2 × max_num_seqs, max)), "fixed" (max), "max_num_seqs"
    max_size: int
    step_after_256: int


@dataclasses.dataclass(frozen=True)
class LoraOverheads:
    """Where vLLM's logged figures hold the LoRA buffers, and the pre-0.12 extra vocabulary (overheads.yaml lora)."""

    v0_in_weights_line_since: tuple[int, ...] = (0, 8, 0)  # V0 builds the manager inside load_model's profiler
    v0_uncounted_since: tuple[int, ...] = (0, 7, 0)  # V0 releases whose KV sizing counts no LoRA buffers
    v0_uncounted_until: tuple[int, ...] = (0, 8, 0)
    extra_vocab_size: int = 256  # LoRAConfig.lora_extra_vocab_size default
    vocab_padding: int = 256  # LoRAConfig.lora_vocab_padding_size
    extra_vocab_until: tuple[int, ...] = (0, 12)


@dataclasses.dataclass(frozen=True)
class V0Defaults:
    max_num_seqs: int
    min_batched_tokens: int
    chunked_prefill_above_len: int
    chunked_batched_tokens: int


@dataclasses.dataclass(frozen=True)
class MambaOverheads:
    """How vLLM sizes the state of hybrid attention + Mamba / Gated DeltaNet models (overheads.yaml mamba)."""

    kernel_block_alignment: int
    prefix_caching_since: tuple[int, ...]  # prefix caching (mamba_cache_mode "align") on by default
    prefill_checkpoint_since: tuple[int, ...]  # Mamba2 requests hold one more state block
    config_ssm_dtype_since: tuple[int, ...]  # Qwen3.5's config mamba_ssm_dtype is honoured
    ssm_cache_dtype_defaults: dict[str, tuple[tuple[tuple[int, ...], str], ...]]  # family → eras, newest first
    # Before this release `vllm serve` runs Mamba / hybrid models on V0, whose MambaCacheManager holds
    # max_num_seqs (padded to a V0 capture size: v0_capture_small, then multiples of v0_capture_step) states.
    v0_until: tuple[int, ...] = (0, 10, 2)
    v0_capture_small: tuple[int, ...] = (1, 2, 4)
    v0_capture_step: int = 8

    def default_ssm_dtype(self, family: str, version: tuple[int, ...]) -> str:
        """The ssm state dtype a family's config class picks when nothing sets it ("auto": the model dtype)."""
        eras = self.ssm_cache_dtype_defaults.get(family, ())
        return next((dtype for since, dtype in eras if version >= since), "auto")


@dataclasses.dataclass(frozen=True)
class CpuOverheads:
    worker_base_bytes: int
    side_processes_bytes: int
    block_size: int
    batch_default: BatchDefault


@dataclasses.dataclass(frozen=True)
class Overheads:
    sampler_eras: tuple[SamplerEra, ...]  # newest first
    reference_batched_tokens: int
    activation_base_bytes: dict[str, int]  # "dense" / "moe"
    activation_pp_factor: float
    activation_v0_hidden_copies: int  # hidden-sized tensors alive at V0's forward peak
    non_torch_bytes: dict[str, int]  # single_gpu / tensor_parallel / pipeline_only
    cuda_context_bytes: dict[str, int]
    non_torch_model: dict  # what those are made of by release and link (planner.nontorch)
    flash_attn_splits: int
    cudagraph_piecewise_base_bytes: int
    cudagraph_per_layer_per_graph_bytes: int
    capture_eras: tuple[CaptureEra, ...]  # newest first
    full_and_piecewise_since: tuple[int, ...]
    large_capture_architectures: tuple[str, ...]
    cudagraph_subtracted_since: tuple[int, ...]
    cudagraph_lora_factor: float
    v1_engine_since: tuple[int, ...]
    v0_fallback_below_major: int
    flashinfer_sampler: dict  # activation.flashinfer_sampler
    v0_fallback_until: tuple[int, ...]
    v0_lora_fallback: tuple[tuple[int, ...], tuple[int, ...]]  # [since, until): LoRA falls back to V0
    use_v1_env_until: tuple[int, ...]  # VLLM_USE_V1=0 selects V0 from v1_engine_since until this
    v0_defaults: V0Defaults
    hybrid_kv_since: tuple[int, ...]  # several KV cache groups (the hybrid KV cache manager)
    kv_concurrency_report_since: tuple[int, ...]  # "GPU KV cache size" = max_concurrency × max_model_len
    in_flight_batches_since: tuple[int, ...]
    in_flight_batches: int
    mamba: MambaOverheads
    mxfp4_triton_scales_freed_since: tuple[int, ...]
    block_size: int
    batch_defaults: tuple[BatchDefault, ...]
    cpu: CpuOverheads
    lora: LoraOverheads = LoraOverheads()

    @property
    def sampler_factor(self) -> float:
        """The newest era's factor (the one the activation fit of llmd-v0.19 measured)."""
        return self.sampler_eras[0].factor

    def sampler_factor_for(self, version: tuple[int, ...]) -> float:
        return next(e.factor for e in self.sampler_eras if version >= e.since)

    def capture_era_for(self, version: tuple[int, ...]) -> CaptureEra:
        return next(e for e in self.capture_eras if version >= e.since)


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(p) for p in str(text).split("."))


def _gib(value: float) -> int:
    return round(value * GIB)


def _mib(value: float) -> int:
    return round(value * (1 << 20))


def _mamba(data: dict) -> MambaOverheads:
    return MambaOverheads(
        kernel_block_alignment=data["kernel_block_alignment"],
        prefix_caching_since=_version(data["prefix_caching_since"]),
        prefill_checkpoint_since=_version(data["prefill_checkpoint_since"]),
        config_ssm_dtype_since=_version(data["config_ssm_dtype_since"]),
        v0_until=_version(data["v0_until"]),
        v0_capture_small=tuple(data["v0_capture_sizes"]["small"]),
        v0_capture_step=data["v0_capture_sizes"]["step"],
        ssm_cache_dtype_defaults={
            family: tuple(sorted(((_version(e["since"]), e["dtype"]) for e in eras), reverse=True))
            for family, eras in data["ssm_cache_dtype_defaults"].items()
        },
    )


def _batch_row(row: dict) -> BatchDefault:
    return BatchDefault(
        row["min_memory_gib"], row["max_num_batched_tokens"], row["max_num_seqs"], tuple(row.get("except", ())),
        since=_version(row.get("since", "0")), excluded_since=_version(row.get("except_since", "0")),
    )


@functools.cache
def load() -> Overheads:
    data = data_files.load("overheads")
    act, graphs, cpu = data["activation"], data["cudagraph"], data["cpu"]
    return Overheads(
        sampler_eras=tuple(
            SamplerEra(_version(e["since"]), e["factor"])
            for e in sorted(act["sampler_eras"], key=lambda e: _version(e["since"]), reverse=True)
        ),
        reference_batched_tokens=act["reference_batched_tokens"],
        activation_base_bytes={k: _gib(v) for k, v in act["base_gib"].items()},
        activation_pp_factor=act["pp_factor"],
        activation_v0_hidden_copies=act["v0_forward"]["hidden_copies"],
        non_torch_bytes={k: _gib(v) for k, v in data["non_torch_gib"].items()},
        cuda_context_bytes={k: _gib(v) for k, v in data["cuda_context_gib"].items()},
        non_torch_model=data["non_torch_model"],
        flash_attn_splits=graphs["flash_attn_splits"],
        cudagraph_piecewise_base_bytes=_mib(graphs["piecewise_base_mib"]),
        cudagraph_per_layer_per_graph_bytes=_mib(graphs["per_layer_per_graph_mib"]),
        capture_eras=tuple(
            CaptureEra(_version(e["since"]), e["style"], e["max"], e["step_after_256"])
            for e in sorted(graphs["capture_eras"], key=lambda e: _version(e["since"]), reverse=True)
        ),
        full_and_piecewise_since=_version(graphs["full_and_piecewise_since"]),
        large_capture_architectures=tuple(graphs.get("large_capture_architectures", ())),
        cudagraph_subtracted_since=_version(graphs["subtracted_since"]),
        cudagraph_lora_factor=graphs["lora_factor"],
        v1_engine_since=_version(data["engine"]["v1_default_since"]),
        v0_fallback_below_major=data["engine"]["v0_fallback_below_capability"]["major"],
        flashinfer_sampler=act["flashinfer_sampler"],
        v0_fallback_until=_version(data["engine"]["v0_fallback_below_capability"]["until"]),
        v0_lora_fallback=(_version(data["engine"]["v0_fallback_lora"]["since"]),
                          _version(data["engine"]["v0_fallback_lora"]["until"])),
        use_v1_env_until=_version(data["engine"]["use_v1_env_until"]),
        v0_defaults=V0Defaults(**data["engine"]["v0_defaults"]),
        hybrid_kv_since=_version(data["kv_cache"]["hybrid_manager_since"]),
        kv_concurrency_report_since=_version(data["kv_cache"]["concurrency_report_since"]),
        in_flight_batches_since=_version(data["kv_cache"]["in_flight_batches"]["since"]),
        in_flight_batches=data["kv_cache"]["in_flight_batches"]["batches"],
        mamba=_mamba(data["mamba"]),
        mxfp4_triton_scales_freed_since=_version(data["mxfp4_triton"]["scales_freed_since"]),
        block_size=data["block_size"],
        batch_defaults=tuple(_batch_row(row) for row in data["batch_defaults"]),
        cpu=CpuOverheads(
            worker_base_bytes=_gib(cpu["worker_base_gib"]),
            side_processes_bytes=_gib(cpu["side_processes_gib"]),
            block_size=cpu["block_size"],
            batch_default=BatchDefault(0, cpu["batch_defaults"]["max_num_batched_tokens"],
                                       cpu["batch_defaults"]["max_num_seqs"], ()),
        ),
        lora=_lora(data["lora"]),
    )


def _lora(data: dict) -> LoraOverheads:
    extra = data["extra_vocab"]
    return LoraOverheads(
        v0_in_weights_line_since=_version(data["v0_in_weights_line_since"]),
        v0_uncounted_since=_version(data["v0_uncounted"]["since"]),
        v0_uncounted_until=_version(data["v0_uncounted"]["until"]),
        extra_vocab_size=extra["size"], vocab_padding=extra["padding"], extra_vocab_until=_version(extra["until"]),
    )
