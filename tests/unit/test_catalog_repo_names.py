"""Mirrors and quantized repacks are planned with the shapes of the model they re-publish, read
from the name (catalog/repo_names.py), and only where the name's storage is one the planner models."""

from __future__ import annotations

import pytest

from fleetspec.catalog import models as catalog_models
from fleetspec.catalog import repo_names
from fleetspec.planner import report
from fleetspec.spec import models as spec_models


@pytest.mark.parametrize(("model_id", "name", "method", "group"), [
    ("Qwen/Qwen1.5-7B-Chat-GPTQ-Int4", "qwen1.5-7b-chat", "gptq", 128),
    ("TheBloke/Mistral-7B-Instruct-v0.2-AWQ", "mistral-7b-instruct-v0.2", "awq", 128),
    ("hugging-quants/Meta-Llama-3.1-8B-Instruct-AWQ-INT4", "meta-llama-3.1-8b-instruct", "awq", 128),
    ("TheBloke/Llama-2-13B-chat-GPTQ-32g", "llama-2-13b-chat", "gptq", 32),
    ("unsloth/llama-3-8b-Instruct-bnb-4bit", "llama-3-8b-instruct", "bitsandbytes", None),
    ("unsloth/qwen2.5-3b-instruct-unsloth-bnb-4bit", "qwen2.5-3b-instruct", "bitsandbytes", None),
    ("RedHatAI/Meta-Llama-3.1-8B-Instruct-FP8-dynamic", "meta-llama-3.1-8b-instruct", "fp8", None),
    ("neuralmagic/Meta-Llama-3.1-8B-Instruct-quantized.w8a8", "meta-llama-3.1-8b-instruct", "compressed-tensors", None),
    ("NousResearch/Meta-Llama-3-8B-Instruct", "meta-llama-3-8b-instruct", None, None),
    ("/models/Mistral-7B-v0.3/", "mistral-7b-v0.3", None, None),  # ".3" is a version, not a bit width
])
def test_a_name_reads_as_its_base_and_quantization(model_id, name, method, group):
    reading = repo_names.read(model_id)
    assert (reading.name, reading.method, reading.group_size) == (name, method, group)


@pytest.mark.parametrize("model_id", [
    "Qwen/Qwen2.5-7B-Instruct-GPTQ-Int8",  # 8-bit GPTQ: one byte per weight, not the 4-bit layout
    "neuralmagic/Meta-Llama-3.1-8B-Instruct-quantized.w4a16",
    "bartowski/Meta-Llama-3.1-8B-Instruct-GGUF",
    "turboderp/Llama-3-8B-Instruct-exl2-4.0bpw",
    "someone/Llama-3-8B-Instruct-4bit",  # a bit width without a method
    "OPEA/QwQ-32B-int4-AutoRound-gptq-sym",
])
def test_storage_the_planner_does_not_model_matches_nothing(model_id):
    assert repo_names.read(model_id) is None
    assert catalog_models.resolve(spec_models.BaseModelSpec(id=model_id)) is None


def test_a_quantized_repack_gets_the_base_shapes_and_the_suffix_quantization():
    facts = catalog_models.resolve(spec_models.BaseModelSpec(id="Qwen/Qwen1.5-7B-Chat-GPTQ-Int4"))
    base = catalog_models.resolve(spec_models.BaseModelSpec(id="Qwen/Qwen1.5-7B-Chat"))
    assert facts.architecture == base.architecture
    assert (facts.checkpoint_quantization, facts.checkpoint_group_size, facts.default_dtype) == ("gptq", 128, "float16")
    assert (base.checkpoint_quantization, facts.matched_by_name, facts.id) == (
        "none", "Qwen/Qwen1.5-7B-Chat", "Qwen/Qwen1.5-7B-Chat-GPTQ-Int4")


def test_thebloke_names_drop_llama2s_hf_suffix():
    facts = catalog_models.resolve(spec_models.BaseModelSpec(id="TheBloke/Llama-2-13B-chat-AWQ"))
    assert facts.matched_by_name == "meta-llama/Llama-2-13b-chat-hf"


def test_a_catalog_id_is_never_read_by_name():
    facts = catalog_models.resolve(spec_models.BaseModelSpec(id="Qwen/Qwen2.5-7B-Instruct-AWQ"))
    assert facts.matched_by_name is None and facts.from_catalog


def test_an_inline_architecture_wins_over_the_name():
    arch = {"hidden_size": 1024, "intermediate_size": 2816, "num_hidden_layers": 2, "num_attention_heads": 8,
            "vocab_size": 1000}
    facts = catalog_models.resolve(spec_models.BaseModelSpec(id="TheBloke/Mistral-7B-Instruct-v0.2-AWQ",
                                                             architecture=arch))
    assert facts.architecture.hidden_size == 1024 and facts.matched_by_name is None


def test_the_plan_says_which_model_it_borrowed_the_shapes_from():
    spec = spec_models.FleetSpec.model_validate({
        "name": "t", "base_model": {"id": "TheBloke/Mistral-7B-Instruct-v0.2-AWQ", "max_model_len": 4096},
        "gpus": [{"type": "L4", "count": 1}], "servers": [{"name": "a"}],
    })
    plan = report.plan_fleet(spec)
    found = [f for f in plan.findings if f.code == "model-matched-by-name"]
    assert len(found) == 1 and "mistralai/Mistral-7B-Instruct-v0.2" in found[0].message
    assert "awq" in found[0].message
    weights = plan.servers[0].replicas[0].budget.weights
    assert 3.5 * (1 << 30) < weights < 4.5 * (1 << 30)  # 7.2 B parameters at ~4.3 bits, embeddings in fp16
