"""The planner's catalog: model lookup, GPU memory, quantization byte costs, cited data."""

from __future__ import annotations

import pytest

from fleetspec.catalog import data_files, gpus, models, quantization
from fleetspec.spec import models as spec

GIB = 1 << 30


def base(model_id: str, **kw) -> spec.BaseModelSpec:
    return spec.BaseModelSpec(id=model_id, **kw)


@pytest.mark.parametrize("name", [
    "meta-llama/Llama-3.1-8B-Instruct", "META-LLAMA/llama-3.1-8b-instruct", "meta-llama/Llama-3.1-8B",
    "meta-llama/Meta-Llama-3.1-8B-Instruct", "/models/meta-llama/Llama-3.1-8B-Instruct",
])
def test_ids_aliases_and_paths_resolve_case_insensitively(name):
    assert models.resolve(base(name)).id == "meta-llama/Llama-3.1-8B-Instruct"


def test_every_required_model_is_in_the_catalog():
    required = [
        "TinyLlama/TinyLlama-1.1B-Chat-v1.0", "Qwen/QwQ-32B-Preview", "Qwen/QwQ-32B-Preview-AWQ",
        "Qwen/Qwen2.5-14B-Instruct", "Qwen/Qwen2.5-7B", "Qwen/Qwen2.5-32B", "Qwen/Qwen2.5-72B",
        "meta-llama/Meta-Llama-3-8B", "meta-llama/Llama-3.1-70B-Instruct", "Qwen/Qwen3-8B", "Qwen/Qwen3-32B",
        "mistralai/Mistral-7B-Instruct-v0.3", "mistralai/Mixtral-8x7B-Instruct-v0.1", "google/gemma-2-9b-it",
        "google/gemma-2-27b-it", "microsoft/Phi-3-mini-4k-instruct", "deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B",
        "deepseek-ai/DeepSeek-R1-Distill-Qwen-7B", "deepseek-ai/DeepSeek-R1-Distill-Qwen-14B",
        "deepseek-ai/DeepSeek-R1-Distill-Qwen-32B", "deepseek-ai/DeepSeek-R1-Distill-Llama-8B",
        "deepseek-ai/DeepSeek-R1-Distill-Llama-70B", "microsoft/DialoGPT-medium", "fleetspec/tiny-test-llama",
    ]
    assert [m for m in required if models.resolve(base(m)) is None] == []


def test_every_catalog_entry_cites_a_source():
    data = data_files.load("models")
    assert all(entry.get("source") for entry in data["models"])
    assert all(family.get("source") for family in data["families"].values())
    assert all(entry.get("source") for entry in data_files.load("gpus")["gpus"].values())


@pytest.mark.parametrize(("model_id", "embedding_lora"), [
    ("meta-llama/Llama-3.1-8B-Instruct", True), ("Qwen/Qwen3-8B", True), ("mistralai/Mixtral-8x7B-Instruct-v0.1", True),
    ("Qwen/Qwen2.5-7B-Instruct", False), ("google/gemma-2-9b-it", False), ("mistralai/Mistral-7B-Instruct-v0.3", False),
])
def test_embedding_lora_per_architecture(model_id, embedding_lora):
    assert models.resolve(base(model_id)).embedding_lora is embedding_lora


def test_awq_variant_carries_its_checkpoint_quantization():
    f = models.resolve(base("qwen/qwq-32b-preview-awq"))
    assert (f.checkpoint_quantization, f.checkpoint_group_size, f.default_dtype) == ("awq", 128, "float16")
    assert f.architecture.hidden_size == 5120


def test_unknown_model_without_architecture_is_none():
    assert models.resolve(base("acme/secret-model-13b")) is None


def test_inline_architecture_wins_over_the_catalog():
    arch = spec.Architecture(model_type="llama", hidden_size=1024, intermediate_size=4096, num_hidden_layers=4,
                             num_attention_heads=8, vocab_size=1000, max_position_embeddings=4096)
    f = models.resolve(base("meta-llama/Llama-3.1-8B-Instruct", architecture=arch))
    assert f.architecture.hidden_size == 1024 and not f.from_catalog
    assert f.embedding_lora  # family facts still come from model_type
    custom = models.resolve(base("/models/my-llama", architecture=arch))
    assert custom.id == "/models/my-llama" and custom.family == "llama"


def test_mla_moe_and_sliding_window_fields():
    ds = models.resolve(base("deepseek-ai/DeepSeek-V2-Lite-Chat"))
    assert (ds.attention, ds.is_moe, ds.num_experts) == ("mla", True, 64)
    assert models.resolve(base("google/gemma-2-9b-it")).sliding_window_layers == "alternate"
    assert models.resolve(base("mistralai/Mistral-7B-v0.1")).sliding_window_layers == "all"
    assert models.resolve(base("microsoft/DialoGPT-medium")).lora_supported is False


@pytest.mark.parametrize(("name", "canonical", "gib"), [
    ("H100-80GB", "H100-80GB", 79.19), ("h100", "H100-80GB", 79.19), ("NVIDIA H100 80GB HBM3", "H100-80GB", 79.19),
    ("H100-PCIe", "H100-80GB", 79.19), ("a100-40gb", "A100-40GB", 39.38), ("A100-80GB", "A100-80GB", 79.25),
    ("L40S", "L40S", 44.53), ("L4", "L4", 22.03), ("A10G", "A10G", 22.03), ("A6000", "A6000", 47.53),
    ("RTX-4090", "RTX-4090", 23.64), ("T4", "T4", 14.56), ("H200", "H200", 139.94), ("sim", "sim", 24.0),
])
def test_gpu_catalog(name, canonical, gib):
    g = gpus.resolve(spec.GpuGroup(type=name))
    assert (g.type, g.total_bytes) == (canonical, round(gib * GIB))


def test_memory_gib_overrides_and_custom_cards():
    assert gpus.resolve(spec.GpuGroup(type="H100", memory_gib=79.65)).total_bytes == round(79.65 * GIB)
    custom = gpus.resolve(spec.GpuGroup(memory_gib=32))
    assert (custom.type, custom.total_bytes) == ("custom-32GiB", 32 * GIB)
    with pytest.raises(gpus.UnknownGpuType):
        gpus.resolve(spec.GpuGroup(type="Voodoo5"))


@pytest.mark.parametrize(("method", "group", "expected"), [
    ("none", None, 2.0), ("awq", 128, 0.5 + 2.5 / 128), ("gptq", 64, 0.5 + 2.5 / 64), ("awq", None, 0.51953125),
    ("fp8", None, 1.0), ("mxfp4", None, 0.53125), ("modelopt_fp4", None, 0.5625),
])
def test_weight_cost(method, group, expected):
    assert quantization.weight_cost(method, group, 2).bytes_per_weight == pytest.approx(expected)


def test_kv_cache_dtype_bytes():
    assert quantization.kv_cache_bytes("auto", 2) == 2
    assert quantization.kv_cache_bytes("auto", 4) == 4
    assert quantization.kv_cache_bytes("fp8_e5m2", 2) == 1


def test_a_per_channel_4bit_checkpoint_costs_half_a_byte_per_weight_not_a_negative_amount():
    # group_size -1 in a GPTQ/AWQ quantize_config means one scale per output channel.
    from fleetspec.catalog import quantization

    assert quantization.weight_cost("gptq", -1, 2).bytes_per_weight == 0.5
    assert quantization.weight_cost("gptq", 128, 2).bytes_per_weight == 0.5 + 2.5 / 128
