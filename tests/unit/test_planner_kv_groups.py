"""Hybrid and sliding-window attention (issue #18 item 4): which layers a window applies to, how
vLLM groups layers into KV cache groups and pads them, and the token count it logs per release.
Expectations are computed by hand from vllm/v1/core/kv_cache_utils.py (0.32 wheel):
_get_kv_cache_groups_uniform_page_size, get_kv_cache_config_from_groups,
get_max_concurrency_for_kv_cache_config and update_kv_cache_capacity."""

from __future__ import annotations

from fleetspec.catalog import models
from fleetspec.planner import budget, engine, findings, memory
from fleetspec.spec import models as spec

GIB = 1 << 30

# google/gemma-3-27b-it text_config: 62 layers, every 6th global (sliding_window_pattern 6).
GEMMA3_27B = {"model_type": "gemma3_text", "architectures": ["Gemma3ForConditionalGeneration"],
              "hidden_size": 5376, "intermediate_size": 21504, "num_hidden_layers": 62, "num_attention_heads": 32,
              "num_key_value_heads": 16, "head_dim": 128, "vocab_size": 262208, "sliding_window": 1024,
              "sliding_window_pattern": 6, "max_position_embeddings": 131072}
PAGE = 16 * 16 * 2 * 128 * 2  # block × KV heads × (K, V) × head dim × bf16 = 131072 B per layer


def resolve(model_id: str, **arch) -> models.ModelFacts:
    return models.resolve(spec.BaseModelSpec(id=model_id, architecture=arch or None))


def test_gemma3_five_local_one_global_and_the_padded_groups():
    g3 = resolve("google/gemma-3-27b-it", **GEMMA3_27B)
    assert g3.layer_kinds.count("full") == 10 and g3.sliding_layers == 52
    assert g3.layer_kinds[5] == "full" and g3.layer_kinds[6] == "sliding"
    layout = memory.kv_layout(g3, 1, 1, 2, batched_tokens=8192, vllm_version="0.19.0")
    # group size = min(52, 10) = 10 (52 ≥ 1.5 × 10): 6 window groups (8 padding layers) + 1 full
    assert layout.groups == ("sliding",) * 6 + ("full",) and layout.group_size == 10
    assert layout.padding_layers == 8
    assert layout.bytes_per_block == 10 * PAGE


def test_gemma3_tokens_differ_from_a_per_layer_sum_and_by_release():
    g3 = resolve("google/gemma-3-27b-it", **GEMMA3_27B)
    available = 20 * GIB
    blocks = available // (10 * PAGE)  # 16384
    per_layer_sum = memory.kv_tokens(available, 62 * PAGE / 16)
    old = memory.kv_layout(g3, 1, 1, 2, batched_tokens=8192, vllm_version="0.19.0")
    # ≤ 0.19: num_blocks // len(groups) × block_size
    assert old.tokens(available, 131072) == blocks // 7 * 16 == 37440
    assert per_layer_sum == 42272 and old.tokens(available, 131072) != per_layer_sum
    # 0.32: int(max_concurrency × max_model_len); a window group claims cdiv(1023 + 2 × 8192, 16) + 1
    new = memory.kv_layout(g3, 1, 1, 2, batched_tokens=8192, vllm_version="0.32.0")
    per_request = 6 * (-(-(1023 + 2 * 8192) // 16) + 1) + 131072 // 16
    assert new.blocks_per_request(131072) == per_request == 6 * 1089 + 8192
    assert new.tokens(available, 131072) == int(blocks / per_request * 131072)
    assert new.request_bytes(131072) == per_request * 10 * PAGE


def test_uniform_full_attention_is_unchanged_and_the_new_report_rounds_by_length():
    llama = resolve("meta-llama/Llama-3.1-8B-Instruct")
    old = memory.kv_layout(llama, 1, 1, 2, vllm_version="0.19.0")
    assert old.groups == ("full",) and old.group_size == 32
    assert old.tokens(GIB, 8192) == memory.kv_tokens(GIB, 131072) == 8192
    new = memory.kv_layout(llama, 1, 1, 2, vllm_version="0.32.0")
    assert new.tokens(GIB, 8192) == 8192
    # max_model_len 20000 is 1250 blocks exactly; 20001 needs 1251: the 0.32 line scales by length
    assert new.tokens(GIB, 20001) == int(512 / 1251 * 20001)


def test_without_the_hybrid_manager_window_layers_count_as_full():
    # CPU build (support_hybrid_kv_cache False) and V1 before the hybrid allocator:
    # unify_hybrid_kv_cache_specs promotes window layers to full attention.
    g3 = resolve("google/gemma-3-27b-it", **GEMMA3_27B)
    for layout in (memory.kv_layout(g3, 1, 1, 2, vllm_version="0.32.0", host=True),
                   memory.kv_layout(g3, 1, 1, 2, vllm_version="0.9.2")):
        assert layout.groups == ("full",) and layout.group_size == 62


def test_a_window_applies_only_to_the_layers_the_config_names():
    base = {"hidden_size": 1024, "intermediate_size": 4096, "num_hidden_layers": 4, "num_attention_heads": 8,
            "vocab_size": 32000, "sliding_window": 512}
    unknown = resolve("acme/x", **base)
    assert unknown.layer_kinds == ("full",) * 4 and unknown.window_layers_unknown
    assert any(f.code == "sliding-window-layers-unknown" for f in findings.architecture_findings(unknown))
    typed = resolve("acme/x", **base, layer_types=["sliding_attention", "full_attention"] * 2)
    assert typed.layer_kinds == ("sliding", "full", "sliding", "full") and not typed.window_layers_unknown
    # Mistral's code windows every layer (CacheConfig.sliding_window, no layer_types)
    mistral = resolve("acme/m", **base, model_type="mistral")
    assert mistral.layer_kinds == ("sliding",) * 4
    # Qwen2's use_sliding_window: false switches the window off
    off = resolve("acme/q", **base, model_type="qwen2", use_sliding_window=False)
    assert off.layer_kinds == ("full",) * 4 and not off.window_layers_unknown
    # gpt-oss: even layers windowed (OAIAttention, layer_idx % 2 == 0)
    oss = resolve("acme/o", **base, model_type="gpt_oss", num_local_experts=4)
    assert oss.layer_kinds == ("sliding", "full", "sliding", "full")


def test_the_budget_reports_the_groups():
    g3 = resolve("google/gemma-3-27b-it", **GEMMA3_27B)
    from fleetspec.catalog import gpus

    h100 = gpus.resolve(spec.GpuGroup(type="H100-80GB"))
    fleet = spec.FleetSpec.model_validate({
        "name": "g3", "base_model": {"id": "google/gemma-3-27b-it", "architecture": GEMMA3_27B,
                                     "max_model_len": 32768},
        "gpus": [{"type": "H100-80GB", "count": 1}], "servers": [{"name": "main"}],
        "runtime": {"vllm_version": "0.19.0"}})
    settings = engine.settings_for(fleet, fleet.servers[0], g3, h100)
    b = budget.compute(g3, settings, h100.total_bytes)
    assert b.kv_groups == ("sliding",) * 6 + ("full",) and b.kv_group_size == 10
    assert b.kv_tokens == (b.kv_cache // (10 * PAGE)) // 7 * 16
    assert b.to_json()["kv_cache_groups"] == {"kinds": list(b.kv_groups), "layers_per_group": 10}
