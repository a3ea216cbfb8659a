"""Per term of one GPU's budget: where the number comes from and how far to trust it (issue #18:
"activation measured for this family on 0.19; extrapolated for 0.26"). `plan --explain` prints one
line per term; the plan's JSON carries the same list under each replica's `per_gpu.terms`."""

from __future__ import annotations

import dataclasses

from fleetspec.catalog import models as catalog_models
from fleetspec.catalog import overheads, quantization
from fleetspec.planner import memory

MEASURED_ON = (0, 19)  # the release overheads.yaml's constants were measured on (llmd-v0.19)


@dataclasses.dataclass(frozen=True)
class Term:
    term: str
    bytes: int
    source: str
    confidence: str  # "computed", "measured", "estimated", "extrapolated", "not modelled"

    def to_json(self) -> dict:
        return {"term": self.term, "gib": round(self.bytes / (1 << 30), 3), "source": self.source,
                "confidence": self.confidence}

    def line(self) -> str:
        return f"{self.term}: {self.confidence}; {self.source}"


def _release(version: tuple[int, ...]) -> str:
    return ".".join(map(str, version[:2]))


def _measured(version: tuple[int, ...], what: str) -> tuple[str, str]:
    if version[:2] == MEASURED_ON:
        return f"{what} measured on vLLM 0.19 (llmd-v0.19, overheads.yaml)", "measured"
    return f"{what} measured on vLLM 0.19, extrapolated for {_release(version)}", "extrapolated"


def _bnb_source(s, moe: bool) -> str:
    """How the bitsandbytes weights were sized (planner/bnb.py, catalog/data/bitsandbytes.yaml)."""
    from fleetspec.planner import bnb

    cp = s.bnb_checkpoint
    text = (f" ({bnb.bytes_per_weight(s.vllm_version, cp):.4f} B per 4-bit weight: packed n/2 plus absmax per "
            f"{(cp.blocksize if cp else None) or bnb.constants()['blocksize']}"
            + (", float32 since 0.10 (_dequantize_dq)" if s.vllm_version >= (0, 10) else "") + ")")
    if cp and cp.skip_modules:
        text += f"; {len(cp.skip_modules)} llm_int8_skip_modules entries kept in 16 bit"
    if moe and not bnb.experts_quantized(s.vllm_version):
        text += "; routed experts unquantized before 0.10"
    return text


