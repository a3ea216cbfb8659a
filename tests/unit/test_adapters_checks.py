"""Adapters checked against a fleet: what vLLM refuses (in vLLM's words) and what it serves wrongly in silence."""

from __future__ import annotations

import struct

import adapter_factory
import pytest
from adapter_factory import ATTENTION, BIGGER_LLAMA, MLP, SMALLER_LLAMA, TINY_LLAMA, TINY_QWEN2

from fleetspec.adapters import checks, engine
from fleetspec.adapters import inspect as adapter_inspect
from fleetspec.adapters import report as adapter_report
from fleetspec.errors import Severity
from fleetspec.spec import models

BASE = "fleetspec/tiny-llama"
WHERE = ("specialists", 0, "path")


def server(rank: int = 16, name: str = "main", target_modules=None) -> models.Server:
    return models.Server(name=name, lora=models.LoraLimits(max_lora_rank=rank, target_modules=target_modules))


def target(arch=TINY_LLAMA, embedding_lora=True, rank=16, **overrides) -> checks.Target:
    values = {"base_model_id": BASE, "architecture": arch, "embedding_lora": embedding_lora,
              "servers": ((0, server(rank)),)}
    return checks.Target(**{**values, **overrides})


def adapter(tmp_path, name="a", **kwargs) -> adapter_inspect.AdapterInfo:
    return adapter_inspect.inspect(adapter_factory.write_adapter(tmp_path / name, **kwargs))


def codes(diagnostics) -> list[tuple[str, str]]:
    return [(d.severity.value, d.code) for d in diagnostics]


def vllm_says(info, rank=16, arch=TINY_LLAMA, embedding_lora=True, **kwargs) -> str | None:
    return engine.engine_load_error(info, rank, arch, embedding_lora=embedding_lora, **kwargs)


def test_a_good_adapter_passes_and_vllm_accepts_it(tmp_path):
    info = adapter(tmp_path, targets=ATTENTION + MLP + ("embed_tokens", "lm_head"))
    assert checks.check_adapter(info, target(), WHERE) == []
    assert vllm_says(info) is None


def test_wrong_base_with_larger_tensors_fails_in_vllm_and_here(tmp_path):
    info = adapter(tmp_path, arch=BIGGER_LLAMA, base_model="fleetspec/bigger-llama")
    [diagnostic] = checks.check_adapter(info, target(), WHERE)
    assert (diagnostic.code, diagnostic.path) == ("adapter-shape-mismatch", "specialists[0].path")
    assert "model.layers.0.self_attn.q_proj has lora_A [8, 128] and lora_B [128, 8]" in diagnostic.message
    assert "needs [8, 64] and [64, 8] (in: hidden_size 64, out: 4 heads × head_dim 16)" in diagnostic.message
    assert diagnostic.message.endswith("vLLM fails to load it")
    assert "this one names fleetspec/bigger-llama as its base" in diagnostic.hint
    # vLLM copies q_proj's lora_A [8, 128] into a [16, 64] slot: the last dimension fails first
    assert vllm_says(info) == (
        "Call to add_lora method failed: The size of tensor a (64) must match the size of tensor b (128)"
        " at non-singleton dimension 1"
    )


def test_wrong_base_with_smaller_tensors_is_silent_in_vllm_but_caught_here(tmp_path):
    info = adapter(tmp_path, arch=SMALLER_LLAMA, targets=ATTENTION + MLP)
    [diagnostic] = checks.check_adapter(info, target(), WHERE)
    assert diagnostic.code == "adapter-shape-mismatch"
    assert "would load it without complaint and serve garbage" in diagnostic.message
    assert "(13 more module(s) disagree)" in diagnostic.message  # 7 modules × 2 layers
    assert vllm_says(info) is None


def test_an_adapter_for_a_deeper_model_is_a_shape_mismatch(tmp_path):
    tensors = adapter_factory.lora_tensors(TINY_LLAMA, 8, ("q_proj",), layers=3)
    info = adapter(tmp_path, tensors=tensors)
    [diagnostic] = checks.check_adapter(info, target(), WHERE)
    assert diagnostic.code == "adapter-shape-mismatch"
    assert "model.layers.2.self_attn.q_proj has layer 2 where fleetspec/tiny-llama needs 2 layers" in diagnostic.message


