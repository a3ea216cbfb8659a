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
from fleetspec.planner import allocator

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


@dataclasses.dataclass(frozen=True)
class Stage:
    """One pipeline stage of a replica: decoder layers [start, start + layers), the embedding on the
    first stage and the lm_head on the last (vLLM's make_layers / PPMissingLayer)."""

    index: int
    start: int
    layers: int
    first: bool
    last: bool


def pipeline_stages(num_layers: int, pp: int, partition: tuple[int, ...] | None = None) -> tuple[Stage, ...]:
    """The stages vLLM builds (get_pp_indices, vllm/distributed/utils.py of 0.32): the fleet's split
    (VLLM_PP_LAYER_PARTITION) when given, else num_layers // pp each with the remainder added one
    by one from the second-to-last stage backwards (the last holds the final norm and lm_head)."""
    if partition is not None:
        parts = list(partition)
    else:
        parts = [num_layers // pp] * pp
        for i in range(2, num_layers % pp + 2):
            parts[-i] += 1
    stages, start = [], 0
    for index, layers in enumerate(parts):
        stages.append(Stage(index, start, layers, index == 0, index == len(parts) - 1))
        start += layers
    return tuple(stages)


def _stage_layers(num_layers: int, pp: int, stage: Stage | None) -> int:
    return stage.layers if stage is not None else layers_on_gpu(num_layers, pp)


@dataclasses.dataclass(frozen=True)
class ExpertShard:
    """How one GPU holds a MoE layer's routed experts (FusedMoEParallelConfig.make,
    model_executor/layers/fused_moe/config.py of 0.32): MoE layers are spread over all data x tensor
    parallel GPUs (flatten_tp_across_dp_and_pcp), each expert sliced across them; with expert
    parallel each GPU holds whole experts instead, the first `experts mod ranks` GPUs one more
    (determine_expert_map, linear placement, fused_moe/expert_map_manager.py)."""

    ranks: int = 1
    whole: bool = False

    @classmethod
    def of(cls, tp: int, dp: int = 1, expert_parallel: bool = False) -> ExpertShard:
        ranks = tp * dp
        return cls(ranks, expert_parallel and ranks > 1)  # vLLM: use_ep needs dp x tp > 1

    def local_experts(self, experts: int) -> int:
        return -(-experts // self.ranks) if self.whole else experts

    @property
    def width_divisor(self) -> int:
        """What each expert's intermediate width is divided by on one GPU."""
        return 1 if self.whole else self.ranks


def kv_heads_per_gpu(kv_heads: int, tp: int) -> int:
    """KV heads each GPU stores: a share when tp divides them, one replicated head when tp ≥ kv heads."""
    return max(1, kv_heads // tp)


# ---------------------------------------------------------------------------------------------
# Weights


@dataclasses.dataclass(frozen=True)
class ParamSplit:
    """Parameters on one GPU by what a quantization method may cover: the decoder's linear layers
    (attention, dense MLP, routed experts, shared experts), the vision tower's linear layers, and
    the rest (embeddings, lm_head, norms, routers, positions: always in the model dtype)."""

    attention: float
    mlp: float
    experts: float
    other: float
    shared_experts: float = 0.0
    vision: float = 0.0

    @property
    def linear(self) -> float:
        """Decoder linear layers (what AWQ/GPTQ/FP8 quantize by default)."""
        return self.attention + self.mlp + self.experts + self.shared_experts

    @property
    def total(self) -> float:
        return self.linear + self.vision + self.other

    def by_kind(self) -> dict[str, float]:
        return {"attention": self.attention, "mlp": self.mlp, "experts": self.experts,
                "shared_experts": self.shared_experts, "vision": self.vision}

    def scaled(self, factor: float) -> ParamSplit:
        return ParamSplit(self.attention * factor, self.mlp * factor, self.experts * factor, self.other * factor,
                          self.shared_experts * factor, self.vision * factor)

    def __add__(self, other: ParamSplit) -> ParamSplit:
        return ParamSplit(self.attention + other.attention, self.mlp + other.mlp, self.experts + other.experts,
                          self.other + other.other, self.shared_experts + other.shared_experts,
                          self.vision + other.vision)

    def times(self, count: float) -> ParamSplit:
        return self.scaled(count)


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
    gate = q_out if a.attn_output_gate else 0  # Qwen3.5: q_proj also emits the output gate (qwen3_next.py)
    norms = 2 * d if facts.qk_norm else 0  # q_norm, k_norm over one head
    return hidden * (q_out + gate) + 2 * hidden * kv_out + q_out * hidden, bias + norms


def _dense_mlp_params(facts: catalog_models.ModelFacts, tp: int) -> float:
    """A dense MLP: gated (gate_proj, up_proj, down_proj: 3 matrices, LlamaMLP) or plain (fc1, fc2:
    2 matrices, phi-2's PhiMLP / GPT-2's c_fc, c_proj) — issue #18 item 3."""
    matrices = 2 if facts.dense_mlp == "plain" else 3
    return matrices * facts.architecture.hidden_size * facts.architecture.intermediate_size / tp


def _dense_layer(facts: catalog_models.ModelFacts, tp: int) -> ParamSplit:
    attn_linear, attn_other = _attention_params(facts, tp)
    return ParamSplit(attn_linear, _dense_mlp_params(facts, tp), 0.0, attn_other + 2 * facts.architecture.hidden_size)


def _moe_layer(facts: catalog_models.ModelFacts, tp: int, shard: ExpertShard | None = None) -> ParamSplit:
    """A MoE layer: routed experts (w1/w3 gate-up + w2, FusedMoE), the router (hidden × experts, kept
    in the model dtype) and the shared experts (DeepSeek: one gated MLP n_shared_experts ×
    moe_intermediate_size wide, DeepseekV2MoE.shared_experts; Qwen-MoE: shared_expert of
    shared_expert_intermediate_size plus its hidden × 1 shared_expert_gate, Qwen2MoeSparseMoeBlock)."""
    a = facts.architecture
    attn_linear, attn_other = _attention_params(facts, tp)
    shard = shard or ExpertShard(tp)
    experts = (shard.local_experts(facts.num_experts) * 3 * a.hidden_size * facts.expert_intermediate_size
               / shard.width_divisor)
    shared = 3 * a.hidden_size * facts.shared_expert_intermediate_size / tp
    gate = a.hidden_size if a.shared_expert_intermediate_size else 0
    other = attn_other + 2 * a.hidden_size + a.hidden_size * facts.num_experts + gate
    return ParamSplit(attn_linear, 0.0, experts, other, shared_experts=shared)


def dense_and_moe_layers(facts: catalog_models.ModelFacts, layers: int, start: int | None = None) -> tuple[int, int]:
    """(dense, MoE) layers among `layers` decoder layers from layer `start` (dense layers come
    first: first_k_dense_replace); without a start, the stage with the most MoE layers."""
    if not facts.is_moe:
        return layers, 0
    if start is None:
        moe = min(layers, facts.moe_layers)
        return layers - moe, moe
    dense_first = facts.architecture.num_hidden_layers - facts.moe_layers
    dense = max(0, min(start + layers, dense_first) - start)
    return dense, layers - dense


def mamba2_groups(facts: catalog_models.ModelFacts, tp: int) -> int:
    """Mamba2 B/C groups one GPU's shards are cut from: when tp does not divide n_groups (vLLM allows
    that only for one group, MambaMixer2's assert) the group is replicated to tp copies so each head's
    group travels with it (extra_groups_for_head_shards = tp − n_groups, mamba_utils.py)."""
    groups = facts.architecture.n_groups or 1
    return groups if groups % tp == 0 else tp


def _mamba2_params(facts: catalog_models.ModelFacts, tp: int) -> tuple[float, float]:
    """(linear, other) of one MambaMixer2 on one GPU (vllm/model_executor/layers/mamba/mamba_mixer2.py):
    in_proj from hidden to the gate and x (heads × head_dim each), B and C (n_groups × state each) and
    dt (one per head); out_proj back to hidden; conv1d over x, B and C (conv_kernel wide plus a bias
    with use_conv_bias, built without quant_config); A_log, D and dt_bias per head and the gated
    RMSNorm over heads × head_dim. A_log is float32 in vLLM: counted in the model dtype (heads only)."""
    a = facts.architecture
    inner = a.mamba_num_heads * a.mamba_head_dim
    conv_dim = inner + 2 * mamba2_groups(facts, tp) * a.ssm_state_size
    linear = a.hidden_size * (inner + conv_dim + a.mamba_num_heads) / tp + inner * a.hidden_size / tp
    other = conv_dim * (a.conv_kernel + (1 if a.use_conv_bias else 0)) / tp + (3 * a.mamba_num_heads + inner) / tp
    return linear, other


def _gdn_dims(facts: catalog_models.ModelFacts) -> tuple[int, int]:
    """(key dim, value dim) of a Gated DeltaNet layer: heads × head dim."""
    a = facts.architecture
    return a.linear_num_key_heads * a.linear_key_head_dim, a.linear_num_value_heads * a.linear_value_head_dim


def _gdn_params(facts: catalog_models.ModelFacts, tp: int) -> tuple[float, float]:
    """(linear, other) of one Qwen Gated DeltaNet on one GPU (QwenGatedDeltaNetAttention,
    vllm/model_executor/layers/mamba/gdn/qwen_gdn_linear_attn.py): in_proj_qkvz from hidden to q and
    k (key dim each), v and z (value dim each); in_proj_ba to b and a (one per value head); out_proj
    from the value dim back; conv1d over q, k, v (no bias, no quant_config); dt_bias and A_log per
    value head; RMSNormGated over one value head."""
    a = facts.architecture
    key, value = _gdn_dims(facts)
    heads = a.linear_num_value_heads
    linear = a.hidden_size * (2 * key + 2 * value + 2 * heads) / tp + value * a.hidden_size / tp
    other = (2 * key + value) * a.linear_conv_kernel_dim / tp + 2 * heads / tp + a.linear_value_head_dim
    return linear, other


def _hybrid_layer(facts: catalog_models.ModelFacts, tp: int, index: int) -> ParamSplit:
    """One layer of a hybrid model: its token mixer (counted as the attention kind, which is what a
    quantization scope of `attention` covers), its MLP if it has one, and one RMSNorm before each."""
    mixer = facts.mixers[index]
    mixer_params = {"attention": _attention_params, "mamba2": _mamba2_params, "gdn": _gdn_params}.get(mixer)
    linear, other = mixer_params(facts, tp) if mixer_params else (0.0, 0.0)
    has_mlp = facts.mlp_layers[index]
    norms = facts.architecture.hidden_size * ((1 if mixer else 0) + (1 if has_mlp else 0))
    return ParamSplit(linear, _dense_mlp_params(facts, tp) if has_mlp else 0.0, 0.0, other + norms)


def _hybrid_decoder(facts: catalog_models.ModelFacts, tp: int, layers: int, start: int | None) -> ParamSplit:
    """Layers [start, start + layers) of a hybrid model; without a start, `layers` average layers
    (all of them for one stage)."""
    count = facts.architecture.num_hidden_layers
    first = 0 if start is None else start
    total = ParamSplit(0.0, 0.0, 0.0, 0.0)
    span = range(first, min(first + layers, count)) if start is not None or layers >= count else range(count)
    for index in span:
        total = total + _hybrid_layer(facts, tp, index)
    return total if start is not None or layers >= count else total.scaled(layers / count)


def _mtp_params(facts: catalog_models.ModelFacts) -> float:
    """Multi-token-prediction layers a checkpoint carries (Qwen3.5's mtp.*, qwen3_5_mtp.py: fc from
    2 × hidden to hidden, three RMSNorms, one full-attention layer with its MLP). vLLM skips them
    unless MTP speculation is configured (WeightsMapper "mtp.": None in qwen3_5.py), so they count
    only toward the published total."""
    a = facts.architecture
    if not a.mtp_num_hidden_layers:
        return 0.0
    layer = _attention_params(facts, 1)
    per_layer = 2 * a.hidden_size * a.hidden_size + 3 * a.hidden_size + sum(layer) \
        + _dense_mlp_params(facts, 1) + 2 * a.hidden_size
    return a.mtp_num_hidden_layers * per_layer


def _decoder_params(facts: catalog_models.ModelFacts, tp: int, layers: int,
                    shard: ExpertShard | None = None, start: int | None = None) -> ParamSplit:
    if facts.mixers:
        return _hybrid_decoder(facts, tp, layers, start)
    dense, moe = dense_and_moe_layers(facts, layers, start)
    total = ParamSplit(0.0, 0.0, 0.0, 0.0)
    if dense:
        total = total + _dense_layer(facts, tp).times(dense)
    if moe:
        total = total + _moe_layer(facts, tp, shard).times(moe)
    return total


def _layer_params(facts: catalog_models.ModelFacts, tp: int) -> ParamSplit:
    """One decoder layer (the average one for a MoE model with dense first layers)."""
    layers = facts.architecture.num_hidden_layers
    return _decoder_params(facts, tp, layers).scaled(1 / layers)


def vision_params(facts: catalog_models.ModelFacts, tp: int = 1) -> ParamSplit:
    """The vision tower and its projector, ViT-style (SigLIP/CLIP encoders as vLLM builds them,
    vllm/model_executor/models/siglip.py: QKVParallelLinear + o_proj and fc1/fc2 sharded by tensor
    parallel, biases, two LayerNorms per layer; a Conv2d patch embedding, a learned position table
    and a post-LayerNorm replicated) plus one projection from the tower's width to the text model's
    (Gemma-3's mm_input_projection; LLaVA's two-layer projector adds text_hidden² more, UNCONFIRMED
    per family). A published vision_config.num_parameters replaces the derived count."""
    v = facts.architecture.vision_config
    if v is None:
        return ParamSplit(0.0, 0.0, 0.0, 0.0)
    h, i, layers = v.hidden_size, v.intermediate_size, v.num_hidden_layers
    linear_per_layer = (4 * h * h + 2 * h * i) / tp
    other_per_layer = 4 * h + i + h + 4 * h  # q/k/v/o biases, fc biases, two LayerNorms (weight + bias)
    patches = (v.image_size // v.patch_size) ** 2 if v.image_size and v.patch_size else 0
    embed = (v.num_channels * (v.patch_size or 0) ** 2 * h + h) + patches * h + 2 * h
    projector = h * facts.architecture.hidden_size / tp
    linear = layers * linear_per_layer + projector
    other = layers * other_per_layer + embed
    if v.num_parameters:
        derived = layers * (4 * h * h + 2 * h * i) + h * facts.architecture.hidden_size + layers * other_per_layer + embed
        factor = v.num_parameters / derived
        linear, other = linear * factor, other * factor
    return ParamSplit(0.0, 0.0, 0.0, other, vision=linear)


def _embedding_params(facts: catalog_models.ModelFacts, tp: int) -> tuple[float, float]:
    """(input embedding incl. learned positions, lm_head) parameters on one GPU."""
    a = facts.architecture
    table = padded_vocab(a.vocab_size) / tp * a.hidden_size
    positions = (a.max_position_embeddings or 0) * a.hidden_size if facts.learned_positions else 0
    return table + positions + a.hidden_size, 0 if a.tie_word_embeddings else table


def _derived_embeddings(facts: catalog_models.ModelFacts) -> float:
    a = facts.architecture
    embeddings = a.vocab_size * a.hidden_size * (1 if a.tie_word_embeddings else 2)
    if facts.learned_positions:
        embeddings += (a.max_position_embeddings or 0) * a.hidden_size
    return embeddings + a.hidden_size


def derived_parameters(facts: catalog_models.ModelFacts) -> int:
    """Total parameters from the shapes alone (unpadded vocabulary), for cross-checks and for the
    plan to show beside a published count."""
    a = facts.architecture
    return round(_decoder_params(facts, 1, a.num_hidden_layers).total + _derived_embeddings(facts)
                 + vision_params(facts).total + _mtp_params(facts))


def _layer_scale(facts: catalog_models.ModelFacts) -> float:
    """Published count ÷ shape-derived count of the decoder layers: covers what config keys omit.
    A count given in the fleet's inline `architecture` is the user's statement about the
    checkpoint and is trusted (issue #18, item 3); a catalog count far from its own shapes is taken
    for a typo."""
    if not facts.num_parameters:
        return 1.0
    a = facts.architecture
    layers = _decoder_params(facts, 1, a.num_hidden_layers).total
    ratio = (facts.num_parameters - _derived_embeddings(facts) - vision_params(facts).total
             - _mtp_params(facts)) / layers
    if ratio <= 0:  # fewer parameters than the embeddings alone: not a count of this model
        return 1.0
    return ratio if not facts.from_catalog or 0.8 <= ratio <= 1.25 else 1.0


def parameter_counts(facts: catalog_models.ModelFacts) -> dict[str, int | float | None]:
    """What the plan reports: the published count (if any), the shape-derived one, and the scale
    applied to the decoder layers because of the difference."""
    return {"published": facts.num_parameters, "derived": derived_parameters(facts),
            "layer_scale": round(_layer_scale(facts), 4)}


def params_per_gpu(facts: catalog_models.ModelFacts, tp: int, pp: int, *, stage: Stage | None = None,
                   shard: ExpertShard | None = None) -> ParamSplit:
    """Parameters on one GPU of `stage` (without one: the busiest stage of an even split)."""
    layers = _stage_layers(facts.architecture.num_hidden_layers, pp, stage)
    decoder = _decoder_params(facts, tp, layers, shard, stage.start if stage else None).scaled(_layer_scale(facts))
    embed, lm_head = _embedding_params(facts, tp)
    # With pipeline parallel the first stage holds the embedding (and the vision tower), the last
    # the lm_head.
    vision = vision_params(facts, tp)
    if pp == 1:
        return decoder + vision + ParamSplit(0.0, 0.0, 0.0, embed + lm_head)
    if stage is not None:
        edges = ParamSplit(0.0, 0.0, 0.0, (embed if stage.first else 0.0) + ((lm_head or embed) if stage.last else 0.0))
        return decoder + edges + (vision if stage.first else ParamSplit(0.0, 0.0, 0.0, 0.0))
    last = lm_head or embed
    if embed + vision.total >= last:
        return decoder + vision + ParamSplit(0.0, 0.0, 0.0, embed)
    return decoder + ParamSplit(0.0, 0.0, 0.0, last)


def quantized_kinds(facts: catalog_models.ModelFacts, method: str) -> frozenset[str]:
    """Module kinds a method quantizes: the checkpoint's scope when the fleet or catalog gives one,
    else the method's own: MXFP4 only the routed experts (Mxfp4Config.get_quant_method,
    vllm/model_executor/layers/quantization/mxfp4.py: LinearBase → UnquantizedLinearMethod,
    RoutedExperts → the MXFP4 MoE method), every other method every decoder linear layer (a vision
    tower is usually in modules_to_not_convert: UNCONFIRMED per checkpoint)."""
    if facts.quantization_scope is not None:
        return facts.quantization_scope
    if method in quantization.EXPERTS_ONLY:
        return frozenset({"experts"})
    return frozenset({"attention", "mlp", "experts", "shared_experts"})


def rope_cache_bytes(facts: catalog_models.ModelFacts, dtype_bytes: int) -> int:
    """The rotary embedding's cos/sin table, a buffer allocated with the weights and so part of
    "Model loading took": [max_position_embeddings, rotary_dim] in the model dtype
    (RotaryEmbedding._compute_cos_sin_cache, vllm/model_executor/layers/rotary_embedding/base.py),
    one per GPU because get_rope caches one module per configuration (_ROPE_DICT). Partial rotary
    factors are not in the catalog, so the full head dimension is used (a slight over-estimate)."""
    a = facts.architecture
    if facts.learned_positions or not facts.rotary or not a.max_position_embeddings:
        return 0
    rotary_dim = (a.qk_rope_head_dim or 0) if facts.attention == "mla" else a.attention_head_dim
    if a.partial_rotary_factor:  # get_rope: rotary_dim = head_size × partial_rotary_factor
        rotary_dim = int(rotary_dim * a.partial_rotary_factor)
    return a.max_position_embeddings * rotary_dim * dtype_bytes


def _rope_events(facts: catalog_models.ModelFacts, dtype_bytes: int) -> list[allocator.Event]:
    """RotaryEmbedding.__init__ (vllm/model_executor/layers/rotary_embedding.py of 0.7.3,
    rotary_embedding/base.py of 0.10.1), built on the GPU inside the first attention layer:
    `_compute_cos_sin_cache` makes freqs = einsum(t, inv_freq), cos and sin ([P, R/2] float32 each)
    and cat((cos, sin)) ([P, R] float32); on return freqs, cos and sin are freed, then
    `cache.to(dtype)` keeps [P, R] in the model dtype and the float32 cat is freed. The freed
    float32 blocks stay in the pool and take later layers' tensors."""
    cache = rope_cache_bytes(facts, dtype_bytes)
    if not cache:
        return []
    half = cache // dtype_bytes * 4 // 2  # [P, R/2] float32
    return [("alloc", "rope.freqs", half), ("alloc", "rope.cos", half), ("alloc", "rope.sin", half),
            ("alloc", "rope.cat", 2 * half), ("free", "rope.freqs", 0), ("free", "rope.cos", 0),
            ("free", "rope.sin", 0), ("alloc", "rope.cache", cache), ("free", "rope.cat", 0)]


def weight_allocations(facts: catalog_models.ModelFacts, tp: int, dtype_bytes: int, stage: Stage,
                       shard: ExpertShard | None = None) -> list[allocator.Event] | None:
    """The GPU tensors one rank of `stage` creates while vLLM builds an unquantized decoder, in the
    order the model's __init__ creates them (LlamaModel / Qwen2Model of 0.7.3 and 0.10.1:
    embed_tokens; per layer self_attn (qkv_proj weight and bias, o_proj, the rotary embedding on the
    first layer only since get_rope caches it, q_norm/k_norm), mlp (gate_up_proj, down_proj; MoE:
    the router, then FusedMoE's w13 [E, 2I, H] and w2 [E, H, I], then shared experts), the two
    RMSNorms; the final norm and lm_head). None for the layouts this does not describe (hybrid
    mixers, MLA, vision towers)."""
    a = facts.architecture
    if facts.mixers or facts.attention == "mla" or a.vision_config is not None or a.attn_output_gate:
        return None
    b, hidden = dtype_bytes, a.hidden_size
    vocab = padded_vocab(a.vocab_size) // tp * hidden * b
    d = a.attention_head_dim
    q_out = a.num_attention_heads * d // tp
    qkv_out = q_out + 2 * kv_heads_per_gpu(a.kv_heads, tp) * d
    events: list[allocator.Event] = []
    if stage.first:
        events.append(("alloc", "embed", vocab))
        if facts.learned_positions:
            events.append(("alloc", "positions", (a.max_position_embeddings or 0) * hidden * b))
    dense, moe = dense_and_moe_layers(facts, stage.layers, stage.start)
    shard = shard or ExpertShard(tp)
    matrices = 2 if facts.dense_mlp == "plain" else 3
    for i in range(stage.layers):
        layer = [("alloc", (i, "qkv"), qkv_out * hidden * b)]
        if facts.qkv_bias:
            layer.append(("alloc", (i, "qkv_bias"), qkv_out * b))
        layer.append(("alloc", (i, "o_proj"), q_out * hidden * b))
        if i == 0:
            layer += _rope_events(facts, dtype_bytes)
        if facts.qk_norm:
            layer += [("alloc", (i, "q_norm"), d * b), ("alloc", (i, "k_norm"), d * b)]
        if i >= dense:
            local = shard.local_experts(facts.num_experts)
            width = facts.expert_intermediate_size // shard.width_divisor
            layer += [("alloc", (i, "router"), facts.num_experts * hidden * b),
                      ("alloc", (i, "w13"), local * 2 * width * hidden * b),
                      ("alloc", (i, "w2"), local * hidden * width * b)]
            if facts.shared_expert_intermediate_size:
                shared = facts.shared_expert_intermediate_size // tp
                layer += [("alloc", (i, "shared_gate_up"), 2 * shared * hidden * b),
                          ("alloc", (i, "shared_down"), shared * hidden * b)]
        else:
            width = a.intermediate_size // tp
            layer += [("alloc", (i, "gate_up"), (matrices - 1) * width * hidden * b),
                      ("alloc", (i, "down"), width * hidden * b)]
        layer += [("alloc", (i, "input_layernorm"), hidden * b), ("alloc", (i, "post_layernorm"), hidden * b)]
        events += layer
    if stage.last:
        events.append(("alloc", "norm", hidden * b))
        if not a.tie_word_embeddings or not stage.first:
            events.append(("alloc", "lm_head", vocab))
    return events


def allocator_slack_bytes(facts: catalog_models.ModelFacts, tp: int, pp: int, dtype_bytes: int,
                          method: str = "none", *, stage: Stage | None = None,
                          shard: ExpertShard | None = None,
                          alloc_conf: allocator.AllocatorConfig = allocator.DEFAULT) -> int:
    """What the caching allocator counts in "Model loading took" beyond the tensors' bytes
    (planner/allocator.py): e.g. Qwen2-7B at TP 1, whose qkv_proj (31.5 MiB), gate_up_proj (259 MiB)
    and down_proj (129.5 MiB) each hold a block up to 1 MiB larger, 2 MiB per layer and 57 MiB in
    all. Only unquantized weights are replayed (quantized ones are repacked after loading, which
    this does not follow); 0 where `weight_allocations` has no layout. `alloc_conf` is the server's
    PYTORCH_CUDA_ALLOC_CONF (Unsloth's: expandable segments, so no segment rounding, but
    roundup_power2_divisions, so Qwen3-4B's 741.9 MiB embedding holds 752 MiB)."""
    if method != "none":
        return 0
    num_layers = facts.architecture.num_hidden_layers
    stages = (stage,) if stage is not None else pipeline_stages(num_layers, pp)
    worst = 0
    for s in stages:
        events = weight_allocations(facts, tp, dtype_bytes, s, shard)
        if events is None:
            return 0
        worst = max(worst, allocator.slack_bytes(events, alloc_conf))
    return worst


def weight_bytes(facts: catalog_models.ModelFacts, tp: int, pp: int, dtype_bytes: int,
                 method: str = "none", group_size: int | None = None, *,
                 compute_capability: tuple[int, int] | None = None, stage: Stage | None = None,
                 shard: ExpertShard | None = None, vllm_version: tuple[int, ...] | None = None,
                 bnb_checkpoint=None, alloc_conf: allocator.AllocatorConfig = allocator.DEFAULT) -> int:
    """Weights on one GPU: quantized linear layers plus embeddings/lm_head/norms in model dtype,
    plus the buffers vLLM allocates with them (the rotary cos/sin cache) and, for unquantized
    weights, what the caching allocator's blocks hold beyond the tensors (`allocator_slack_bytes`),
    with MXFP4 experts padded
    to the shapes their kernel takes (`mxfp4_expert_padding`) and what the Triton kernels' weight
    conversion leaves behind (`mxfp4_triton_residue_bytes`, given the release). bitsandbytes is
    sized by planner/bnb.py (`bnb_checkpoint`: its skip list and double quantization). `alloc_conf`:
    the allocator settings of the server's PYTORCH_CUDA_ALLOC_CONF (allocator.AllocatorConfig)."""
    split = params_per_gpu(facts, tp, pp, stage=stage, shard=shard)
    cost = quantization.weight_cost(method, group_size, dtype_bytes)
    scope = quantized_kinds(facts, method)
    if method == "bitsandbytes":
        return round(_bnb_weight_total(facts, split, scope, tp, pp, dtype_bytes, group_size, stage, shard,
                                       vllm_version, bnb_checkpoint)) + rope_cache_bytes(facts, dtype_bytes)
    total = split.other * dtype_bytes
    padding = mxfp4_expert_padding(facts, tp, compute_capability, method, shard=shard)
    for kind, count in split.by_kind().items():
        if kind == "experts":
            count *= padding
        total += count * (cost.bytes_per_weight if kind in scope else dtype_bytes)
    residue = 0 if vllm_version is None else mxfp4_triton_residue_bytes(
        facts, tp, compute_capability, method, vllm_version, dtype_bytes, shard=shard,
        moe_layers=moe_layers_on(facts, pp, stage))
    slack = allocator_slack_bytes(facts, tp, pp, dtype_bytes, method, stage=stage, shard=shard,
                                  alloc_conf=alloc_conf)
    return round(total) + rope_cache_bytes(facts, dtype_bytes) + residue + slack


def _bnb_weight_total(facts: catalog_models.ModelFacts, split: ParamSplit, scope: frozenset[str], tp: int, pp: int,
                      dtype_bytes: int, group_size: int | None, stage: Stage | None, shard: ExpertShard | None,
                      vllm_version: tuple[int, ...] | None, checkpoint) -> float:
    """bitsandbytes weights of one GPU's layers (planner/bnb.py); `group_size` is the absmax block."""
    from fleetspec.planner import bnb

    if group_size and (checkpoint is None or checkpoint.blocksize is None):
        checkpoint = dataclasses.replace(checkpoint or bnb.Checkpoint(), blocksize=group_size)
    start = stage.start if stage is not None else 0
    layers = range(start, start + _stage_layers(facts.architecture.num_hidden_layers, pp, stage))
    return bnb.weight_bytes(facts, split, scope, dtype_bytes, vllm_version, checkpoint, layers, tp,
                            _layer_scale(facts), shard)


def mxfp4_triton_residue_bytes(facts: catalog_models.ModelFacts, tp: int,
                               compute_capability: tuple[int, int] | None, method: str,
                               vllm_version: tuple[int, ...], dtype_bytes: int, *,
                               shard: ExpertShard | None = None, moe_layers: int | None = None) -> int:
    """What converting MXFP4 experts for OpenAI's Triton kernels (the Hopper backend) adds to
    "Model loading took" on one GPU: the checkpoint-layout block scales (one byte per 32 padded
    expert weights) that releases before overheads.mxfp4_triton.scales_freed_since keep beside the
    swizzled copy, and the expert biases widened to float32 (catalog/data/overheads.yaml
    mxfp4_triton, read in mxfp4.py of 0.14.0 and fused_moe/oracle/mxfp4.py of 0.19/0.26)."""
    if not _hopper(compute_capability) or not facts.is_moe or method not in quantization.EXPERTS_ONLY:
        return 0
    shard = shard or ExpertShard(tp)
    experts = shard.local_experts(facts.num_experts)
    hidden = facts.architecture.hidden_size
    inter = _round_up(facts.expert_intermediate_size / shard.width_divisor, 64)
    layers = facts.moe_layers if moe_layers is None else moe_layers
    per_layer = experts * (2 * inter + hidden) * max(0, 4 - dtype_bytes)  # w13_bias [E, 2I], w2_bias [E, H]
    if vllm_version < overheads.load().mxfp4_triton_scales_freed_since:
        per_layer += experts * 3 * inter * hidden // 32  # w13 [E, 2I, H/32] + w2 [E, H, I/32] e8m0 scales
    return per_layer * layers


def moe_layers_on(facts: catalog_models.ModelFacts, pp: int, stage: Stage | None) -> int:
    """MoE layers one GPU holds: its stage's, else an even share of pp stages."""
    return dense_and_moe_layers(facts, stage.layers, stage.start)[1] if stage else -(-facts.moe_layers // pp)


def _hopper(compute_capability: tuple[int, int] | None) -> bool:
    """Compute capability 9.x, where vLLM runs MXFP4 experts on OpenAI's Triton kernels."""
    return compute_capability is not None and (9, 0) <= compute_capability < (10, 0)


def _round_up(value: float, multiple: int) -> int:
    return -(-int(value) // multiple) * multiple


def mxfp4_expert_padding(facts: catalog_models.ModelFacts, tp: int, compute_capability: tuple[int, int] | None,
                         method: str = "mxfp4", *, shard: ExpertShard | None = None) -> float:
    """How much larger MXFP4 expert weights are than the checkpoint's shapes, on one GPU: vLLM
    rounds hidden and per-rank intermediate sizes up to its MoE kernel's tile
    (mxfp4_round_up_hidden_size_and_intermediate_size, fused_moe/oracle/mxfp4.py of 0.33), and picks
    the kernel by device (_get_priority_backends_for_gpt_oss): FlashInfer TRT-LLM on Blackwell
    (hidden to 256, intermediate to 128), OpenAI's Triton kernels on Hopper (intermediate to 64),
    Marlin before Hopper (hidden to 256, intermediate to 128). 1.0 on an unknown device, and for
    other quantization methods. The intermediate size per rank is the MoE layer's (whole under
    expert parallel, ExpertShard)."""
    if compute_capability is None or not facts.is_moe or method not in quantization.EXPERTS_ONLY:
        return 1.0
    a = facts.architecture
    hidden, inter = a.hidden_size, facts.expert_intermediate_size / (shard or ExpertShard(tp)).width_divisor
    if _hopper(compute_capability):
        padded_hidden, padded_inter = hidden, _round_up(inter, 64)
    else:
        padded_hidden, padded_inter = _round_up(hidden, 256), _round_up(inter, 128)
    return padded_hidden * padded_inter / (hidden * inter)


# ---------------------------------------------------------------------------------------------
# LoRA


def lora_targets(facts: catalog_models.ModelFacts, target_modules: Iterable[str] | None,
                 vllm_version: tuple[int, ...] | str | None = None) -> tuple[str, ...]:
    """Packed modules vLLM wraps: all it supports, or those named by --lora-target-modules. With
    `vllm_version`, embed_tokens / lm_head only from the release whose model class declares them
    (ModelFacts.embedding_lora_since: Qwen3 from 0.15/0.16)."""
    supported = list(facts.lora_modules)
    since = facts.embedding_lora_since
    declared = since is None or vllm_version is None or _version_tuple(vllm_version) >= _version_tuple(since)
    if facts.embedding_lora and declared:
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


def _lora_layer_terms(facts: catalog_models.ModelFacts, tp: int, fully_sharded: bool,
                      shard: ExpertShard | None = None) -> dict[str, float]:
    """Per decoder layer, the A+B elements of each wrapped module per slot per unit of rank. MoE:
    FusedMoEWithLoRA stacks local experts x (w13 A 2H, w2 A and w13 B 3 x the per-rank
    intermediate, w2 B H), vllm/lora/layers/fused_moe.py of 0.32."""
    a = facts.architecture
    hidden, heads = a.hidden_size, a.num_attention_heads
    col_a = hidden / tp if fully_sharded else hidden  # A of column-parallel layers: [R, H]
    row_b = hidden / tp if fully_sharded else hidden  # B of row-parallel layers: [H, R]
    inter = a.intermediate_size / tp
    experts = facts.num_experts
    terms = {
        "gate_up_proj": 2 * col_a + 2 * inter,
        "down_proj": inter + row_b,
        "fc1": col_a + inter, "fc2": inter + row_b,  # plain MLP: column- then row-parallel
        "experts": (shard or ExpertShard(tp)).local_experts(experts)
        * (3 * hidden + 3 * facts.expert_intermediate_size / (shard or ExpertShard(tp)).width_divisor),
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
               fully_sharded: bool = False, *, stage: Stage | None = None, shard: ExpertShard | None = None,
               vllm_version: tuple[int, ...] | str | None = None) -> int:
    """GPU LoRA buffers on one GPU: vLLM preallocates `max_loras` slots at `max_lora_rank` on every
    wrapped module (vllm-facts §3.3), whatever the adapters' real ranks.

    With `vllm_version` before 0.12 the embedding and lm_head wrappers also hold the extra vocabulary
    (overheads.yaml lora.extra_vocab): embed lora_a has vocab + 256 rows, the logits wrapper's lora_b
    the vocab padded to 256, and each has an embeddings_tensors [max_loras, 256, hidden]
    (vllm/lora/layers.py create_lora_weights @0.8.5.post1)."""
    targets = lora_targets(facts, target_modules, vllm_version)
    terms = _lora_layer_terms(facts, tp, fully_sharded, shard)
    per_layer = sum(terms[m] for m in targets if m in terms)
    a = facts.architecture
    extra = extra_vocab_rows = 0
    padded_vocab = a.vocab_size
    c = overheads.load().lora
    if vllm_version is not None and _version_tuple(vllm_version) < c.extra_vocab_until:
        extra_vocab_rows = c.extra_vocab_size
        padded_vocab = -(-a.vocab_size // c.vocab_padding) * c.vocab_padding
        extra = c.extra_vocab_size * a.hidden_size  # embeddings_tensors, per slot, not per rank
    embed = a.vocab_size + extra_vocab_rows + a.hidden_size if "embed_tokens" in targets else 0
    head = a.hidden_size + padded_vocab if "lm_head" in targets else 0
    embed_extra = extra if "embed_tokens" in targets else 0
    head_extra = extra if "lm_head" in targets else 0
    if stage is not None:
        edges = (embed if stage.first else 0) + (head if stage.last else 0)
        edge_extra = (embed_extra if stage.first else 0) + (head_extra if stage.last else 0)
    else:
        edges = embed + head if pp == 1 else max(embed, head)
        edge_extra = embed_extra + head_extra if pp == 1 else max(embed_extra, head_extra)
    layers = _stage_layers(a.num_hidden_layers, pp, stage)
    return round(max_loras * lora_dtype_bytes * (max_rank * (layers * per_layer + edges) + edge_extra))


def lora_in_weights_line(vllm_version: tuple[int, ...] | str, v0: bool) -> bool:
    """Whether vLLM's "Model loading took X" line holds the LoRA buffers: V1 always (the manager is
    built inside load_model's DeviceMemoryProfiler), V0 from 0.8.0 (overheads.yaml lora)."""
    return not v0 or _version_tuple(vllm_version) >= overheads.load().lora.v0_in_weights_line_since


def lora_in_kv_budget(vllm_version: tuple[int, ...] | str, v0: bool) -> bool:
    """Whether vLLM's KV sizing takes the LoRA buffers off the budget: everywhere but V0 0.7.x, whose
    profiler counts them in no term, so they sit beyond the budget (overheads.yaml lora)."""
    c = overheads.load().lora
    return not (v0 and c.v0_uncounted_since <= _version_tuple(vllm_version) < c.v0_uncounted_until)


def _module_dims(facts: catalog_models.ModelFacts) -> dict[str, float]:
    """in + out features of each unpacked module of an adapter (full model, not sharded)."""
    a = facts.architecture
    hidden, heads, d = a.hidden_size, a.num_attention_heads, a.attention_head_dim
    dims = {
        "q_proj": hidden + heads * d, "k_proj": hidden + a.kv_heads * d, "v_proj": hidden + a.kv_heads * d,
        "o_proj": heads * d + hidden, "gate_proj": hidden + a.intermediate_size,
        "up_proj": hidden + a.intermediate_size, "down_proj": a.intermediate_size + hidden,
        "fc1": hidden + a.intermediate_size, "fc2": a.intermediate_size + hidden,
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
                       kv_cache_dtype: str = "auto", *, stage: Stage | None = None) -> float:
    """KV bytes one token takes on one GPU, all attention layers of its pipeline stage."""
    layers = _stage_layers(facts.architecture.num_hidden_layers, pp, stage)
    return layers * kv_bytes_per_token_per_layer(facts, tp, kv_bytes, kv_cache_dtype)


@dataclasses.dataclass(frozen=True)
class KvLayout:
    """How vLLM lays out one GPU's KV cache (vllm/v1/core/kv_cache_utils.py, overheads.yaml kv_cache):
    KV cache groups of `group_size` layers each ("full" or "sliding"), one block = one page of every
    layer of a group, all groups drawing blocks from one pool."""

    block: int
    page: float  # bytes of one block of one layer (KVCacheSpec.page_size_bytes)
    groups: tuple[str, ...]  # the kind of each group
    group_size: int
    window: int  # sliding_window tokens (0 without sliding groups)
    in_flight: int  # tokens scheduled but not settled (VllmConfig.max_in_flight_tokens)
    concurrency_report: bool  # "GPU KV cache size" = int(max_concurrency × max_model_len)
    layer_counts: tuple[int, ...] = (0, 0)  # (full, sliding[, state]) real layers, without padding
    # Hybrid Mamba / Gated DeltaNet models: blocks a request holds in each state ("mamba") group, and
    # the state groups' block_size as the pre-0.26 token line reads it (mamba_block_size:
    # max_model_len without prefix caching, the attention block with it).
    state_blocks: int = 1
    state_block_tokens: int = 0

    @property
    def bytes_per_block(self) -> float:
        return self.page * self.group_size

    @property
    def padding_layers(self) -> int:
        return len(self.groups) * self.group_size - sum(self.layer_counts)

    def num_blocks(self, available: int) -> int:
        return int(available // self.bytes_per_block) if available > 0 and self.bytes_per_block > 0 else 0

    def _group_blocks(self, kind: str, max_model_len: int) -> int:
        if kind == "mamba":  # MambaSpec.max_memory_usage_bytes: one state (two with prefix caching)
            return self.state_blocks
        if kind == "sliding":  # SlidingWindowSpec.max_admission_blocks_per_request
            return -(-min(self.window - 1 + self.in_flight, max_model_len) // self.block) + 1
        return -(-max_model_len // self.block)

    def blocks_per_request(self, max_model_len: int) -> int:
        return sum(self._group_blocks(kind, max_model_len) for kind in self.groups)

    def request_bytes(self, max_model_len: int) -> float:
        """KV memory one max_model_len request needs (_max_memory_usage_bytes_from_groups)."""
        return self.bytes_per_block * self.blocks_per_request(max_model_len)

    def tokens(self, available: int, max_model_len: int) -> int:
        """vLLM's "GPU KV cache size: N tokens" for this release."""
        blocks = self.num_blocks(available)
        if not blocks:
            return 0
        if self.concurrency_report:
            return int(blocks / self.blocks_per_request(max_model_len) * max_model_len)
        # min_block_size over the groups' specs (_report_kv_cache_config of 0.19)
        block = min(self.block, self.state_block_tokens) if "mamba" in self.groups else self.block
        return blocks // len(self.groups) * block

    @property
    def bytes_per_token(self) -> float:
        """KV bytes per token as the legacy report counts them (padding layers included); a state
        group's page does not grow with the tokens and is left out."""
        growing = sum(1 for kind in self.groups if kind != "mamba")
        return self.bytes_per_block * growing / self.block


def _groups(full: int, sliding: int, hybrid: bool, state: int = 0) -> tuple[tuple[str, ...], int]:
    """(group kinds, layers per group): _get_kv_cache_groups_uniform_page_size's split."""
    if state:  # state layers always get their own groups (unify_hybrid_kv_cache_specs cannot merge them)
        counts = {"sliding": sliding if hybrid else 0, "full": full + (0 if hybrid else sliding), "mamba": state}
        counts = {kind: n for kind, n in counts.items() if n}
        size = min(counts.values())
        if max(counts.values()) < size * 1.5:
            size = max(counts.values())
        return tuple(kind for kind, n in counts.items() for _ in range(-(-n // size))), size
    if not sliding:
        return ("full",), full
    if not full:
        return ("sliding",), sliding
    if not hybrid:  # unify_hybrid_kv_cache_specs: window layers promoted to full attention
        return ("full",), full + sliding
    size = min(full, sliding)
    if max(full, sliding) < size * 1.5:
        size = max(full, sliding)
    return ("sliding",) * -(-sliding // size) + ("full",) * -(-full // size), size


def ssm_state_dtype_bytes(facts: catalog_models.ModelFacts, dtype_bytes: int, version: tuple[int, ...],
                          override: str | None = None) -> int:
    """Bytes per element of the ssm (recurrent) state: --mamba-ssm-cache-dtype, else what the model's
    config class sets (Qwen3.5: the config's mamba_ssm_dtype; Nemotron-H: its mamba_ssm_cache_dtype or
    the release's default), else the model dtype (overheads.yaml mamba)."""
    c = overheads.load().mamba
    a = facts.architecture
    dtype = override if override not in (None, "auto") else None
    if dtype is None and "gdn" in facts.mixers and version >= c.config_ssm_dtype_since:
        dtype = a.mamba_ssm_dtype
    if dtype is None and "mamba2" in facts.mixers:
        dtype = a.mamba_ssm_cache_dtype or c.default_ssm_dtype(facts.family, version)
    return dtype_bytes if dtype in (None, "auto") else quantization.dtype_bytes(dtype)


def mamba_state_bytes(facts: catalog_models.ModelFacts, tp: int, dtype_bytes: int, ssm_bytes: int) -> int:
    """One state layer's page for one request on one GPU (MambaSpec.page_size_bytes before padding):
    the conv state (conv_kernel − 1 columns of the conv channels, model dtype: mamba_cache_dtype auto)
    plus the ssm state, with MambaStateShapeCalculator's shapes (mamba_utils.py): Mamba2
    (heads / tp, head_dim, state), Gated DeltaNet (value heads / tp, value dim, key dim)."""
    a = facts.architecture
    if "mamba2" in facts.mixers:
        channels = (a.mamba_num_heads * a.mamba_head_dim + 2 * mamba2_groups(facts, tp) * a.ssm_state_size) // tp
        conv = (a.conv_kernel - 1) * channels
        ssm = a.mamba_num_heads // tp * a.mamba_head_dim * a.ssm_state_size
    else:
        key, value = _gdn_dims(facts)
        conv = (a.linear_conv_kernel_dim - 1) * ((2 * key + value) // tp)
        ssm = a.linear_num_value_heads // tp * a.linear_value_head_dim * a.linear_key_head_dim
    return conv * dtype_bytes + ssm * ssm_bytes


def hybrid_block_size(block: int, state_page: int, attention_bytes_per_token: float) -> int:
    """The attention block vLLM picks so one attention page holds one state page
    (Platform._align_hybrid_block_size, platforms/interface.py of 0.32: a multiple of
    max(smallest kernel block, --block-size), never below --block-size)."""
    align = max(overheads.load().mamba.kernel_block_alignment, block)
    return max(block, align * math.ceil(state_page / (align * attention_bytes_per_token)))


def state_blocks_per_request(facts: catalog_models.ModelFacts, version: tuple[int, ...],
                             prefix_caching: bool | None) -> int:
    """State blocks one request holds per state group: 1, or with prefix caching (mamba_cache_mode
    "align", the default for hybrid models since overheads mamba.prefix_caching_since) 2, plus Mamba2's
    prefill checkpoint block in recent releases (MambaSpec.max_memory_usage_bytes)."""
    c = overheads.load().mamba
    caching = version >= c.prefix_caching_since if prefix_caching is None else prefix_caching
    if not caching:
        return 1
    return 2 + (1 if "mamba2" in facts.mixers and version >= c.prefill_checkpoint_since else 0)


def state_model_runs_v0(facts: catalog_models.ModelFacts, vllm_version: tuple[int, ...] | str,
                        use_v1_env: str | None = None) -> bool:
    """Whether `vllm serve` runs this Mamba / hybrid model on the V0 engine although the release defaults
    to V1 (overheads.yaml mamba.v0_until): 0.8-0.9 mark such models SupportsV0Only, 0.10.0/0.10.1 fall
    back "V1 mamba models are unoptimized" unless VLLM_USE_V1=1 is set explicitly (_is_v1_supported_oracle,
    engine/arg_utils.py @0.8.4 and @0.10.1)."""
    if not facts.is_hybrid and "mamba2" not in facts.mixers:
        return False
    version = _version_tuple(vllm_version)
    c = overheads.load()
    if version < c.v1_engine_since:
        return True
    if version >= c.mamba.v0_until:
        return False
    explicit_v1 = use_v1_env is not None and use_v1_env.strip() not in ("", "0")
    return not (explicit_v1 and version >= (0, 10))


def v0_capture_size(max_num_seqs: int) -> int:
    """V0's VllmConfig.pad_for_cudagraph(max_num_seqs): the smallest capture size ≥ max_num_seqs, sizes
    [1, 2, 4] + multiples of 8 (VllmConfig._set_cudagraph_sizes @0.8.4 and @0.10.1)."""
    c = overheads.load().mamba
    small = [size for size in c.v0_capture_small if size >= max_num_seqs]
    return small[0] if small else -(-max_num_seqs // c.v0_capture_step) * c.v0_capture_step


def v0_state_cache_bytes(facts: catalog_models.ModelFacts, tp: int, pp: int, max_num_seqs: int,
                         enforce_eager: bool, dtype_bytes: int, vllm_version: tuple[int, ...] | str, *,
                         mamba_ssm_cache_dtype: str | None = None, stage: Stage | None = None) -> int:
    """V0's MambaCacheManager on one GPU (model_executor/models/mamba_cache.py @0.8.4 and @0.10.1),
    allocated at the model's first forward, i.e. in the profile run, and kept: for each Mamba2 layer of
    this pipeline stage, max_batch_size conv states (conv_dim / tp × (conv_kernel − 1), model dtype) and
    ssm states (heads / tp × head_dim × state, --mamba-ssm-cache-dtype else the model dtype in 0.10.1),
    max_batch_size = max_num_seqs padded to a capture size unless enforce_eager
    (MambaCacheManager.__init__). 0 for models without Mamba2 layers (V0 has no Gated DeltaNet)."""
    if "mamba2" not in facts.mixers:
        return 0
    version = _version_tuple(vllm_version)
    layers = _stage_layers(facts.architecture.num_hidden_layers, pp, stage)
    start = stage.start if stage is not None else 0
    mamba_layers = facts.mixers[start:start + layers].count("mamba2")
    slots = max_num_seqs if enforce_eager else v0_capture_size(max_num_seqs)
    ssm = ssm_state_dtype_bytes(facts, dtype_bytes, version, mamba_ssm_cache_dtype)
    return mamba_layers * slots * mamba_state_bytes(facts, tp, dtype_bytes, ssm)


def kv_layout(facts: catalog_models.ModelFacts, tp: int, pp: int, kv_bytes: float, *,
              kv_cache_dtype: str = "auto", batched_tokens: int = 2048,
              vllm_version: tuple[int, ...] | str = MODELLED_RELEASES[1], host: bool = False,
              block: int | None = None, stage: Stage | None = None, dtype_bytes: int = 2,
              prefix_caching: bool | None = None, mamba_ssm_cache_dtype: str | None = None,
              max_model_len: int = 1 << 20, v0: bool = False) -> KvLayout:
    """`v0`: the V0 engine, whose CacheEngine gives blocks to the attention layers only (the state
    lives in MambaCacheManager: v0_state_cache_bytes)."""
    c = overheads.load()
    block = block or c.block_size
    version = _version_tuple(vllm_version)
    layers = _stage_layers(facts.architecture.num_hidden_layers, pp, stage)
    start = stage.start if stage is not None else 0
    kinds = facts.layer_kinds[start:start + layers] if facts.layer_kinds else ("full",) * layers
    sliding, state = kinds.count("sliding"), kinds.count("mamba")
    full = layers - sliding - state - kinds.count("none")
    if v0:
        state = 0
    hybrid = not host and not v0 and version >= c.hybrid_kv_since
    groups, size = _groups(full, sliding, hybrid, state)
    batches = c.in_flight_batches if version >= c.in_flight_batches_since and pp == 1 and not host else 1
    per_token = kv_bytes_per_token_per_layer(facts, tp, kv_bytes, kv_cache_dtype)
    state_blocks, state_tokens = 1, 0
    if state:
        ssm = ssm_state_dtype_bytes(facts, dtype_bytes, version, mamba_ssm_cache_dtype)
        state_page = mamba_state_bytes(facts, tp, dtype_bytes, ssm)
        block = hybrid_block_size(block, state_page, per_token) if full + sliding else block
        state_blocks = state_blocks_per_request(facts, version, prefix_caching)
        state_tokens = block if state_blocks > 1 else max_model_len
    page = state_page if state and not full + sliding else block * per_token  # attention-free: the state page
    counts = (full, sliding, state) if state else ((full, sliding) if "sliding" in groups or v0 else (layers, 0))
    return KvLayout(
        block=block, page=page, groups=groups, group_size=size,
        window=(facts.architecture.sliding_window or 0) if "sliding" in groups else 0,
        in_flight=batches * batched_tokens,
        concurrency_report=version >= c.kv_concurrency_report_since and not host,
        layer_counts=counts, state_blocks=state_blocks, state_block_tokens=state_tokens,
    )


def kv_bytes_per_request(facts: catalog_models.ModelFacts, tp: int, pp: int, kv_bytes: float,
                         max_model_len: int, batched_tokens: int, kv_cache_dtype: str = "auto",
                         block: int | None = None, vllm_version: tuple[int, ...] | str = (0, 19)) -> float:
    """KV memory one request of max_model_len tokens can claim: full-attention groups hold every
    block, sliding-window groups at most the window plus the in-flight tokens plus one block
    (SlidingWindowSpec.max_admission_blocks_per_request)."""
    return kv_layout(facts, tp, pp, kv_bytes, kv_cache_dtype=kv_cache_dtype, batched_tokens=batched_tokens,
                     vllm_version=vllm_version, block=block).request_bytes(max_model_len)


def kv_tokens(available: int, bytes_per_token: float, block: int | None = None) -> int:
    """vLLM's "GPU KV cache size: N tokens": whole blocks that fit in the available memory."""
    block = block or overheads.load().block_size
    if available <= 0 or bytes_per_token <= 0:
        return 0
    return int(available // (bytes_per_token * block)) * block


def largest_model_len(facts: catalog_models.ModelFacts, tp: int, pp: int, kv_bytes: float, available: int,
                      batched_tokens: int, kv_cache_dtype: str = "auto", limit: int | None = None,
                      block: int | None = None, layout: KvLayout | None = None) -> int:
    """Longest max_model_len whose one full request fits (vLLM's estimate_max_model_len search)."""
    layout = layout or kv_layout(facts, tp, pp, kv_bytes, kv_cache_dtype=kv_cache_dtype,
                                 batched_tokens=batched_tokens, vllm_version=(0, 19), block=block)

    def fits(length: int) -> bool:
        return layout.request_bytes(length) <= available

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


def _use_v1_env(use_v1_env: str | None) -> bool | None:
    """VLLM_USE_V1 as vLLM's envs reads it: None when unset, else whether it is on."""
    if use_v1_env is None:
        return None
    return use_v1_env.strip() not in ("", "0")


def runs_v0(vllm_version: tuple[int, ...] | str, compute_capability: tuple[int, int] | None = None, *,
            lora: bool = False, use_v1_env: str | None = None) -> bool:
    """Whether `vllm serve` of this release runs the V0 engine on this GPU (overheads.yaml engine):
    before 0.8 always; until 0.10 on GPUs below compute capability 8.0; in 0.8.0-0.8.2 with LoRA
    enabled, unless VLLM_USE_V1=1 is set explicitly (`_warn_or_fallback("LORA")`); and wherever
    VLLM_USE_V1=0 is set while the release still has V0."""
    c = overheads.load()
    version = _version_tuple(vllm_version)
    if version < c.v1_engine_since:
        return True
    env = _use_v1_env(use_v1_env)
    if env is False and version < c.use_v1_env_until:
        return True
    if lora and env is not True and c.v0_lora_fallback[0] <= version < c.v0_lora_fallback[1]:
        return True
    return (compute_capability is not None and compute_capability[0] < c.v0_fallback_below_major
            and version < c.v0_fallback_until)


def flashinfer_samples(vllm_version: tuple[int, ...] | str, installed: bool, env: str | None, v0: bool) -> bool:
    """Whether V1's sampler runs FlashInfer's top-k/top-p (overheads.yaml activation.flashinfer_sampler):
    VLLM_USE_FLASHINFER_SAMPLER=1/0 decides where it is set, else FlashInfer's presence in 0.8-0.11."""
    if v0 or not installed:
        return False
    if env is not None:
        return env.strip() not in ("", "0")
    on = overheads.load().flashinfer_sampler["default_on"]
    return _version_tuple(on["since"]) <= _version_tuple(vllm_version) < _version_tuple(on["until"])


def _v0(vllm_version: tuple[int, ...] | str, v0: bool | None) -> bool:
    return runs_v0(vllm_version) if v0 is None else v0


def activation_bytes(facts: catalog_models.ModelFacts, batched_tokens: int, max_num_seqs: int, pp: int,
                     vllm_version: tuple[int, ...] | str, *, tp: int = 1, dtype_bytes: int = 2,
                     v0: bool | None = None, flashinfer_sampler: bool = False, max_model_len: int = 0) -> int:
    """Peak of vLLM's profiling run: a forward pass of max_num_batched_tokens tokens and a dummy
    sampler over max_num_seqs rows of fp32 logits. V1: a measured base for the (compiled) forward
    plus the sampler's share by release (`sampler_bytes`). V0: the larger of its eager forward's
    peak and the sampler's (overheads.yaml activation.v0_forward); for a multimodal model whose
    dummy data the planner knows, over the tokens and sequences of V0's multimodal profile
    (`v0_mm_profile`), plus its pixel values, or the vision tower's peak where that is larger."""
    c = overheads.load()
    if _v0(vllm_version, v0):
        mm = v0_mm_profile(facts, batched_tokens, max_num_seqs, max_model_len, vllm_version)
        tokens, seqs = (mm.tokens, mm.seqs) if mm else (batched_tokens, max_num_seqs)
        hidden = tokens * facts.architecture.hidden_size * dtype_bytes
        sampler = sampler_bytes(facts, seqs, vllm_version) + hidden
        total = max(v0_forward_bytes(facts, tokens, tp, dtype_bytes), sampler)
        if mm:
            # The pixel values stay on the GPU through the whole forward (the model's kwargs); the
            # vision tower runs before the language model, one modality at a time, beside them.
            total = mm.pixel_bytes + max(total, hidden + v0_vision_step_bytes(facts, mm.largest_item_patches,
                                                                               tp, dtype_bytes))
    else:
        base = c.activation_base_bytes["moe" if facts.is_moe else "dense"] * batched_tokens / c.reference_batched_tokens
        total = base + sampler_bytes(facts, max_num_seqs, vllm_version, flashinfer=flashinfer_sampler)
    if pp > 1:
        total *= c.activation_pp_factor
    return round(total)


def v0_forward_bytes(facts: catalog_models.ModelFacts, batched_tokens: int, tp: int, dtype_bytes: int) -> int:
    """Peak of the V0 engine's eager profile forward: per token, the MLP's live outputs on one rank
    (gated: gate_up 2 × intermediate + activation 1 ×; plain 2 ×; MoE: top_k × 3 × the expert width,
    plus a shared expert) and a few hidden-sized tensors (overheads.yaml activation.v0_forward)."""
    a = facts.architecture
    if facts.is_moe:
        mlp = 3 * ((a.num_experts_per_tok or 1) * facts.expert_intermediate_size + facts.shared_expert_intermediate_size)
    else:
        mlp = (2 if facts.mlp == "plain" else 3) * a.intermediate_size
    per_token = mlp / tp + overheads.load().activation_v0_hidden_copies * a.hidden_size
    return round(batched_tokens * per_token * dtype_bytes)


# vLLM's Qwen2-VL processing info (model_executor/models/qwen2_vl.py of 0.8.4, 0.9.2, 0.10.1):
# `_MAX_FRAMES_PER_VIDEO = 16`, the most frames the dummy video gets.
QWEN2_VL_MAX_FRAMES_PER_VIDEO = 16
# From 0.8.3 V0 keeps the dummy prompt's multimodal data when it is longer than the profiled sequence
# (MultiModalProfiler.get_decoder_dummy_data only warns); up to 0.8.2 it profiled a text-only prompt
# of the sequence's length instead (`SequenceData.from_prompt_token_counts((0, seq_len))`, no
# multi_modal_data) — multimodal/profiling.py of 0.7.3, 0.8.0, 0.8.2 against 0.8.3, 0.8.4, 0.10.1.
V0_MM_PROMPT_KEPT_SINCE = (0, 8, 3)


@dataclasses.dataclass(frozen=True)
class V0MmProfile:
    """V0's multimodal profile run (`ModelRunner._dummy_run`, vllm/worker/model_runner.py of 0.7.3-0.10.1)."""
    seqs: int  # dummy sequences: min(max_num_seqs, max_num_batched_tokens // max multimodal tokens), at least 1
    tokens: int  # tokens of the language model's forward, over all sequences
    largest_item_patches: int  # vision patches of the largest item the tower encodes in one call
    # The fp32 pixel values of every dummy item on the GPU through the forward, twice: the batched
    # tensor in the model's kwargs (MultiModalKwargs.batch stacks the sequences' items, as_kwargs moves
    # it to the GPU without a cast) and the copy _validate_and_reshape_mm_tensor makes of it
    # (`torch.concat(list(mm_input))`, qwen2_5_vl.py of 0.8.4 / 0.9.2 / 0.10.1), which the image and
    # video inputs hold while get_input_embeddings_v0 and the language model run.
    pixel_bytes: int


@dataclasses.dataclass(frozen=True)
class _Qwen2VlItem:
    tokens: int
    patches: int


def _qwen2_vl_items(v, seq_len: int) -> tuple[_Qwen2VlItem, _Qwen2VlItem]:
    """The dummy image and video of the Qwen2-VL family for a profiled sequence of `seq_len` tokens
    (Qwen2VLProcessingInfo of 0.8.4: get_image_size_with_most_features resizes a 9999999² image with
    smart_resize(factor = patch × merge, max_pixels) to a square of floor(√max_pixels / factor) ×
    factor; _get_vision_info pads the frames to temporal_patch_size, grid_t = frames // temporal,
    patches = grid_t × (side / patch)², tokens = patches // merge²; get_num_frames_with_most_features
    gives the video the most frames whose tokens fit in seq_len − the image's, at most 16, at least 1)."""
    factor = v.patch_size * v.spatial_merge_size
    side = max(factor, math.isqrt(v.max_pixels) // factor * factor)
    grid = (side // v.patch_size) ** 2
    merge = v.spatial_merge_size ** 2

    def patches(frames: int) -> int:
        padded = frames + frames % v.temporal_patch_size
        return max(padded // v.temporal_patch_size, 1) * grid

    image = _Qwen2VlItem(patches(1) // merge, patches(1))
    frames = 0
    while patches(frames + 1) // merge <= seq_len - image.tokens:
        frames += 1
    frames = max(min(frames, QWEN2_VL_MAX_FRAMES_PER_VIDEO), 1)
    return image, _Qwen2VlItem(patches(frames) // merge, patches(frames))


def v0_mm_profile(facts: catalog_models.ModelFacts, batched_tokens: int, max_num_seqs: int, max_model_len: int,
                  vllm_version: tuple[int, ...] | str) -> V0MmProfile | None:
    """What V0's profile run feeds a multimodal model whose dummy data the planner knows (the
    Qwen2-VL family's: one image and one video, V0's default limit of 1 per modality,
    `get_default_limit_per_prompt`): it caps the sequences at max_num_batched_tokens // the
    modalities' maximum tokens (at least 1, computed at max_model_len), gives each sequence its share
    of max_num_batched_tokens, and from 0.8.3 keeps a dummy prompt longer than that share whole, so
    the language model runs the image's and video's tokens. None when the model is not such a model."""
    v = facts.architecture.vision_config
    if facts.mm_dummy != "qwen2_vl" or v is None or not (
            v.max_pixels and v.patch_size and v.spatial_merge_size and v.temporal_patch_size):
        return None
    image, video = _qwen2_vl_items(v, max_model_len or batched_tokens)
    seqs = max(1, min(max_num_seqs, batched_tokens // (image.tokens + video.tokens)))
    keep = _version_tuple(vllm_version) >= V0_MM_PROMPT_KEPT_SINCE
    per_patch = v.num_channels * v.temporal_patch_size * v.patch_size ** 2 * 4  # float32 pixel values
    tokens = largest = pixels = 0
    for i in range(seqs):
        seq_len = batched_tokens // seqs + (i < batched_tokens % seqs)
        image, video = _qwen2_vl_items(v, seq_len)
        if image.tokens + video.tokens > seq_len and not keep:
            tokens += seq_len  # text only
            continue
        tokens += max(seq_len, image.tokens + video.tokens)
        largest = max(largest, image.patches, video.patches)
        pixels += 2 * (image.patches + video.patches) * per_patch
    return V0MmProfile(seqs=seqs, tokens=tokens, largest_item_patches=largest, pixel_bytes=pixels)


def v0_vision_step_bytes(facts: catalog_models.ModelFacts, patches: int, tp: int, dtype_bytes: int) -> int:
    """Peak of one Qwen2.5-VL vision block over `patches` patches, eager (Qwen2_5_VisionBlock,
    qwen2_5_vl.py of 0.8.4): the block's input and its norm (2 × hidden) beside the larger of
    the MLP step (gate after SiLU, up and their product: 3 × intermediate per rank) and the attention
    step (the all-gathered qkv 3 × hidden, the contiguous q/k/v per rank, and the torch rotary path of
    apply_rotary_pos_emb_vision: q in float32 and three float32 temporaries of its size). Window or
    full attention is memory-efficient either way (FlashAttention varlen or xformers' block-diagonal
    mask), so the attention scores never materialise. Plus the bf16 copy of the item's pixel values."""
    v = facts.architecture.vision_config
    h, i = v.hidden_size, v.intermediate_size
    mlp = 3 * i / tp * dtype_bytes
    attention = (3 * h + 3 * h / tp) * dtype_bytes + 4 * (h / tp) * 4
    pixels = v.num_channels * (v.temporal_patch_size or 1) * (v.patch_size or 0) ** 2 * dtype_bytes
    return round(patches * (2 * h * dtype_bytes + max(mlp, attention) + pixels))


def sampler_bytes(facts: catalog_models.ModelFacts, max_num_seqs: int,
                  vllm_version: tuple[int, ...] | str = MODELLED_RELEASES[1], *, flashinfer: bool = False) -> int:
    """Transient peak of one dummy sampler pass over `max_num_seqs` rows of full-vocabulary fp32
    logits (`GPUModelRunner._dummy_sampler_run`: logits, top-k/top-p, softmax), in units of one
    fp32 logits tensor by era: since 0.17 a Triton top-k/top-p kernel filters in place, before it
    the whole vocabulary was sorted (fp32 values + int64 indices, cumsum, scatter) — overheads.yaml
    activation.sampler_eras."""
    c = overheads.load()
    factor = c.flashinfer_sampler["factor"] if flashinfer else c.sampler_factor_for(_version_tuple(vllm_version))
    return round(factor * max_num_seqs * facts.architecture.vocab_size * 4)


def warms_up_sampler_after_kv(vllm_version: tuple[int, ...] | str, v0: bool | None = None) -> bool:
    """The V1 engine (default since 0.8) runs the sampler once more after the KV cache is allocated
    and the CUDA graphs are captured (`Worker.compile_or_warm_up_model`, v1/worker/gpu_worker.py:
    "Warm up sampler and preallocate memory buffer for logits ... called after `capture_model` on
    purpose"); the V0 engine sampled only inside its profile run."""
    return not _v0(vllm_version, v0)


def warmup_free_bytes(total: int, budget: int, cuda_context: int, activation: int, cudagraph: int,
                      cudagraph_in_budget: bool) -> int:
    """GPU memory free when the sampler warm-up runs, for one replica alone on its GPUs.

    The budget reserved the profile run's activation peak, and vLLM empties its cache before
    allocating the KV cache, so that peak is free again; the CUDA context sits outside the budget;
    graphs captured outside the budget (vLLM < 0.21) were taken from the same free memory first."""
    outside_graphs = 0 if cudagraph_in_budget else cudagraph
    return total - budget - cuda_context + activation - outside_graphs



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
                    vllm_version: tuple[int, ...] | str = MODELLED_RELEASES[1], stage: Stage | None = None,
                    v0: bool | None = None) -> int:
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
    v1 = not _v0(version, v0)
    both = v1 and version >= c.full_and_piecewise_since
    firsts = [_piecewise_first_capture(facts, tp, dtype_bytes, largest)] if v1 else []
    if both or not v1:  # FULL graphs (V1 since 0.11; V0 captured whole-model graphs)
        firsts.append(_full_graph_first_capture(facts, tp, dtype_bytes, largest))
    modes = 2 if both else 1
    layers = _stage_layers(facts.architecture.num_hidden_layers, pp, stage)
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
