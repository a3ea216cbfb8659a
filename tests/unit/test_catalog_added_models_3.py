"""Third batch of catalog models from published config.json files: frontier MoE (Qwen3-235B-A22B,
DeepSeek-V3/R1 with FP8 block-quantized checkpoints), the 262144-token Qwen3 2507/Coder refreshes,
Gemma 3 (text and SigLIP-tower sizes), Qwen2.5-VL (a new family) and the Phi minis. Each test checks
the planner's shape-derived count against the published total, with the arithmetic written out and
the remainder the planner does not model (small norms) accounted for exactly."""

from __future__ import annotations

import pytest

from fleetspec.catalog import models
from fleetspec.planner import memory
from fleetspec.spec import models as spec

ADDED = {
    "Qwen/Qwen2.5-Coder-32B-Instruct": ("qwen2", "none"),
    "Qwen/Qwen3-235B-A22B": ("qwen3_moe", "none"),
    "Qwen/Qwen3-30B-A3B-Instruct-2507": ("qwen3_moe", "none"),
    "Qwen/Qwen3-Coder-30B-A3B-Instruct": ("qwen3_moe", "none"),
    "Qwen/Qwen3-4B-Instruct-2507": ("qwen3", "none"),
    "deepseek-ai/DeepSeek-V3": ("deepseek_v2", "fp8"),
    "deepseek-ai/DeepSeek-R1": ("deepseek_v2", "fp8"),
    "google/gemma-3-1b-it": ("gemma3", "none"),
    "google/gemma-3-4b-it": ("gemma3", "none"),
    "google/gemma-3-12b-it": ("gemma3", "none"),
    "google/gemma-3-27b-it": ("gemma3", "none"),
    "Qwen/Qwen2.5-VL-3B-Instruct": ("qwen2_5_vl", "none"),
    "Qwen/Qwen2.5-VL-7B-Instruct": ("qwen2_5_vl", "none"),
    "microsoft/Phi-3.5-mini-instruct": ("phi3", "none"),
    "microsoft/Phi-4-mini-instruct": ("phi3", "none"),
}


def facts(model_id: str) -> models.ModelFacts:
    return models.resolve(spec.BaseModelSpec(id=model_id))


@pytest.mark.parametrize("model_id", sorted(ADDED))
def test_added_models_resolve_from_the_catalog_with_a_source(model_id):
    f = facts(model_id)
    assert f is not None and f.from_catalog and f.id == model_id
    assert f.source.startswith("https://huggingface.co/") and f.source.endswith("/config.json")
    assert (f.family, f.checkpoint_quantization) == ADDED[model_id]
    assert f.default_dtype == "bfloat16"


def test_llama33_70b_is_the_llama31_70b_entry():
    # Same config.json shapes and 131072 context as Llama-3.1-70B-Instruct: an alias, not an entry.
    assert facts("meta-llama/Llama-3.3-70B-Instruct").id == "meta-llama/Llama-3.1-70B-Instruct"


def test_coder_32b_has_the_qwen25_32b_shapes():
    coder, base = facts("Qwen/Qwen2.5-Coder-32B-Instruct"), facts("Qwen/Qwen2.5-32B-Instruct")
    assert coder.architecture == base.architecture and coder.qkv_bias
    assert memory.derived_parameters(coder) == 32_763_876_352  # the published Qwen2.5-32B total


# ---- Qwen3 MoE ----------------------------------------------------------------------------------