def test_rank_above_max_lora_rank_uses_vllms_sentence(tmp_path):
    info = adapter(tmp_path, rank=32)
    [diagnostic] = checks.check_adapter(info, target(rank=16), WHERE)
    assert diagnostic.code == "rank-above-max-lora-rank"
    assert diagnostic.message.endswith('vLLM refuses to load it: "LoRA rank 32 is greater than max_lora_rank 16."')
    assert diagnostic.hint == "set servers[0].lora.max_lora_rank to 32"
    assert vllm_says(info, rank=16) == "Call to add_lora method failed: LoRA rank 32 is greater than max_lora_rank 16."


def test_rank_pattern_counts_against_max_lora_rank(tmp_path):
    tensors = adapter_factory.lora_tensors(TINY_LLAMA, 8, ATTENTION, ranks={"v_proj": 64})
    info = adapter(tmp_path, tensors=tensors, config={"rank_pattern": {"v_proj": 64}})
    found = checks.check_adapter(info, target(rank=32), WHERE)
    assert codes(found) == [("error", "rank-above-max-lora-rank")]
    assert found[0].hint == "set servers[0].lora.max_lora_rank to 64"
    assert vllm_says(info, rank=32) == "Call to add_lora method failed: LoRA rank 64 is greater than max_lora_rank 32."
    assert vllm_says(info, rank=64) is None


def test_a_rank_no_max_lora_rank_can_hold(tmp_path):
    info = adapter(tmp_path, rank=1024, targets=("q_proj",))
    found = checks.check_adapter(info, target(rank=512), WHERE)
    assert found[0].hint == "vLLM's largest max_lora_rank is 512; retrain the adapter at a lower rank"


def test_tensor_rank_disagreeing_with_the_config_is_an_error(tmp_path):
    tensors = adapter_factory.lora_tensors(TINY_LLAMA, 16, ("q_proj",))
    info = adapter(tmp_path, tensors=tensors, rank=8)
    found = checks.check_adapter(info, target(), WHERE)
    assert codes(found) == [("error", "adapter-rank-mismatch")]
    assert "adapter_config.json gives it rank 8 (1 more module(s) disagree)" in found[0].message


def test_tensor_rank_above_the_slot_fails_the_copy_in_vllm(tmp_path):
    tensors = adapter_factory.lora_tensors(TINY_LLAMA, 32, ("q_proj",))
    info = adapter(tmp_path, tensors=tensors, rank=8)
    assert ("error", "rank-above-max-lora-rank") in codes(checks.check_adapter(info, target(rank=16), WHERE))
    assert vllm_says(info, rank=16) == (
        "Call to add_lora method failed: The size of tensor a (16) must match the size of tensor b (32)"
        " at non-singleton dimension 0"
    )


@pytest.mark.parametrize(("config", "code", "sentence"), [
    ({"use_dora": True}, "adapter-dora", "vLLM does not yet support DoRA."),
    ({"lora_bias": True}, "adapter-lora-bias", "vLLM does not support LoRA bias (lora_bias)."),
    ({"bias": "lora_only"}, "adapter-bias", "Adapter bias is not supported."),
    ({"bias": "all"}, "adapter-bias", "Adapter bias is not supported."),
    ({"use_qalora": True}, "adapter-qalora", "vLLM does not support QALoRA."),
    ({"layer_replication": [[0, 2]]}, "adapter-layer-replication", "vLLM does not support layer_replication."),
    ({"alora_invocation_tokens": [1, 2]}, "adapter-alora", "vLLM does not support Activated LoRA (aLoRA)."),
    ({"modules_to_save": ["lm_head"]}, "adapter-modules-to-save",
     'vLLM only supports modules_to_save being either None or ["classifier", "score"] for classification models. '
     "Unsupported modules_to_save: ['lm_head']"),
])
def test_unsupported_features_are_refused_in_vllms_words(tmp_path, config, code, sentence):
    info = adapter(tmp_path, config=config)
    [diagnostic] = checks.check_adapter(info, target(), WHERE)
    assert diagnostic.code == code and diagnostic.severity is Severity.ERROR
    assert diagnostic.message.endswith(f'vLLM refuses it: "{sentence}"')
    assert vllm_says(info) == f"Call to add_lora method failed: {sentence}"


def test_pissa_init_is_refused_but_gaussian_is_fine(tmp_path):
    pissa = adapter(tmp_path, "p", config={"init_lora_weights": "pissa"})
    gaussian = adapter(tmp_path, "g", config={"init_lora_weights": "gaussian"})
    assert codes(checks.check_adapter(pissa, target())) == [("error", "adapter-init-weights")]
    assert vllm_says(pissa).startswith("Call to add_lora method failed: vLLM does not support init_lora_weights='pissa'.")
    assert checks.check_adapter(gaussian, target()) == []