def terms(facts: catalog_models.ModelFacts, s, b) -> tuple[Term, ...]:
    """`s`: engine.EngineSettings, `b`: budget.GpuBudget of the same replica (not imported: cycle)."""
    version = s.vllm_version
    c = overheads.load()
    out = []
    counts = memory.parameter_counts(facts)
    cost = quantization.weight_cost(s.quantization, s.group_size, s.dtype_bytes)
    present = memory.params_per_gpu(facts, s.tensor_parallel_size, s.pipeline_parallel_size).by_kind()
    scope = [k for k in sorted(memory.quantized_kinds(facts, s.quantization)) if present.get(k)] \
        if s.quantization not in ("none", "") else []
    source = f"shapes of {facts.source}" + (f"; {s.quantization} on {', '.join(scope)}" if scope else "")
    confidence = "computed"
    if counts["layer_scale"] != 1.0:
        source += (f"; decoder scaled to the published {counts['published'] / 1e9:.3f} B parameters "
                   f"(shapes: {counts['derived'] / 1e9:.3f} B)")
        confidence = "estimated"
    if cost.estimated:
        source += f"; {s.quantization}'s real bytes per weight depend on the checkpoint"
        confidence = "estimated"
    if s.quantization == "bitsandbytes":
        source += _bnb_source(s, facts.is_moe)
    padding = memory.mxfp4_expert_padding(facts, s.tensor_parallel_size, s.compute_capability, s.quantization)
    if padding != 1.0:
        source += f"; experts padded ×{padding:.3f} to the MoE kernel's tile on this GPU (vLLM 0.33's choice)"
    residue = memory.mxfp4_triton_residue_bytes(
        facts, s.tensor_parallel_size, s.compute_capability, s.quantization, version, s.dtype_bytes,
        shard=memory.ExpertShard.of(s.tensor_parallel_size, s.data_parallel_size, s.expert_parallel),
        moe_layers=memory.moe_layers_on(facts, s.pipeline_parallel_size, b.stage))
    if residue:
        source += (f"; +{residue / (1 << 30):.2f} GiB left by the Triton MXFP4 conversion on Hopper (fp32 expert "
                   "biases, and the checkpoint's scales before 0.26; overheads.yaml mxfp4_triton)")
    out.append(Term("weights", b.weights, source, confidence))
    if s.lora is not None:
        if memory.lora_in_weights_line(version, s.v0):
            where = "; vLLM logs them inside \"Model loading took\" (built in load_model's profiler)"
        elif b.lora_in_budget:
            where = "; vLLM logs them outside \"Loading model weights took\""
        else:
            where = ("; V0 0.7 counts them in no profiled term: the KV cache is sized without them and they "
                     "sit beyond the budget")
        out.append(Term("lora", b.lora, f"max_loras {s.lora.max_loras} × rank {s.lora.max_lora_rank} buffers on "
                        "every wrapped module, as vLLM preallocates them (vllm-facts §3.3)" + where
                        + " (overheads.yaml lora)", "computed"))
    if s.host:
        out.append(Term("activation", b.activation, "vLLM CPU build: the 0.19 GPU fit applied to host RAM",
                        "extrapolated"))
    else:
        if s.v0:
            # The shapes come from V0's code; the sort's size in logits tensors was measured on V1.
            text, confidence = ("V0 profile run: the larger of the eager forward's MLP and hidden tensors "
                                f"({s.max_num_batched_tokens} tokens) and the whole-vocabulary sort of its "
                                "sampler, from vLLM's V0 model runner and sampler code", "estimated")
        else:
            kind = "MoE" if facts.is_moe else "dense"
            what = f"activation base for {kind} models; sampler by the {_release(version)} top-k/top-p era"
            text, confidence = _measured(version, what)
            if s.flashinfer_sampler:
                text += "; the sampler is FlashInfer's top-k/top-p, taken as the in-place era's peak"
                confidence = "estimated"
        mm = memory.v0_mm_profile(facts, s.max_num_batched_tokens, s.max_num_seqs, s.max_model_len,
                                  version) if s.v0 else None
        if mm is not None:
            text += (f"; multimodal: V0 caps the dummy sequences at {mm.seqs} and keeps the dummy image and "
                     f"video whole, so the forward runs {mm.tokens} tokens, beside "
                     f"{mm.pixel_bytes / (1 << 30):.2f} GiB of float32 pixel values, or the vision tower "
                     f"over {mm.largest_item_patches} patches where larger (worker/model_runner.py _dummy_run, "
                     "multimodal/profiling.py, qwen2_vl.py / qwen2_5_vl.py of 0.8.4)")
        elif facts.architecture.vision_config is not None:
            text += "; the vision encoder's dummy profile run is not modelled"
            confidence = "not modelled"
        out.append(Term("activation", b.activation, text, confidence))
    if b.state_cache:
        slots = s.max_num_seqs if s.enforce_eager else memory.v0_capture_size(s.max_num_seqs)
        ssm = memory.ssm_state_dtype_bytes(facts, s.dtype_bytes, version, s.mamba_ssm_cache_dtype)
        out.append(Term("state_cache", b.state_cache,
                        f"V0 MambaCacheManager: {slots} slots (max_num_seqs"
                        f"{'' if s.enforce_eager else ' padded to a CUDA-graph size'}) × conv + ssm state "
                        f"({ssm}-byte ssm) of each Mamba layer, allocated in the profile run and kept "
                        "(model_executor/models/mamba_cache.py of 0.8.4 / 0.10.1)", "computed"))
    if s.host:
        text, confidence = _measured(version, "non-torch memory of the CPU worker")
    else:
        link = f" over {s.interconnect}" if s.tensor_parallel_size > 1 else ""
        parts = " + ".join(f"{name} {size / (1 << 30):.2f} GiB" for name, size in b.non_torch_parts) or (
            "none allocated by vLLM after V0's baseline snapshot on one GPU (the driver's kernel loads are "
            "not modelled)")
        text = (f"non-torch memory{link}: {parts}; sizes measured on vLLM 0.19 H100 or read from vLLM's and "
                f"NCCL's code, counted as {_release(version)} counts them (planner/nontorch.py)")
        confidence = b.non_torch_confidence
    out.append(Term("non_torch", b.non_torch, text, confidence))
    if not s.host:
        if s.enforce_eager:
            out.append(Term("cudagraph", 0, "enforce_eager: no graphs", "computed"))
        else:
            sizes = memory.cudagraph_capture_sizes(facts, s.max_num_seqs, s.max_num_batched_tokens, version)
            where = "inside the budget" if b.cudagraph_in_budget else "outside the budget (captured after KV)"
            text, confidence = _measured(version, "per-graph constants")
            out.append(Term("cudagraph", b.cudagraph,
                            f"profile_cudagraph_memory's estimate over {len(sizes)} capture sizes up to "
                            f"{sizes[-1] if sizes else 0}, {where}; {text}",
                            "estimated" if confidence == "measured" else confidence))
        text, confidence = _measured(version, "CUDA context")
        out.append(Term("cuda_context", b.cuda_context, text + "; outside the budget", confidence))
        if b.sampler_warmup:
            out.append(Term("sampler_warmup", b.sampler_warmup,
                            f"max_num_seqs {s.max_num_seqs} × vocab {facts.architecture.vocab_size} × 4 B × the "
                            f"{_release(version)} era factor, after the KV cache is allocated", "estimated"))
    groups = b.kv_groups
    if len(groups) > 1 or "sliding" in groups:
        state = f", {groups.count('mamba')} state" if "mamba" in groups else ""
        layout = (f"{len(groups)} KV cache group(s) of {b.kv_group_size} layers "
                  f"({groups.count('sliding')} sliding-window, {groups.count('full')} full{state}; "
                  "kv_cache_utils._get_kv_cache_groups_uniform_page_size)")
    else:
        layout = "one KV cache group of every layer"
    report = ("int(max_concurrency × max_model_len)" if version >= c.kv_concurrency_report_since and not s.host
              else "num_blocks // groups × block_size")
    kv_confidence = "computed"
    if facts.is_hybrid and b.state_cache:
        layout += "; V0: blocks on the attention layers only (CacheEngine), the state in the state_cache term"
    elif facts.is_hybrid:
        layout += "; " + _state_layout(facts, s, b)
        if version < c.hybrid_kv_since or s.v0:
            kv_confidence = "not modelled"
    if facts.window_layers_unknown:
        layout += "; sliding_window ignored: its layers are unknown"
        kv_confidence = "estimated"
    origin = "what the budget leaves"
    if s.num_gpu_blocks_override is not None:
        origin = f"--num-gpu-blocks-override {s.num_gpu_blocks_override} blocks"
    if b.kv_ceiling is not None:
        origin += f"; at most {b.kv_ceiling / (1 << 30):.2f} GiB is free for it on this GPU"
    out.append(Term("kv_cache", max(b.kv_cache, 0),
                    f"{origin}; {layout}; tokens as {_release(version)} logs them: {report}",
                    kv_confidence))
    return tuple(out)


def _state_layout(facts: catalog_models.ModelFacts, s, b) -> str:
    """How a hybrid model's state pages sit in the KV cache (memory.kv_layout, overheads.yaml mamba)."""
    version = s.vllm_version
    layout = memory.kv_layout(facts, s.tensor_parallel_size, s.pipeline_parallel_size, s.kv_bytes,
                              kv_cache_dtype=s.kv_cache_dtype, vllm_version=version, host=s.host,
                              block=s.block_size, stage=b.stage, dtype_bytes=s.dtype_bytes,
                              prefix_caching=s.prefix_caching, mamba_ssm_cache_dtype=s.mamba_ssm_cache_dtype,
                              max_model_len=s.max_model_len)
    ssm = memory.ssm_state_dtype_bytes(facts, s.dtype_bytes, version, s.mamba_ssm_cache_dtype)
    return (f"state layers padded to the attention page ({layout.page:,.0f} B: attention block raised to "
            f"{layout.block} tokens, Platform._align_hybrid_block_size; ssm state {ssm} B per element), "
            f"{layout.state_blocks} state block(s) per request per state group")
