"""Architecture shapes (issue #18 item 3): MLP kind, published counts, quantization scope, shared
experts, vision towers, and the inline `architecture` block that states them. Each expectation is
computed by hand from config.json shapes and the vLLM module that builds them (cited per test)."""

from __future__ import annotations

import json
import textwrap

import pytest

from fleetspec import errors
from fleetspec.catalog import models
from fleetspec.planner import findings, memory
from fleetspec.spec import loading
from fleetspec.spec import models as spec


def resolve(model_id: str, **arch) -> models.ModelFacts:
    return models.resolve(spec.BaseModelSpec(id=model_id, architecture=arch or None))


SMALL = {"hidden_size": 1024, "intermediate_size": 4096, "num_hidden_layers": 4, "num_attention_heads": 8,
         "vocab_size": 32000, "max_position_embeddings": 4096}

# gpt-oss-20b, config.json of openai/gpt-oss-20b (MoE, MXFP4 experts, alternating 128-token window).
GPT_OSS_20B = {"model_type": "gpt_oss", "architectures": ["GptOssForCausalLM"], "hidden_size": 2880,
               "intermediate_size": 2880, "num_hidden_layers": 24, "num_attention_heads": 64,
               "num_key_value_heads": 8, "head_dim": 64, "vocab_size": 201088, "num_local_experts": 32,
               "num_experts_per_tok": 4, "sliding_window": 128, "max_position_embeddings": 131072}


# ---- MLP kind --------------------------------------------------------------------------------

def test_phi2_two_matrix_mlp_is_counted_as_two():
    # PhiMLP: fc1 (hidden → intermediate) and fc2 (back), vllm/model_executor/models/phi.py.
    phi = resolve("microsoft/phi-2")
    assert (phi.family, phi.mlp) == ("phi", "plain")
    per_layer = memory._layer_params(phi, 1)
    assert per_layer.mlp == 2 * 2560 * 10240
    # The catalog's published count and the shapes agree to the biases (0.02 %).
    assert memory.derived_parameters(phi) == pytest.approx(2779683840, rel=3e-4)


def test_inline_mlp_plain_for_an_unknown_family():
    gated, plain = resolve("acme/x", **SMALL), resolve("acme/x", **SMALL, mlp="plain")
    assert memory._layer_params(gated, 1).mlp == 3 * 1024 * 4096
    assert memory._layer_params(plain, 1).mlp == 2 * 1024 * 4096
    assert memory.weight_bytes(gated, 1, 1, 2) - memory.weight_bytes(plain, 1, 1, 2) == 4 * 1024 * 4096 * 2


def test_published_count_is_trusted_and_the_derived_one_reported():
    facts = resolve("acme/x", **SMALL, num_parameters=200_000_000)
    counts = memory.parameter_counts(facts)
    assert counts["published"] == 200_000_000
    assert counts["derived"] == memory.derived_parameters(resolve("acme/x", **SMALL))
    assert memory.params_per_gpu(facts, 1, 1).total == pytest.approx(200_000_000, rel=1e-3)
    found = [f for f in findings.architecture_findings(facts) if f.code == "parameter-count-differs"]
    assert found and "0.200 B parameters" in found[0].message and "the published count is used" in found[0].message


# ---- quantization scope ----------------------------------------------------------------------

def test_mxfp4_quantizes_the_experts_only():
    # Mxfp4Config.get_quant_method (layers/quantization/mxfp4.py): LinearBase → UnquantizedLinearMethod,
    # RoutedExperts → MXFP4 (0.5 B + one e8m0 scale per 32 weights); attention stays bf16.
    oss = resolve("openai/gpt-oss-20b", **GPT_OSS_20B)
    experts = 24 * 32 * 3 * 2880 * 2880
    assert memory.params_per_gpu(oss, 1, 1).experts == experts
    saved = memory.weight_bytes(oss, 1, 1, 2) - memory.weight_bytes(oss, 1, 1, 2, "mxfp4")
    saved -= memory.allocator_slack_bytes(oss, 1, 1, 2)  # the bf16 plan's allocator slack (unquantized only)
    assert saved == round(experts * (2 - (0.5 + 1 / 32)))
    # attention in bf16: 24 layers × (q 64×64 + k, v 8×64 each + o) × 2880 × 2 B
    attention = 24 * 2880 * (2 * 64 * 64 + 2 * 8 * 64)
    assert memory.params_per_gpu(oss, 1, 1).attention == attention


def test_quantization_scope_from_the_fleet_overrides_the_method_default():
    base = resolve("acme/x", **SMALL)
    mlp_only = resolve("acme/x", **SMALL, quantization_scope=["mlp"])
    split = memory.params_per_gpu(base, 1, 1)
    cost = 0.5 + 2.5 / 128  # AWQ, group 128
    assert memory.weight_bytes(mlp_only, 1, 1, 2, "awq") - memory.weight_bytes(base, 1, 1, 2, "awq") == \
        pytest.approx(split.attention * (2 - cost), abs=1)


def test_local_config_modules_to_not_convert_becomes_the_scope(tmp_path):
    model = tmp_path / "oss"
    model.mkdir()
    config = {**GPT_OSS_20B, "quantization_config": {
        "quant_method": "mxfp4",
        "modules_to_not_convert": ["model.layers.*.self_attn", "model.layers.*.mlp.router", "model.embed_tokens",
                                   "lm_head"]}}
    (model / "config.json").write_text(json.dumps(config))
    text = f"""\
        name: demo
        base_model: {{id: {model}}}
        gpus: 1x H100-80GB
        servers: [{{name: main}}]
        """
    loaded = loading.load_text(textwrap.dedent(text), str(tmp_path / "fleet.yaml"), base_dir=tmp_path)
    assert loaded.spec.base_model.architecture.quantization_scope == ["experts"]


