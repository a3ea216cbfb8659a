"""GPU memory of one vLLM replica, per GPU, the way vLLM itself accounts for it.

Pure formulas (DESIGN.md §4, vllm-facts §3-§6). Shapes come from `catalog.models.ModelFacts`;
everything vLLM measures rather than computes (activation peak, NCCL, CUDA graphs) comes from the
calibrated constants in `catalog/data/overheads.yaml`. All sizes are bytes.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable

from fleetspec.catalog import models as catalog_models
from fleetspec.catalog import overheads, quantization

# Releases whose memory behaviour this module follows (V0 engine 0.6-0.7, V1 0.8 onward); outside,
# findings.version_scope_finding says the numbers are extrapolated.
MODELLED_RELEASES = ((0, 6), (0, 34))
VOCAB_PADDING = 64  # DEFAULT_VOCAB_PADDING_SIZE (vocab_parallel_embedding.py:36)
FP8_DS_MLA_BYTES_PER_LAYER = 656  # vllm-facts §4.3


def padded_vocab(vocab: int) -> int:
    return -(-vocab // VOCAB_PADDING) * VOCAB_PADDING


def layers_on_gpu(num_layers: int, pp: int) -> int:
    """Decoder layers on the busiest pipeline stage (uneven splits put the extra layer somewhere)."""
    return -(-num_layers // pp)


def kv_heads_per_gpu(kv_heads: int, tp: int) -> int:
    """KV heads each GPU stores: a share when tp divides them, one replicated head when tp ≥ kv heads."""
    return max(1, kv_heads // tp)


# ---------------------------------------------------------------------------------------------
# Weights


@dataclasses.dataclass(frozen=True)
class ParamSplit:
    """Parameters on one GPU: linear layers (quantizable) and the rest (kept in model dtype)."""

    linear: float
    other: float

    @property
    def total(self) -> float:
        return self.linear + self.other


def _attention_params(facts: catalog_models.ModelFacts, tp: int) -> tuple[float, float]:
    a = facts.architecture
    hidden, heads = a.hidden_size, a.num_attention_heads
    if facts.attention == "mla":
        nope, rope, v_dim, kv_rank = a.qk_nope_head_dim or 0, a.qk_rope_head_dim or 0, a.v_head_dim or 0, a.kv_lora_rank or 0
        q_out = heads * (nope + rope) / tp
        q = hidden * a.q_lora_rank + a.q_lora_rank * q_out if a.q_lora_rank else hidden * q_out
        linear = q + hidden * (kv_rank + rope) + kv_rank * heads * (nope + v_dim) / tp + heads * v_dim / tp * hidden
        return linear, kv_rank  # kv_a_layernorm
    d = a.attention_head_dim
    q_out = heads * d / tp
    kv_out = kv_heads_per_gpu(a.kv_heads, tp) * d
    bias = (q_out + 2 * kv_out) if facts.qkv_bias else 0
    return hidden * q_out + 2 * hidden * kv_out + q_out * hidden, bias


def _mlp_params(facts: catalog_models.ModelFacts, tp: int) -> tuple[float, float]:
    a = facts.architecture
    if facts.is_moe:
        experts = facts.num_experts
        return experts * 3 * a.hidden_size * facts.expert_intermediate_size / tp, a.hidden_size * experts
    matrices = 2 if facts.mlp == "plain" else 3
    return matrices * a.hidden_size * a.intermediate_size / tp, 0


def _layer_params(facts: catalog_models.ModelFacts, tp: int) -> ParamSplit:
    attn_linear, attn_other = _attention_params(facts, tp)
    mlp_linear, mlp_other = _mlp_params(facts, tp)
    norms = 2 * facts.architecture.hidden_size
    return ParamSplit(attn_linear + mlp_linear, attn_other + mlp_other + norms)


def _embedding_params(facts: catalog_models.ModelFacts, tp: int) -> tuple[float, float]:
    """(input embedding incl. learned positions, lm_head) parameters on one GPU."""
    a = facts.architecture
    table = padded_vocab(a.vocab_size) / tp * a.hidden_size
    positions = (a.max_position_embeddings or 0) * a.hidden_size if facts.learned_positions else 0
    return table + positions + a.hidden_size, 0 if a.tie_word_embeddings else table


def derived_parameters(facts: catalog_models.ModelFacts) -> int:
    """Total parameters from the shapes alone (unpadded vocabulary), for cross-checks."""
    a = facts.architecture
    layer = _layer_params(facts, 1).total
    embeddings = a.vocab_size * a.hidden_size * (1 if a.tie_word_embeddings else 2)
    if facts.learned_positions:
        embeddings += (a.max_position_embeddings or 0) * a.hidden_size
    return round(a.num_hidden_layers * layer + embeddings + a.hidden_size)


def _layer_scale(facts: catalog_models.ModelFacts) -> float:
    """Published count ÷ shape-derived count of the decoder layers: covers what config keys omit
    (shared experts, dense first layers, a two-matrix MLP the shapes read as three). A count given
    in the fleet's inline `architecture` is the user's statement about the checkpoint and is
    trusted (issue #18, item 3); a catalog count far from its own shapes is taken for a typo."""
    if not facts.num_parameters:
        return 1.0
    a = facts.architecture
    embeddings = derived_parameters(facts) - a.num_hidden_layers * _layer_params(facts, 1).total
    ratio = (facts.num_parameters - embeddings) / (a.num_hidden_layers * _layer_params(facts, 1).total)
    if ratio <= 0:  # fewer parameters than the embeddings alone: not a count of this model
        return 1.0
    return ratio if not facts.from_catalog or 0.8 <= ratio <= 1.25 else 1.0


def params_per_gpu(facts: catalog_models.ModelFacts, tp: int, pp: int) -> ParamSplit:
    layer = _layer_params(facts, tp)
    scale = _layer_scale(facts)
    layers = layers_on_gpu(facts.architecture.num_hidden_layers, pp)
    embed, lm_head = _embedding_params(facts, tp)
    # With pipeline parallel the first stage holds the embedding, the last the lm_head.
    edges = embed + lm_head if pp == 1 else max(embed, lm_head or embed)
    return ParamSplit(layers * layer.linear * scale, layers * layer.other * scale + edges)


def rope_cache_bytes(facts: catalog_models.ModelFacts, dtype_bytes: int) -> int:
    """The rotary embedding's cos/sin table, a buffer allocated with the weights and so part of
    "Model loading took": [max_position_embeddings, rotary_dim] in the model dtype
    (RotaryEmbedding._compute_cos_sin_cache, vllm/model_executor/layers/rotary_embedding/base.py),
    one per GPU because get_rope caches one module per configuration (_ROPE_DICT). Partial rotary
    factors are not in the catalog, so the full head dimension is used (a slight over-estimate)."""
    a = facts.architecture
    if facts.learned_positions or not a.max_position_embeddings:
        return 0
    rotary_dim = (a.qk_rope_head_dim or 0) if facts.attention == "mla" else a.attention_head_dim
    return a.max_position_embeddings * rotary_dim * dtype_bytes


def weight_bytes(facts: catalog_models.ModelFacts, tp: int, pp: int, dtype_bytes: int,
                 method: str = "none", group_size: int | None = None) -> int:
    """Weights on one GPU: quantized linear layers plus embeddings/lm_head/norms in model dtype,
    plus the buffers vLLM allocates with them (the rotary cos/sin cache)."""
    split = params_per_gpu(facts, tp, pp)
    cost = quantization.weight_cost(method, group_size, dtype_bytes)
    return round(split.linear * cost.bytes_per_weight + split.other * dtype_bytes) + rope_cache_bytes(facts, dtype_bytes)


# ---------------------------------------------------------------------------------------------
# LoRA


def lora_targets(facts: catalog_models.ModelFacts, target_modules: Iterable[str] | None) -> tuple[str, ...]:
    """Packed modules vLLM wraps: all it supports, or those named by --lora-target-modules."""
    supported = list(facts.lora_modules)
    if facts.embedding_lora:
        supported += ["embed_tokens", "lm_head"]
    if target_modules is None:
        return tuple(supported)
    wanted = set()
    for name in target_modules:
        packed = catalog_models.PACKED_MODULES.get(name.rsplit(".", 1)[-1], name)
        if facts.is_moe and packed in ("gate_up_proj", "down_proj"):
            packed = "experts"  # MoE checkpoints name expert projections gate/up/down
        wanted.add(packed)
    return tuple(m for m in supported if m in wanted)


def _lora_layer_terms(facts: catalog_models.ModelFacts, tp: int, fully_sharded: bool) -> dict[str, float]:
    """Per decoder layer, the A+B elements of each wrapped module per slot per unit of rank."""
    a = facts.architecture
    hidden, heads = a.hidden_size, a.num_attention_heads
    col_a = hidden / tp if fully_sharded else hidden  # A of column-parallel layers: [R, H]
    row_b = hidden / tp if fully_sharded else hidden  # B of row-parallel layers: [H, R]
    inter = a.intermediate_size / tp
    experts = facts.num_experts
    terms = {
        "gate_up_proj": 2 * col_a + 2 * inter,
        "down_proj": inter + row_b,
        "experts": experts * (3 * hidden + 3 * facts.expert_intermediate_size / tp),
        "gate": hidden + experts,
    }
    if facts.attention == "mla":
        nope, rope, v_dim, kv_rank = a.qk_nope_head_dim or 0, a.qk_rope_head_dim or 0, a.v_head_dim or 0, a.kv_lora_rank or 0
        terms.update({
            "q_proj": col_a + heads * (nope + rope) / tp,
            "kv_a_proj_with_mqa": hidden + kv_rank + rope,
            "kv_b_proj": kv_rank + heads * (nope + v_dim) / tp,
            "o_proj": heads * v_dim / tp + row_b,
        })
        return terms
    d = a.attention_head_dim
    q_pp = heads * d / tp
    kv_pp = kv_heads_per_gpu(a.kv_heads, tp) * d
    terms["qkv_proj"] = 3 * col_a + q_pp + 2 * kv_pp
    terms["o_proj"] = q_pp + row_b
    return terms


def lora_bytes(facts: catalog_models.ModelFacts, tp: int, pp: int, max_loras: int, max_rank: int,
               lora_dtype_bytes: int, target_modules: Iterable[str] | None = None,
               fully_sharded: bool = False) -> int:
    """GPU LoRA buffers on one GPU: vLLM preallocates `max_loras` slots at `max_lora_rank` on every
    wrapped module (vllm-facts §3.3), whatever the adapters' real ranks."""
    targets = lora_targets(facts, target_modules)
    terms = _lora_layer_terms(facts, tp, fully_sharded)
    per_layer = sum(terms[m] for m in targets if m in terms)
    a = facts.architecture
    embed = a.vocab_size + a.hidden_size if "embed_tokens" in targets else 0
    head = a.hidden_size + a.vocab_size if "lm_head" in targets else 0
    edges = embed + head if pp == 1 else max(embed, head)
    layers = layers_on_gpu(a.num_hidden_layers, pp)
    return round(max_loras * max_rank * lora_dtype_bytes * (layers * per_layer + edges))


def _module_dims(facts: catalog_models.ModelFacts) -> dict[str, float]:
    """in + out features of each unpacked module of an adapter (full model, not sharded)."""
    a = facts.architecture
    hidden, heads, d = a.hidden_size, a.num_attention_heads, a.attention_head_dim
    dims = {
        "q_proj": hidden + heads * d, "k_proj": hidden + a.kv_heads * d, "v_proj": hidden + a.kv_heads * d,
        "o_proj": heads * d + hidden, "gate_proj": hidden + a.intermediate_size,
        "up_proj": hidden + a.intermediate_size, "down_proj": a.intermediate_size + hidden,
    }
    if facts.is_moe:
        expert = facts.num_experts * (hidden + facts.expert_intermediate_size)
        dims.update({"gate_proj": expert, "up_proj": expert, "down_proj": expert, "gate": hidden + facts.num_experts})
        dims.update({"w1": expert, "w2": expert, "w3": expert})
    if facts.attention == "mla":
        nope, rope, v_dim, kv_rank = a.qk_nope_head_dim or 0, a.qk_rope_head_dim or 0, a.v_head_dim or 0, a.kv_lora_rank or 0
        dims.update({"q_proj": hidden + heads * (nope + rope), "kv_a_proj_with_mqa": hidden + kv_rank + rope,
                     "kv_b_proj": kv_rank + heads * (nope + v_dim), "o_proj": heads * v_dim + hidden})
    return dims


def default_adapter_modules(facts: catalog_models.ModelFacts) -> tuple[str, ...]:
    """Unpacked modules an adapter with unknown target_modules is assumed to train (all linear)."""
    if facts.attention == "mla":
        return ("q_proj", "kv_a_proj_with_mqa", "kv_b_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
    return ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def adapter_bytes(facts: catalog_models.ModelFacts, rank: int, lora_dtype_bytes: int,
                  target_modules: Iterable[str] | None = None) -> int:
    """Real size of one PEFT adapter (what the CPU cache holds): rank × (in + out) per module."""
    dims = _module_dims(facts)
    a = facts.architecture
    total = 0.0
    for name in target_modules or default_adapter_modules(facts):
        short = name.rsplit(".", 1)[-1]
        if short in ("embed_tokens", "lm_head"):
            total += a.vocab_size + a.hidden_size
        elif short in ("qkv_proj", "gate_up_proj"):
            parts = ("q_proj", "k_proj", "v_proj") if short == "qkv_proj" else ("gate_proj", "up_proj")
            total += a.num_hidden_layers * sum(dims[p] for p in parts)
        else:
            total += a.num_hidden_layers * dims.get(short, 2 * a.hidden_size)
    return round(rank * lora_dtype_bytes * total)


def seed_adapter_bytes(facts: catalog_models.ModelFacts, rank: int, lora_dtype_bytes: int,
                       target_modules: Iterable[str] | None = None) -> int:
    """The seeds' simple formula: 2 × rank × hidden × (layers × target modules) × bytes."""
    modules = len(list(target_modules or default_adapter_modules(facts)))
    a = facts.architecture
    return 2 * rank * a.hidden_size * a.num_hidden_layers * modules * lora_dtype_bytes


# ---------------------------------------------------------------------------------------------
# KV cache


def kv_bytes_per_token_per_layer(facts: catalog_models.ModelFacts, tp: int, kv_bytes: float,
                                 kv_cache_dtype: str = "auto") -> float:
    a = facts.architecture
    if facts.attention == "mla":
        # One latent vector per token, not split by tensor parallel (vllm-facts §4.3).
        if kv_cache_dtype == "fp8_ds_mla":
            return FP8_DS_MLA_BYTES_PER_LAYER
        return ((a.kv_lora_rank or 0) + (a.qk_rope_head_dim or 0)) * kv_bytes
    return kv_heads_per_gpu(a.kv_heads, tp) * 2 * a.attention_head_dim * kv_bytes


def kv_bytes_per_token(facts: catalog_models.ModelFacts, tp: int, pp: int, kv_bytes: float,
                       kv_cache_dtype: str = "auto") -> float:
    """KV bytes one token takes on one GPU, all attention layers of its pipeline stage."""
    layers = layers_on_gpu(facts.architecture.num_hidden_layers, pp)
    return layers * kv_bytes_per_token_per_layer(facts, tp, kv_bytes, kv_cache_dtype)


def _window_layers(facts: catalog_models.ModelFacts, layers: int) -> int:
    if facts.sliding_window_layers == "all":
        return layers
    if facts.sliding_window_layers == "alternate":
        return (layers + 1) // 2
    return 0


def kv_bytes_per_request(facts: catalog_models.ModelFacts, tp: int, pp: int, kv_bytes: float,
                         max_model_len: int, batched_tokens: int, kv_cache_dtype: str = "auto",
                         block: int | None = None) -> float:
    """KV memory one request of max_model_len tokens can claim: full-attention layers hold every
    block, sliding-window layers at most the window plus one step's tokens (vllm-facts §4.3)."""
    block = block or overheads.load().block_size
    layers = layers_on_gpu(facts.architecture.num_hidden_layers, pp)
    per_layer = kv_bytes_per_token_per_layer(facts, tp, kv_bytes, kv_cache_dtype)
    full_blocks = -(-max_model_len // block)
    windowed = _window_layers(facts, layers)
    window_tokens = min((facts.architecture.sliding_window or 0) - 1 + batched_tokens, max_model_len)
    window_blocks = min(-(-window_tokens // block) + 1, full_blocks) if windowed else 0
    return per_layer * block * ((layers - windowed) * full_blocks + windowed * window_blocks)


def kv_tokens(available: int, bytes_per_token: float, block: int | None = None) -> int:
    """vLLM's "GPU KV cache size: N tokens": whole blocks that fit in the available memory."""
    block = block or overheads.load().block_size
    if available <= 0 or bytes_per_token <= 0:
        return 0
    return int(available // (bytes_per_token * block)) * block


def largest_model_len(facts: catalog_models.ModelFacts, tp: int, pp: int, kv_bytes: float, available: int,
                      batched_tokens: int, kv_cache_dtype: str = "auto", limit: int | None = None,
                      block: int | None = None) -> int:
    """Longest max_model_len whose one full request fits (vLLM's estimate_max_model_len search)."""
    def fits(length: int) -> bool:
        return kv_bytes_per_request(facts, tp, pp, kv_bytes, length, batched_tokens, kv_cache_dtype,
                                    block) <= available

    high = limit or facts.max_position_embeddings or 1 << 24
    if available <= 0 or not fits(1):
        return 0
    if fits(high):
        return high
    low = 1
    while low < high - 1:
        mid = (low + high) // 2
        low, high = (mid, high) if fits(mid) else (low, mid)
    return low


# ---------------------------------------------------------------------------------------------
# Measured overheads


def _version_tuple(version: tuple[int, ...] | str) -> tuple[int, ...]:
    return version if isinstance(version, tuple) else tuple(int(p) for p in version.split("."))


def activation_bytes(facts: catalog_models.ModelFacts, batched_tokens: int, max_num_seqs: int, pp: int,
                     vllm_version: tuple[int, ...] | str) -> int:
    """Peak of vLLM's profiling run: a forward pass of max_num_batched_tokens tokens and a dummy
    sampler over max_num_seqs rows of fp32 logits (fit in overheads.yaml; the sampler's share
    follows the release's top-k/top-p code, `sampler_bytes`)."""
    c = overheads.load()
    base = c.activation_base_bytes["moe" if facts.is_moe else "dense"] * batched_tokens / c.reference_batched_tokens
    total = base + sampler_bytes(facts, max_num_seqs, vllm_version)
    if pp > 1:
        total *= c.activation_pp_factor
    if _version_tuple(vllm_version) < c.v1_engine_since:
        total *= c.activation_v0_factor
    return round(total)


def sampler_bytes(facts: catalog_models.ModelFacts, max_num_seqs: int,
                  vllm_version: tuple[int, ...] | str = MODELLED_RELEASES[1]) -> int:
    """Transient peak of one dummy sampler pass over `max_num_seqs` rows of full-vocabulary fp32
    logits (`GPUModelRunner._dummy_sampler_run`: logits, top-k/top-p, softmax), in units of one
    fp32 logits tensor by era: since 0.17 a Triton top-k/top-p kernel filters in place, before it
    the whole vocabulary was sorted (fp32 values + int64 indices, cumsum, scatter) — overheads.yaml
    activation.sampler_eras."""
    factor = overheads.load().sampler_factor_for(_version_tuple(vllm_version))
    return round(factor * max_num_seqs * facts.architecture.vocab_size * 4)


def warms_up_sampler_after_kv(vllm_version: tuple[int, ...] | str) -> bool:
    """The V1 engine (default since 0.8) runs the sampler once more after the KV cache is allocated
    and the CUDA graphs are captured (`Worker.compile_or_warm_up_model`, v1/worker/gpu_worker.py:
    "Warm up sampler and preallocate memory buffer for logits ... called after `capture_model` on
    purpose"); the V0 engine sampled only inside its profile run."""
    return _version_tuple(vllm_version) >= overheads.load().v1_engine_since


def warmup_free_bytes(total: int, budget: int, cuda_context: int, activation: int, cudagraph: int,
                      cudagraph_in_budget: bool) -> int:
    """GPU memory free when the sampler warm-up runs, for one replica alone on its GPUs.

    The budget reserved the profile run's activation peak, and vLLM empties its cache before
    allocating the KV cache, so that peak is free again; the CUDA context sits outside the budget;
    graphs captured outside the budget (vLLM < 0.21) were taken from the same free memory first."""
    outside_graphs = 0 if cudagraph_in_budget else cudagraph
    return total - budget - cuda_context + activation - outside_graphs


def _parallel_key(tp: int, pp: int) -> str:
    if tp > 1:
        return "tensor_parallel"
    return "pipeline_only" if pp > 1 else "single_gpu"


def non_torch_bytes(tp: int, pp: int) -> int:
    return overheads.load().non_torch_bytes[_parallel_key(tp, pp)]


def cuda_context_bytes(tp: int, pp: int) -> int:
    return overheads.load().cuda_context_bytes[_parallel_key(tp, pp)]


def cudagraph_capture_sizes(facts: catalog_models.ModelFacts, max_num_seqs: int, batched_tokens: int,
                            vllm_version: tuple[int, ...] | str) -> list[int]:
    """The batch sizes vLLM captures CUDA graphs for by default (overheads.yaml cudagraph.capture_eras):
    V1 ≥ 0.10 [1, 2, 4] + 8..248 step 8 + 256..max step 16, max = min(2 × max_num_seqs, 512)
    (1024 for gpt-oss; 0.33 also uses 1024 on Blackwell, which the catalog has no card of) —
    VllmConfig._set_cudagraph_sizes; V1 0.8/0.9
    [1, 2, 4] + 8..512 step 8; V0 [1, 2, 4] + multiples of 8 up to max_num_seqs. Never above
    max_num_batched_tokens."""
    c = overheads.load()
    version = _version_tuple(vllm_version)
    era = c.capture_era_for(version)
    largest = era.max_size
    if era.style != "max_num_seqs" and set(facts.architecture.architectures or ()) & set(c.large_capture_architectures):
        largest = 1024
    if era.style == "doubled_seqs":
        largest = min(2 * max_num_seqs, largest)
    elif era.style == "max_num_seqs":
        largest = min(max_num_seqs, largest)
    largest = min(largest, batched_tokens)
    sizes = [s for s in (1, 2, 4) if s <= largest]
    sizes += list(range(8, min(256, largest + 1), 8))
    sizes += list(range(256, largest + 1, era.step_after_256))
    return sizes


def _full_graph_first_capture(facts: catalog_models.ModelFacts, tp: int, dtype_bytes: int, largest: int) -> int:
    """FlashAttention's split-KV fp32 accumulator, allocated in the first (largest) FULL capture:
    [splits, batch, q heads per GPU, v head dim] × 4 B (flash_attn_max_num_splits_for_cuda_graph;
    MLA's FlashAttention backend accumulates kv_lora_rank wide). No fp32 FlashAttention kernel."""
    if dtype_bytes >= 4:
        return 0
    a = facts.architecture
    width = (a.kv_lora_rank or 0) if facts.attention == "mla" else a.attention_head_dim
    heads = max(1, a.num_attention_heads // tp)
    return overheads.load().flash_attn_splits * largest * heads * width * 4


def _piecewise_first_capture(facts: catalog_models.ModelFacts, tp: int, dtype_bytes: int, largest: int) -> int:
    """Largest PIECEWISE capture: a base plus the MLP intermediate of `largest` tokens (gated:
    gate_up output and activation output, 3 × intermediate; plain 2 ×; MoE: per routed expert)."""
    a = facts.architecture
    if facts.is_moe:
        per_token = 3 * (a.num_experts_per_tok or 1) * facts.expert_intermediate_size / tp
    else:
        per_token = (2 if facts.mlp == "plain" else 3) * a.intermediate_size / tp
    return round(overheads.load().cudagraph_piecewise_base_bytes + largest * per_token * dtype_bytes)


def cudagraph_bytes(facts: catalog_models.ModelFacts, pp: int, lora: bool, enforce_eager: bool, *,
                    tp: int = 1, dtype_bytes: int = 2, max_num_seqs: int = 1024, batched_tokens: int = 8192,
                    vllm_version: tuple[int, ...] | str = MODELLED_RELEASES[1]) -> int:
    """CUDA graph pool of one GPU, the way vLLM's profile_cudagraph_memory estimates it
    (gpu_model_runner.py): the largest first capture over the captured modes plus, per mode,
    (graphs − 1) × one graph's own memory; graphs per mode = the capture sizes; FULL and PIECEWISE
    both since 0.11 (FULL_AND_PIECEWISE), one mode before. LoRA doubles the graphs
    (cudagraph_specialize_lora, measured factor)."""
    if enforce_eager:
        return 0
    c = overheads.load()
    version = _version_tuple(vllm_version)
    sizes = cudagraph_capture_sizes(facts, max_num_seqs, batched_tokens, version)
    if not sizes:
        return 0
    largest = sizes[-1]
    v1 = version >= c.v1_engine_since
    both = v1 and version >= c.full_and_piecewise_since
    firsts = [_piecewise_first_capture(facts, tp, dtype_bytes, largest)] if v1 else []
    if both or not v1:  # FULL graphs (V1 since 0.11; V0 captured whole-model graphs)
        firsts.append(_full_graph_first_capture(facts, tp, dtype_bytes, largest))
    modes = 2 if both else 1
    layers = layers_on_gpu(facts.architecture.num_hidden_layers, pp)
    per_graph = c.cudagraph_per_layer_per_graph_bytes * layers
    graphs = max(firsts) + modes * (len(sizes) - 1) * per_graph
    return round(graphs * (c.cudagraph_lora_factor if lora else 1.0))


def cudagraphs_in_budget(vllm_version: tuple[int, ...] | str) -> bool:
    """Since 0.21 vLLM subtracts its CUDA-graph estimate from the KV budget; before, graphs were
    captured after sizing the KV cache and had to fit in the memory outside the budget."""
    return _version_tuple(vllm_version) >= overheads.load().cudagraph_subtracted_since


def budget_bytes(total: int, utilization: float) -> int:
    """`requested_memory = ceil(total × gpu_memory_utilization)` (gpu_worker.py:520-548)."""
    return math.ceil(total * utilization)