def test_several_refusals_are_joined_like_vllm_does(tmp_path):
    info = adapter(tmp_path, rank=32, config={"use_dora": True, "bias": "all"})
    assert vllm_says(info, rank=16) == (
        "Call to add_lora method failed: vLLM does not yet support DoRA. "
        "LoRA rank 32 is greater than max_lora_rank 16. Adapter bias is not supported."
    )


def test_dora_magnitude_tensors_are_not_reported_twice(tmp_path):
    tensors = adapter_factory.lora_tensors(TINY_LLAMA, 8, ("q_proj",))
    tensors["base_model.model.model.layers.0.self_attn.q_proj.lora_magnitude_vector"] = ("F32", [64])
    info = adapter(tmp_path, tensors=tensors, config={"use_dora": True})
    assert codes(checks.check_adapter(info, target())) == [("error", "adapter-dora")]


def test_an_unknown_module_is_refused_with_vllms_message(tmp_path):
    tensors = adapter_factory.lora_tensors(TINY_LLAMA, 8, ("q_proj",))
    tensors["base_model.model.model.layers.0.mlp.c_fc.lora_A.weight"] = ("BF16", [8, 64])
    tensors["base_model.model.model.layers.0.mlp.c_fc.lora_B.weight"] = ("BF16", [128, 8])
    info = adapter(tmp_path, tensors=tensors)
    [diagnostic] = checks.check_adapter(info, target(), WHERE)
    assert diagnostic.code == "adapter-unknown-module"
    assert "adapts c_fc, which vLLM has no LoRA slot for on LlamaForCausalLM" in diagnostic.message
    assert vllm_says(info) == (
        f"Call to add_lora method failed: While loading {info.path}, expected target modules in "
        "{'down_proj', 'embed_tokens', 'gate_proj', 'k_proj', 'lm_head', 'o_proj', 'q_proj', 'up_proj', 'v_proj'}"
        " but received ['model.layers.0.mlp.c_fc', 'model.layers.0.mlp.c_fc']."
        " Please verify that the loaded LoRA module is correct"
    )


def test_embedding_lora_on_a_model_without_embedding_slots(tmp_path):
    info = adapter(tmp_path, arch=TINY_QWEN2, targets=("q_proj", "embed_tokens"))
    [diagnostic] = checks.check_adapter(info, target(TINY_QWEN2, embedding_lora=False), WHERE)
    assert diagnostic.code == "adapter-unknown-module"
    assert diagnostic.hint == ("vLLM gives Qwen2ForCausalLM no embed_tokens/lm_head LoRA; retrain without them in "
                               "target_modules")
    assert "but received ['model.embed_tokens', 'model.embed_tokens']" in vllm_says(
        info, arch=TINY_QWEN2, embedding_lora=False)


def test_embedding_vocabulary_must_match(tmp_path):
    info = adapter(tmp_path, arch=TINY_LLAMA.model_copy(update={"vocab_size": 512}), targets=("q_proj", "embed_tokens"))
    found = checks.check_adapter(info, target(), WHERE)
    assert codes(found) == [("error", "adapter-vocab-mismatch")]
    sentence = ("The embedding LoRA size(512) must be consistent with the base model's vocabulary size(256).")
    assert found[0].message.endswith(f'vLLM refuses it: "{sentence}"')
    assert vllm_says(info) == f"Call to add_lora method failed: {sentence}"


def test_a_non_lora_peft_type_is_refused_with_vllms_reason(tmp_path):
    path = adapter_factory.write_adapter(tmp_path / "ia3", weights="none",
                                         config={"peft_type": "IA3", "r": None, "lora_alpha": None})
    info = adapter_inspect.inspect(path)
    [diagnostic] = checks.check_adapter(info, target(), WHERE)
    assert diagnostic.code == "adapter-not-lora"
    assert diagnostic.message.endswith(
        "is a IA3 adapter and vLLM serves only LoRA; vLLM refuses it: "
        "\"Missing required configuration fields: {'lora_alpha', 'r'}\""
    )
    assert vllm_says(info) == "Call to add_lora method failed: Missing required configuration fields: {'lora_alpha', 'r'}"