def test_qwen3_235b_a22b_counts():
    # config.json: hidden 4096, 94 layers, 64 heads x 128, 4 KV heads, 128 experts of 1536 (top-8), vocab
    # 151936, untied, every layer MoE, no shared expert.
    f = facts("Qwen/Qwen3-235B-A22B")
    assert (f.is_moe, f.num_experts, f.moe_layers, f.shared_expert_intermediate_size) == (True, 128, 94, 0)
    attention = 4096 * 8192 + 2 * 4096 * 512 + 8192 * 4096  # q, k, v, o
    experts = 128 * 3 * 4096 * 1536
    per_layer = attention + experts + 4096 * 128 + 2 * 4096  # + router gate, two norms
    derived = 94 * per_layer + 2 * 151936 * 4096 + 4096
    assert memory.derived_parameters(f) == derived
    # The HF safetensors total also holds q_norm and k_norm (head_dim each) in every layer.
    assert f.num_parameters - derived == 94 * 2 * 128
    # TP 8 slices every expert's width by 8 (the published/derived layer scale is ~1 + 1e-7).
    assert memory.params_per_gpu(f, 8, 1).experts == pytest.approx(94 * experts / 8, rel=1e-6)
    assert f.max_position_embeddings == 40960


@pytest.mark.parametrize("model_id", ["Qwen/Qwen3-30B-A3B-Instruct-2507", "Qwen/Qwen3-Coder-30B-A3B-Instruct"])
def test_qwen3_30b_a3b_refreshes_have_the_base_shapes_and_a_256k_context(model_id):
    refresh, base = facts(model_id), facts("Qwen/Qwen3-30B-A3B")
    assert (refresh.max_position_embeddings, base.max_position_embeddings) == (262144, 40960)
    assert memory.derived_parameters(refresh) == memory.derived_parameters(base)
    assert (refresh.num_experts, refresh.moe_layers) == (128, 48)
    # 30532122624 published (safetensors / GGUF total) = derived + q_norm and k_norm of 48 layers.
    assert refresh.num_parameters - memory.derived_parameters(refresh) == 48 * 2 * 128
    # The rotary cos/sin cache grows with the context: [262144, 128] bf16.
    assert memory.rope_cache_bytes(refresh, 2) == 262144 * 128 * 2


def test_qwen3_4b_instruct_2507_is_qwen3_4b_with_a_256k_context():
    refresh, base = facts("Qwen/Qwen3-4B-Instruct-2507"), facts("Qwen/Qwen3-4B")
    assert refresh.architecture.model_copy(update={"max_position_embeddings": 40960}) == base.architecture
    assert (refresh.max_position_embeddings, refresh.architecture.tie_word_embeddings) == (262144, True)
    # 36 x (q 2560 -> 4096, k/v -> 1024, o, gate/up/down 9728, two norms) + one tied 151936 x 2560 table;
    # with q_norm/k_norm (128 each) it is the GGUF's "4.02 B" (untied would be 4.41B).
    per_layer = 2560 * 4096 + 2 * 2560 * 1024 + 4096 * 2560 + 3 * 2560 * 9728 + 2 * 2560
    derived = 36 * per_layer + 151936 * 2560 + 2560
    assert memory.derived_parameters(refresh) == derived
    assert round((derived + 36 * 256) / 1e9, 2) == 4.02


# ---- DeepSeek-V3 / R1 (MLA, 3 dense + 58 MoE layers, FP8 block checkpoint) ---------------------------

def test_deepseek_v3_counts_and_r1_is_the_same_architecture():
    v3, r1 = facts("deepseek-ai/DeepSeek-V3"), facts("deepseek-ai/DeepSeek-R1")
    assert r1.architecture == v3.architecture
    assert (v3.attention, v3.num_experts, v3.moe_layers, v3.shared_expert_intermediate_size) == \
        ("mla", 256, 58, 2048)
    hidden, heads = 7168, 128
    attention = (hidden * 1536 + 1536 * heads * (128 + 64)  # q_a_proj, q_b_proj
                 + hidden * (512 + 64) + 512 * heads * (128 + 128)  # kv_a_proj_with_mqa, kv_b_proj
                 + heads * 128 * hidden)  # o_proj
    norms = 512 + 2 * hidden  # kv_a_layernorm, input/post-attention norms
    dense = 3 * hidden * 18432
    moe = 256 * 3 * hidden * 2048 + 3 * hidden * 2048 + hidden * 256  # routed, shared, router gate
    derived = 61 * (attention + norms) + 3 * dense + 58 * moe + 2 * 129280 * hidden + hidden
    assert memory.derived_parameters(v3) == derived
    # A recount of the main model (no MTP layer) gives 671026419200: the planner leaves out
    # q_a_layernorm (1536 per layer) and the router's e_score_correction_bias (256 per MoE layer).
    assert derived + 61 * 1536 + 58 * 256 == 671_026_419_200