# ---- shared experts and dense first layers ---------------------------------------------------

def test_deepseek_shared_experts_and_dense_first_layer_make_the_published_count():
    # DeepseekV2MoE.shared_experts: one MLP of moe_intermediate_size × n_shared_experts; layers
    # below first_k_dense_replace keep a dense DeepseekV2MLP (deepseek_v2.py).
    ds = resolve("deepseek-ai/DeepSeek-V2-Lite-Chat")
    assert (ds.num_experts, ds.moe_layers, ds.shared_expert_intermediate_size) == (64, 26, 2 * 1408)
    assert memory.derived_parameters(ds) == 15706484224  # the published total, exactly
    split = memory._decoder_params(ds, 1, 27)
    assert split.shared_experts == 26 * 3 * 2048 * 2816
    assert split.mlp == 1 * 3 * 2048 * 10944
    assert split.experts == 26 * 64 * 3 * 2048 * 1408


def test_qwen_moe_shared_expert_and_its_gate():
    # Qwen2MoeSparseMoeBlock: shared_expert (Qwen2MoeMLP of shared_expert_intermediate_size) and
    # shared_expert_gate, ReplicatedLinear(hidden, 1) (qwen2_moe.py).
    arch = {"model_type": "qwen2_moe", "hidden_size": 2048, "intermediate_size": 5632, "num_hidden_layers": 24,
            "num_attention_heads": 16, "num_key_value_heads": 16, "vocab_size": 151936, "num_experts": 60,
            "num_experts_per_tok": 4, "moe_intermediate_size": 1408, "shared_expert_intermediate_size": 5632}
    qwen = resolve("Qwen/Qwen1.5-MoE-A2.7B", **arch)
    layer = memory._moe_layer(qwen, 1)
    assert layer.shared_experts == 3 * 2048 * 5632
    without = resolve("Qwen/Qwen1.5-MoE-A2.7B", **{**arch, "shared_expert_intermediate_size": 0})
    assert layer.other - memory._moe_layer(without, 1).other == 2048  # the gate
    # tensor parallel shards the shared expert like any MLP
    assert memory._moe_layer(qwen, 2).shared_experts == 3 * 2048 * 5632 / 2


# ---- vision tower ----------------------------------------------------------------------------

SIGLIP = {"hidden_size": 1152, "intermediate_size": 4304, "num_hidden_layers": 27, "patch_size": 14,
          "image_size": 896}


def test_vision_tower_is_counted_and_sharded_by_tensor_parallel():
    text = resolve("acme/vlm", **SMALL)
    vlm = resolve("acme/vlm", **SMALL, vision_config=SIGLIP)
    tower = memory.vision_params(vlm)
    linear = 27 * (4 * 1152 ** 2 + 2 * 1152 * 4304) + 1152 * 1024  # + projection to the text width
    assert tower.vision == linear
    assert tower.other == 27 * (4 * 1152 + 4304 + 1152 + 4 * 1152) + (3 * 14 * 14 * 1152 + 1152) + 64 ** 2 * 1152 \
        + 2 * 1152
    assert memory.params_per_gpu(vlm, 1, 1).total - memory.params_per_gpu(text, 1, 1).total == tower.total
    assert memory.vision_params(vlm, 2).vision == linear / 2
    # vision weights stay in the model dtype under AWQ unless the scope says otherwise
    assert memory.weight_bytes(vlm, 1, 1, 2, "awq") - memory.weight_bytes(text, 1, 1, 2, "awq") == \
        round(tower.total * 2)
    found = {f.code for f in findings.architecture_findings(vlm)}
    assert "vision-encoder-profile-not-modelled" in found


def test_a_published_vision_count_scales_the_tower():
    vlm = resolve("acme/vlm", **SMALL, vision_config={**SIGLIP, "num_parameters": 400_000_000})
    assert memory.vision_params(vlm).total == pytest.approx(400_000_000)


# ---- the inline block: validation with locations ---------------------------------------------

def load_error(arch_yaml: str) -> errors.Diagnostic:
    text = f"""\
        name: demo
        base_model:
          id: acme/x
          architecture: {{hidden_size: 1024, intermediate_size: 4096, num_hidden_layers: 4,
                          num_attention_heads: 8, vocab_size: 32000, {arch_yaml}}}
        gpus: 1x L4
        servers: [{{name: main}}]
        """
    with pytest.raises(errors.SpecError) as raised:
        loading.load_text(textwrap.dedent(text))
    return raised.value.diagnostics[0]


@pytest.mark.parametrize(("arch", "path", "words"), [
    ("sliding_window: 512, layer_types: [full_attention, sliding_attention]",
     "base_model.architecture.layer_types", "lists 2 layer(s) but num_hidden_layers is 4"),
    ("layer_types: [full_attention, sliding_attention, full_attention, full_attention]",
     "base_model.architecture.layer_types", "sliding_window is not set"),
    ("sliding_window_pattern: 6", "base_model.architecture.sliding_window_pattern", "sliding_window is not"),
    ("n_shared_experts: 2", "base_model.architecture.n_shared_experts", "no expert count"),
    ("num_experts: 8, first_k_dense_replace: 9", "base_model.architecture.first_k_dense_replace",
     "more than num_hidden_layers"),
    ("quantization_scope: [experts]", "base_model.architecture.quantization_scope", "does not have"),
    ("mlp: fused", "base_model.architecture.mlp", ""),
    ("num_experts: 8, mlp: plain", "base_model.architecture", "has experts"),
])
def test_inline_architecture_errors_name_the_field(arch, path, words):
    diagnostic = load_error(arch)
    assert diagnostic.path == path
    assert words in diagnostic.message
    assert diagnostic.location is not None