def test_adalora_is_refused_for_its_extra_tensors(tmp_path):
    tensors = adapter_factory.lora_tensors(TINY_LLAMA, 8, ("q_proj",))
    tensors["base_model.model.model.layers.0.self_attn.q_proj.lora_E"] = ("F32", [8, 1])
    info = adapter(tmp_path, tensors=tensors, config={"peft_type": "ADALORA"})
    [diagnostic] = checks.check_adapter(info, target(), WHERE)
    assert diagnostic.code == "adapter-not-lora"
    assert diagnostic.message.endswith(
        'vLLM refuses it: "base_model.model.model.layers.0.self_attn.q_proj.lora_E is unsupported LoRA weight"')
    assert vllm_says(info) == ("Call to add_lora method failed: "
                               "base_model.model.model.layers.0.self_attn.q_proj.lora_E is unsupported LoRA weight")


def test_a_truncated_weights_file(tmp_path):
    info = adapter(tmp_path)
    weights = f"{info.path}/adapter_model.safetensors"
    with open(weights, "r+b") as handle:
        handle.truncate(handle.seek(0, 2) - 10)
    info = adapter_inspect.inspect(info.path)
    [diagnostic] = checks.check_adapter(info, target(), WHERE)
    assert diagnostic.code == "adapter-weights-invalid"
    assert "truncated" in diagnostic.message
    assert vllm_says(info) == ("Call to add_lora method failed: Error while deserializing header: "
                               "incomplete metadata, file not fully covered")


@pytest.mark.parametrize(("prefix", "kind", "library_text"), [
    (struct.pack("<Q", 200_000_000), "HeaderTooLarge", "header too large"),
    (struct.pack("<Q", 16) + b"{not json at all", "InvalidHeaderDeserialization", "invalid JSON in header: "),
])
def test_oversized_or_malformed_headers(tmp_path, prefix, kind, library_text):
    info = adapter(tmp_path, weights="none")
    with open(f"{info.path}/adapter_model.safetensors", "wb") as handle:
        handle.write(prefix)
        handle.truncate(4096)
    info = adapter_inspect.inspect(info.path)
    assert codes(checks.check_adapter(info, target(), WHERE)) == [("error", "adapter-weights-invalid")]
    assert info.weights_problem.kind == kind
    assert vllm_says(info).startswith(f"Call to add_lora method failed: Error while deserializing header: {library_text}")


def test_bin_weights_are_a_warning_and_config_checks_still_run(tmp_path):
    info = adapter(tmp_path, weights="bin", rank=64)
    found = checks.check_adapter(info, target(rank=16), WHERE)
    assert codes(found) == [("warning", "adapter-weights-unchecked"), ("error", "rank-above-max-lora-rank")]
    assert vllm_says(info, rank=64) is None


def test_no_weights_at_all(tmp_path):
    info = adapter(tmp_path, weights="none")
    [diagnostic] = checks.check_adapter(info, target(), WHERE)
    assert diagnostic.code == "adapter-weights-missing"
    assert vllm_says(info) == f"Call to add_lora method failed: {info.path} doesn't contain tensors"


def test_missing_config_is_vllms_404(tmp_path):
    info = adapter(tmp_path)
    (tmp_path / "a" / "adapter_config.json").unlink()
    info = adapter_inspect.inspect(info.path)
    assert codes(checks.check_adapter(info, target())) == [("error", "adapter-config-missing")]
    rejection = engine.engine_rejection(info, 16, TINY_LLAMA, lora_name="sql", lora_path="/adapters/sql")
    assert rejection == engine.Rejection(404, "NotFoundError", "Loading lora sql failed: No adapter found for /adapters/sql")


def test_more_than_one_worker_wraps_the_message(tmp_path):
    info = adapter(tmp_path, rank=32)
    assert vllm_says(info, rank=16, world_size=2) == (
        "Call to add_lora method failed: Worker failed with error 'LoRA rank 32 is greater than max_lora_rank 16.', "
        "please check the stack trace above for the root cause"
    )


def test_base_model_name_differs_but_shapes_agree(tmp_path):
    info = adapter(tmp_path, base_model="someone/other-model")
    [diagnostic] = checks.check_adapter(info, target(), WHERE)
    assert (diagnostic.severity, diagnostic.code) == (Severity.WARNING, "adapter-base-model-differs")
    assert diagnostic.hint == "if this is intended, record it with base_model: someone/other-model on the specialist"
    assert checks.check_adapter(info, target(trained_on="someone/other-model")) == []


