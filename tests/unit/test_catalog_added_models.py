"""Catalog models added from published config.json files: lookup by id and alias, family facts, and
planned weights against parameter counts worked out by hand from the config shapes (the arithmetic
is written out in each test; model cards publish these totals only rounded: 6.7B, 0.49B, 30.5B, 117B)."""

from __future__ import annotations

import pytest

from fleetspec.catalog import models
from fleetspec.planner import memory
from fleetspec.spec import models as spec

ADDED = [
    "meta-llama/Llama-2-7b-chat-hf", "meta-llama/Llama-2-13b-chat-hf", "meta-llama/Llama-2-70b-chat-hf",
    "meta-llama/Meta-Llama-3-70B-Instruct", "meta-llama/Llama-3.2-1B-Instruct", "meta-llama/Llama-3.2-3B-Instruct",
    "Qwen/Qwen2.5-0.5B-Instruct", "Qwen/Qwen2.5-1.5B-Instruct", "Qwen/Qwen2.5-3B-Instruct",
    "Qwen/Qwen2.5-Coder-7B-Instruct", "Qwen/Qwen1.5-7B-Chat", "Qwen/Qwen3-0.6B", "Qwen/Qwen3-4B", "Qwen/Qwen3-14B",
    "Qwen/Qwen3-30B-A3B", "openai/gpt-oss-20b", "openai/gpt-oss-120b", "mistralai/Mistral-Nemo-Instruct-2407",
    "mistralai/Mistral-Small-24B-Instruct-2501", "mistralai/Mixtral-8x22B-Instruct-v0.1", "microsoft/phi-4",
    "microsoft/Phi-3-medium-4k-instruct",
]


def facts(model_id: str) -> models.ModelFacts:
    return models.resolve(spec.BaseModelSpec(id=model_id))


@pytest.mark.parametrize("model_id", ADDED)
def test_added_models_resolve_from_the_catalog_with_a_source(model_id):
    f = facts(model_id)
    assert f is not None and f.from_catalog and f.id == model_id
    assert f.source.startswith("https://huggingface.co/")
    assert f.family in {"llama", "qwen2", "qwen3", "qwen3_moe", "gpt_oss", "mistral", "mixtral", "phi3"}


@pytest.mark.parametrize(("alias", "canonical"), [
    ("meta-llama/Llama-2-7b-hf", "meta-llama/Llama-2-7b-chat-hf"),
    ("META-LLAMA/llama-2-13b-hf", "meta-llama/Llama-2-13b-chat-hf"),
    ("/models/meta-llama/Llama-3.2-1B", "meta-llama/Llama-3.2-1B-Instruct"),
    ("Qwen/Qwen2.5-3B", "Qwen/Qwen2.5-3B-Instruct"),
    ("meta-llama/Llama-3-70B-Instruct", "meta-llama/Meta-Llama-3-70B-Instruct"),
])
def test_aliases(alias, canonical):
    assert facts(alias).id == canonical


def test_llama2_7b_weights_are_two_bytes_per_parameter():
    # config.json: hidden 4096, intermediate 11008, 32 layers, 32 heads = 32 KV heads (MHA), vocab 32000, untied.
    per_layer = 4 * 4096 * 4096 + 3 * 4096 * 11008 + 2 * 4096  # q, k, v, o + gate, up, down + two RMSNorms
    params = 32 * per_layer + 2 * 32000 * 4096 + 4096  # + embed_tokens, lm_head, final norm
    assert params == 6_738_415_616
    f = facts("meta-llama/Llama-2-7b-chat-hf")
    assert memory.derived_parameters(f) == params
    assert memory.weight_bytes(f, 1, 1, 2) == pytest.approx(2 * params, rel=0.01)


def test_qwen25_05b_tied_embeddings_and_qkv_bias():
    # config.json: hidden 896, intermediate 4864, 24 layers, 14 heads of 64, 2 KV heads, vocab 151936, tied.
    attention = 896 * 896 + 2 * 896 * (2 * 64) + 896 * 896 + (896 + 2 * 128)  # q, k, v, o + q/k/v biases
    per_layer = attention + 3 * 896 * 4864 + 2 * 896
    params = 24 * per_layer + 151936 * 896 + 896  # one embedding table (tied lm_head) + final norm
    assert params == pytest.approx(0.494e9, rel=0.002)  # model card: 0.49B
    f = facts("Qwen/Qwen2.5-0.5B-Instruct")
    assert f.architecture.tie_word_embeddings and f.qkv_bias
    assert memory.derived_parameters(f) == params
    assert memory.weight_bytes(f, 1, 1, 2) == pytest.approx(2 * params, rel=0.01)


def test_qwen3_30b_a3b_is_moe_without_a_shared_expert():
    # config.json: hidden 2048, 48 layers, 32 heads x head_dim 128, 4 KV heads, 128 experts of 768, top-8.
    f = facts("Qwen/Qwen3-30B-A3B")
    assert (f.family, f.is_moe, f.num_experts, f.moe_layers, f.shared_expert_intermediate_size) == \
        ("qwen3_moe", True, 128, 48, 0)
    attention = 2048 * 4096 + 2 * 2048 * 512 + 4096 * 2048  # q (32 x 128), k, v (4 x 128), o
    experts = 128 * 3 * 2048 * 768
    per_layer = attention + experts + 2048 * 128 + 2 * 2048  # + router gate, two norms
    params = 48 * per_layer + 2 * 151936 * 2048 + 2048
    assert params == pytest.approx(30.5e9, rel=0.002)  # model card: 30.5B total
    assert memory.derived_parameters(f) == params
    assert memory.params_per_gpu(f, 1, 1).experts == 48 * experts
    assert memory.weight_bytes(f, 1, 1, 2) == pytest.approx(2 * params, rel=0.01)


def test_gpt_oss_120b_mxfp4_experts_and_alternating_window():
    # config.json: 36 layers alternating sliding (128 tokens) / full, 128 experts of 2880, 64 heads of 64, 8 KV heads.
    f = facts("openai/gpt-oss-120b")
    assert (f.checkpoint_quantization, memory.quantized_kinds(f, "mxfp4")) == ("mxfp4", frozenset({"experts"}))
    assert f.layer_kinds == ("sliding", "full") * 18 and f.architecture.sliding_window == 128
    experts = 36 * 128 * 3 * 2880 * 2880
    attention = 36 * 2880 * (2 * 64 * 64 + 2 * 8 * 64)
    rest = attention + 36 * (2880 * 128 + 2 * 2880) + 2 * 201088 * 2880 + 2880  # router, norms, embed, lm_head
    assert experts + rest == pytest.approx(116.8e9, rel=0.002)  # card: 117B total
    expected = experts * (0.5 + 1 / 32) + rest * 2  # MXFP4 experts (e8m0 scale per 32), the rest bf16
    assert memory.weight_bytes(f, 1, 1, 2, "mxfp4") == pytest.approx(expected, rel=0.01)
    assert facts("openai/gpt-oss-20b").layer_kinds == ("sliding", "full") * 12


def test_llama32_and_mistral_nemo_head_dims_come_from_the_config():
    assert facts("meta-llama/Llama-3.2-1B-Instruct").architecture.attention_head_dim == 64
    nemo = facts("mistralai/Mistral-Nemo-Instruct-2407")
    assert nemo.architecture.attention_head_dim == 128  # not 5120 / 32 = 160
    assert (nemo.sliding_window_layers, nemo.max_position_embeddings) == (None, 1024000)
