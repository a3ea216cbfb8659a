"""Second batch of catalog models from published config.json files: pre-quantized repacks (AWQ, GPTQ)
and text models. Lookup by id, the checkpoint's own quantization_config, and planned weights against
figures worked out by hand from the config shapes and the method's bytes per weight (arithmetic in each
test). The AWQ/GPTQ cost is 4-bit weights plus a float16 scale and a packed 4-bit zero point per group:
0.5 + 2.5 / group_size bytes per weight; embeddings, lm_head, norms and routers stay 2 bytes."""

from __future__ import annotations

import pytest

from fleetspec.catalog import models
from fleetspec.planner import fixes, memory
from fleetspec.spec import models as spec

ADDED = {
    "hugging-quants/Meta-Llama-3.1-70B-Instruct-AWQ-INT4": ("llama", "awq", 128),
    "TheBloke/Llama-2-7B-GPTQ": ("llama", "gptq", 128),
    "TheBloke/Mixtral-8x7B-Instruct-v0.1-AWQ": ("mixtral", "awq", 128),
    "Qwen/Qwen2-7B-Instruct": ("qwen2", "none", None),
    "Qwen/Qwen3-1.7B": ("qwen3", "none", None),
}
GROUPED_4BIT = 0.5 + 2.5 / 128  # bytes per quantized weight at group size 128


def facts(model_id: str) -> models.ModelFacts:
    return models.resolve(spec.BaseModelSpec(id=model_id))


@pytest.mark.parametrize("model_id", sorted(ADDED))
def test_added_models_resolve_with_their_checkpoint_quantization(model_id):
    f = facts(model_id)
    assert f is not None and f.from_catalog and f.id == model_id
    assert f.source.startswith("https://huggingface.co/")
    assert (f.family, f.checkpoint_quantization, f.checkpoint_group_size) == ADDED[model_id]
    if f.checkpoint_quantization in ("awq", "gptq"):
        assert f.default_dtype == "float16"


def test_lookup_is_case_insensitive_and_takes_a_local_path():
    assert facts("thebloke/llama-2-7b-gptq").id == "TheBloke/Llama-2-7B-GPTQ"
    assert facts("/models/hugging-quants/Meta-Llama-3.1-70B-Instruct-AWQ-INT4").id == \
        "hugging-quants/Meta-Llama-3.1-70B-Instruct-AWQ-INT4"


def test_llama31_70b_awq_int4_weights():
    # config.json: hidden 8192, intermediate 28672, 80 layers, 64 heads of 128, 8 KV heads, vocab 128256, untied.
    attention = 2 * 8192 * 8192 + 2 * 8192 * (8 * 128)  # q, o + k, v
    linear = 80 * (attention + 3 * 8192 * 28672)
    other = 80 * 2 * 8192 + 2 * 128256 * 8192 + 8192  # norms, embed_tokens + lm_head, final norm
    assert linear + other == 70_553_706_496  # the published Llama-3.1-70B total
    expected = linear * GROUPED_4BIT + other * 2
    assert expected == pytest.approx(39.77e9, rel=0.001)
    f = facts("hugging-quants/Meta-Llama-3.1-70B-Instruct-AWQ-INT4")
    assert memory.weight_bytes(f, 1, 1, 2, "awq", 128) == pytest.approx(expected, rel=0.02)
    assert memory.weight_bytes(f, 2, 1, 2, "awq", 128) == pytest.approx(expected / 2, rel=0.02)


def test_llama2_7b_gptq_main_branch_is_4bit_group_128():
    # config.json: hidden 4096, intermediate 11008, 32 layers, 32 heads = 32 KV heads, vocab 32000, untied;
    # quantization_config: gptq, bits 4, group_size 128, desc_act false.
    linear = 32 * (4 * 4096 * 4096 + 3 * 4096 * 11008)
    other = 32 * 2 * 4096 + 2 * 32000 * 4096 + 4096
    assert linear + other == 6_738_415_616
    expected = linear * GROUPED_4BIT + other * 2  # ≈ 3.89 GB
    f = facts("TheBloke/Llama-2-7B-GPTQ")
    assert memory.weight_bytes(f, 1, 1, 2, f.checkpoint_quantization, f.checkpoint_group_size) == \
        pytest.approx(expected, rel=0.02)


def test_mixtral_8x7b_awq_quantizes_the_experts_not_the_router():
    # config.json: hidden 4096, 32 layers, 32 heads of 128, 8 KV heads, 8 experts of 14336 (top-2), vocab 32000;
    # quantization_config: awq, bits 4, group_size 128, modules_to_not_convert [gate].
    f = facts("TheBloke/Mixtral-8x7B-Instruct-v0.1-AWQ")
    assert (f.is_moe, f.num_experts, f.moe_layers) == (True, 8, 32)
    experts = 32 * 8 * 3 * 4096 * 14336
    attention = 32 * (2 * 4096 * 4096 + 2 * 4096 * 1024)
    other = 32 * (4096 * 8 + 2 * 4096) + 2 * 32000 * 4096 + 4096  # routers, norms, embed, lm_head, final norm
    assert experts + attention + other == 46_702_792_704  # the published Mixtral-8x7B total
    assert memory.params_per_gpu(f, 1, 1).experts == experts
    expected = (experts + attention) * GROUPED_4BIT + other * 2  # ≈ 24.66 GB
    assert memory.weight_bytes(f, 1, 1, 2, "awq", 128) == pytest.approx(expected, rel=0.02)


def test_qwen25_72b_awq_has_the_padded_intermediate_size():
    # The AWQ config.json pads intermediate_size to 29696 = 232 groups of 128, so TP 2/4/8 slices stay
    # whole groups; the bf16 model's 29568 (231 groups) would not split over TP 2.
    awq = facts("Qwen/Qwen2.5-72B-Instruct-AWQ")
    assert (awq.architecture.intermediate_size, awq.num_parameters) == (29696, None)
    assert all(not fixes.tensor_parallel_problems(awq, tp, "awq", 128) for tp in (1, 2, 4, 8))
    assert fixes.tensor_parallel_problems(facts("Qwen/Qwen2.5-72B-Instruct"), 2, "awq", 128)
    attention = 2 * 8192 * 8192 + 2 * 8192 * 1024 + (8192 + 2 * 1024)  # q, o, k, v + q/k/v biases
    per_layer = attention + 3 * 8192 * 29696 + 2 * 8192
    assert memory.derived_parameters(awq) == 80 * per_layer + 2 * 152064 * 8192 + 8192


def test_text_models_shapes():
    qwen2 = facts("Qwen/Qwen2-7B-Instruct")
    assert (qwen2.qkv_bias, qwen2.architecture.kv_heads, qwen2.sliding_window_layers) == (True, 4, None)
    small = facts("Qwen/Qwen3-1.7B")
    assert small.architecture.tie_word_embeddings and small.architecture.attention_head_dim == 128
    # 28 layers x (q 2048 -> 2048, k/v 2048 -> 1024, o, gate/up/down 6144, two norms) + one tied embedding.
    per_layer = 2 * 2048 * 2048 + 2 * 2048 * 1024 + 3 * 2048 * 6144 + 2 * 2048
    assert memory.derived_parameters(small) == pytest.approx(28 * per_layer + 151936 * 2048 + 2048, rel=0.001)