@pytest.mark.parametrize(("adapter_base", "fleet_base"), [
    ("Qwen/QwQ-32B-Preview", "Qwen/QwQ-32B-Preview-AWQ"),
    ("/models/Llama-3.1-8B/", "meta-llama/llama-3.1-8b"),
    ("org/m-GPTQ-Int4", "org/m"),
])
def test_same_model_up_to_org_path_and_quantization(adapter_base, fleet_base):
    assert adapter_report.same_model(adapter_base, fleet_base)


def test_declared_rank_differing_from_the_real_one_is_a_warning(tmp_path):
    info = adapter(tmp_path, rank=8)
    found = checks.check_adapter(info, target(declared_rank=32), WHERE)
    assert codes(found) == [("warning", "adapter-declared-rank-differs")]
    assert found[0].message == f"the fleet file says rank 32 but {info.path} has rank 8"


def test_modules_outside_the_servers_target_modules_are_ignored_by_vllm(tmp_path):
    info = adapter(tmp_path, targets=ATTENTION + MLP)
    hosts = ((2, server(target_modules=["q_proj", "o_proj"])),)
    [diagnostic] = checks.check_adapter(info, target(servers=hosts), WHERE)
    assert diagnostic.code == "adapter-module-not-served"
    # q_proj in the list wraps qkv_proj, so k/v are served too; the MLP is not
    assert "the down_proj, gate_proj, up_proj weights" in diagnostic.message
    assert diagnostic.hint == "add down_proj, gate_up_proj to servers[2].lora.target_modules"


def test_module_names_the_base_lacks_load_as_silent_no_ops(tmp_path):
    tensors = {k.replace("base_model.model.model.", "base_model.model.model.model."): v
               for k, v in adapter_factory.lora_tensors(TINY_LLAMA, 8, ("q_proj",)).items()}
    info = adapter(tmp_path, tensors=tensors)
    [diagnostic] = checks.check_adapter(info, target(), WHERE)
    assert diagnostic.code == "adapter-module-ignored"
    assert "no module named model.model.layers.0.self_attn.q_proj (and 1 more)" in diagnostic.message
    assert vllm_says(info) is None


def test_moe_models_get_no_guessing(tmp_path):
    moe = TINY_LLAMA.model_copy(update={"model_type": "mixtral", "architectures": ["MixtralForCausalLM"],
                                        "num_local_experts": 4})
    tensors = adapter_factory.lora_tensors(TINY_LLAMA, 8, ("q_proj",))
    tensors["base_model.model.model.layers.0.block_sparse_moe.experts.0.w9.lora_A.weight"] = ("BF16", [8, 64])
    tensors["base_model.model.model.layers.0.block_sparse_moe.experts.0.w9.lora_B.weight"] = ("BF16", [128, 8])
    info = adapter(tmp_path, tensors=tensors)
    assert codes(checks.check_adapter(info, target(moe), WHERE)) == [("warning", "adapter-module-unverified")]
    assert vllm_says(info, arch=moe) is None


def test_an_unknown_architecture_is_an_info_only(tmp_path):
    gpt2 = TINY_LLAMA.model_copy(update={"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"]})
    info = adapter(tmp_path)
    assert codes(checks.check_adapter(info, target(gpt2))) == [("info", "adapter-layout-unknown")]


def test_standalone_check_needs_no_fleet(tmp_path):
    assert checks.check_adapter(adapter(tmp_path, "ok")) == []
    assert codes(checks.check_adapter(adapter(tmp_path, "dora", config={"use_dora": True}))) == [
        ("error", "adapter-dora")]


def test_a_base_name_mismatch_on_unreadable_shapes_says_so(tmp_path):
    info = adapter(tmp_path, weights="bin", base_model="someone/other-model")
    found = checks.check_adapter(info, target(), WHERE)
    assert codes(found) == [("warning", "adapter-weights-unchecked"), ("warning", "adapter-base-model-differs")]
    assert "its tensor shapes could not be checked, but its outputs may be poor" in found[1].message


def test_a_directory_in_place_of_the_config(tmp_path):
    info = adapter(tmp_path)
    config = tmp_path / "a" / "adapter_config.json"
    config.unlink()
    config.mkdir()
    info = adapter_inspect.inspect(info.path)
    assert codes(checks.check_adapter(info, target())) == [("error", "adapter-config-invalid")]
    assert vllm_says(info) == f"Call to add_lora method failed: [Errno 21] Is a directory: '{config}'"