def test_deepseek_v3_fp8_weights_and_mla_cache():
    f = facts("deepseek-ai/DeepSeek-V3")
    split = memory.params_per_gpu(f, 1, 1)
    # FP8 (one byte) on every decoder linear layer; embeddings, lm_head, norms and routers in bf16.
    rope = 163840 * 64 * 2  # cos/sin cache over the rope part of the head only
    assert memory.weight_bytes(f, 1, 1, 2, "fp8") == round(split.linear + split.other * 2) + rope
    embeddings = 2 * 129280 * 7168  # embed_tokens + lm_head, 1.85e9 of the 1.96e9 bf16 parameters
    assert split.other == pytest.approx(embeddings + 7168 + 61 * (512 + 2 * 7168) + 58 * 7168 * 256)
    # ~669.1e9 one-byte weights + ~1.96e9 two-byte ones: about 673 GB, 84 GB a GPU at TP 8.
    assert memory.weight_bytes(f, 1, 1, 2, "fp8") / 1e9 == pytest.approx(673.0, rel=0.001)
    # MLA caches one 512 + 64 latent per token and layer, the same on every tensor-parallel rank.
    for tp in (1, 8):
        assert memory.kv_bytes_per_token(f, tp, 1, 2) == 61 * (512 + 64) * 2


# ---- Gemma 3 ------------------------------------------------------------------------------------

GEMMA3 = {  # layers, hidden, head_dim, sliding layers, window, published total, tower
    "google/gemma-3-1b-it": (26, 1152, 256, 22, 512, 999_885_952, False),
    "google/gemma-3-4b-it": (34, 2560, 256, 29, 1024, 4_300_079_472, True),
    "google/gemma-3-12b-it": (48, 3840, 256, 40, 1024, 12_187_325_040, True),
    "google/gemma-3-27b-it": (62, 5376, 128, 52, 1024, 27_432_406_640, True),
}


@pytest.mark.parametrize("model_id", sorted(GEMMA3))
def test_gemma3_windows_and_published_counts(model_id):
    layers, hidden, head_dim, sliding, window, published, tower = GEMMA3[model_id]
    f = facts(model_id)
    assert (f.sliding_window_layers, f.sliding_layers, f.architecture.sliding_window) == ("pattern", sliding, window)
    assert all(kind == ("full" if (i + 1) % 6 == 0 else "sliding") for i, kind in enumerate(f.layer_kinds))
    assert f.architecture.attention_head_dim == head_dim and f.architecture.tie_word_embeddings
    assert (f.architecture.vision_config is not None) is tower
    # Gemma3DecoderLayer has four RMSNorms plus q_norm/k_norm (head_dim each) where the planner counts two
    # norms, and the multimodal projector's mm_soft_emb_norm (1152); nothing else differs.
    unmodelled = layers * (2 * hidden + 2 * head_dim) + (1152 if tower else 0)
    assert published - memory.derived_parameters(f) == unmodelled


def test_gemma3_4b_by_hand():
    # text: hidden 2560, 34 layers, 8 heads x 256 (q 2048 wide, o 2048 -> 2560), 4 KV heads, MLP 10240,
    # vocab 262208 tied; SigLIP tower 27 x (hidden 1152, MLP 4304), 896 / 14 = 64 x 64 patches.
    f = facts("google/gemma-3-4b-it")
    text_layer = 2560 * 2048 + 2 * 2560 * 1024 + 2048 * 2560 + 3 * 2560 * 10240 + 2 * 2560
    tower = (27 * (4 * 1152 ** 2 + 2 * 1152 * 4304 + 4 * 1152 + 4304 + 1152 + 4 * 1152)
             + 3 * 14 * 14 * 1152 + 1152 + 64 ** 2 * 1152 + 2 * 1152 + 1152 * 2560)  # + patch/pos, post-LN, projector
    assert memory.vision_params(f).total == tower
    assert memory.derived_parameters(f) == 34 * text_layer + 262208 * 2560 + 2560 + tower


def test_gemma3_27b_kv_per_token_uses_head_dim_128():
    f = facts("google/gemma-3-27b-it")
    assert memory.kv_bytes_per_token_per_layer(f, 1, 2) == 16 * 2 * 128 * 2  # not 5376 / 32 = 168
    assert memory.kv_bytes_per_token_per_layer(f, 2, 2) == 8 * 2 * 128 * 2


# ---- Qwen2.5-VL -----------------------------------------------------------------------------------

def test_qwen25_vl_family_facts():
    f = facts("Qwen/Qwen2.5-VL-7B-Instruct")
    assert (f.qkv_bias, f.embedding_lora, f.mlp, f.lora_supported) == (True, False, "gated", True)
    assert f.lora_modules == ("qkv_proj", "o_proj", "gate_up_proj", "down_proj")
    assert f.max_position_embeddings == 128000 and f.sliding_window_layers is None


@pytest.mark.parametrize(("model_id", "text_id", "merger_out"), [
    ("Qwen/Qwen2.5-VL-3B-Instruct", "Qwen/Qwen2.5-3B-Instruct", 2048),
    ("Qwen/Qwen2.5-VL-7B-Instruct", "Qwen/Qwen2.5-7B-Instruct", 3584),
])
def test_qwen25_vl_tower_and_text_add_up_to_the_published_total(model_id, text_id, merger_out):
    f, text = facts(model_id), facts(text_id)
    # Tower as transformers builds it (torchinfo of Qwen2_5_VisionTransformerPretrainedModel): Conv3d
    # 3 -> 1280 over (2, 14, 14), no bias; 32 blocks of qkv 1280 -> 3840 + proj (biased), gate/up/down
    # 1280 <-> 3420 (biased), two RMSNorms; merger ln_q + 5120 -> 5120 -> text width (biased).
    block = 1280 * 3840 + 3840 + 1280 * 1280 + 1280 + 2 * 1280 * 3420 + 2 * 3420 + 3420 * 1280 + 1280 + 2 * 1280
    assert block == 19_702_200
    tower = 3 * 2 * 14 * 14 * 1280 + 32 * block + 1280 + 5120 * 5120 + 5120 + 5120 * merger_out + merger_out
    assert memory.vision_params(f).total == f.architecture.vision_config.num_parameters == tower
    # The language model is the Qwen2.5 text model of the same size.
    assert memory.derived_parameters(f) - tower == memory.derived_parameters(text)
    assert memory.derived_parameters(f) == f.num_parameters
    # The tower stays bf16 under a decoder-only method and is sharded by tensor parallel.
    assert memory.params_per_gpu(f, 2, 1).vision == pytest.approx(memory.vision_params(f, 1).vision / 2)


# ---- Phi minis ----------------------------------------------------------------------------------

def test_phi4_mini_gqa_and_tied_embeddings():
    # config.json: hidden 3072, 24 heads (head_dim 128), 8 KV heads, MLP 8192, 32 layers, vocab 200064, tied.
    f = facts("microsoft/Phi-4-mini-instruct")
    assert f.architecture.attention_head_dim == 128 and f.architecture.kv_heads == 8
    per_layer = 3072 * 3072 + 2 * 3072 * 1024 + 3072 * 3072 + 3 * 3072 * 8192 + 2 * 3072
    assert memory.derived_parameters(f) == 32 * per_layer + 200064 * 3072 + 3072 == f.num_parameters
    assert memory.kv_bytes_per_token(f, 1, 1, 2) == 32 * 8 * 2 * 128 * 2


def test_phi35_mini_is_phi3_mini_128k_shaped():
    new, old = facts("microsoft/Phi-3.5-mini-instruct"), facts("microsoft/Phi-3-mini-128k-instruct")
    assert new.architecture == old.architecture
    assert memory.derived_parameters(new) == old.num_parameters == 3_821_079_552
