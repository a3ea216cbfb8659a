"""Reading adapter directories: config fields, real ranks from shapes, weights files, damaged files."""

from __future__ import annotations

import json
import os

import adapter_factory
import pytest
from adapter_factory import ATTENTION, MLP, TINY_LLAMA

from fleetspec.adapters import inspect as adapter_inspect


def test_a_good_adapter_is_described_from_config_and_header(tmp_path):
    path = adapter_factory.write_adapter(tmp_path / "good", rank=8, alpha=16)
    info = adapter_inspect.inspect(path)
    assert info.path == str(path)
    assert (info.config.peft_type, info.config.r, info.config.lora_alpha) == ("LORA", 8, 16)
    assert info.config.base_model_name_or_path == "fleetspec/tiny-llama"
    assert info.ranks == (8,) and info.max_rank == 8
    assert info.target_modules_present == ("k_proj", "o_proj", "q_proj", "v_proj")
    assert len(info.modules) == 8 and len(info.tensors) == 16
    q0 = info.modules[0]
    assert (q0.name, q0.layer, q0.a_shape, q0.b_shape) == ("model.layers.0.self_attn.q_proj", 0, (8, 64), (64, 8))
    # per layer: q 8·64+64·8, k 8·64+32·8, v the same, o 8·64+64·8 = 3584 elements; 2 layers; BF16
    assert info.tensor_bytes == 3584 * 2 * 2
    assert info.dtypes == ("BF16",)
    assert info.weights_bytes == os.path.getsize(path / "adapter_model.safetensors")
    config_bytes = os.path.getsize(path / "adapter_config.json")
    assert info.bytes_read == config_bytes + info.weights_bytes - info.tensor_bytes


def test_rank_pattern_ranks_come_from_the_tensor_shapes(tmp_path):
    tensors = adapter_factory.lora_tensors(TINY_LLAMA, 8, ATTENTION + MLP, ranks={"down_proj": 32})
    path = adapter_factory.write_adapter(tmp_path / "p", tensors=tensors, targets=ATTENTION + MLP,
                                         config={"rank_pattern": {"down_proj": 32}})
    info = adapter_inspect.inspect(path)
    assert info.ranks == (8, 32)
    assert info.config.configured_ranks == (8, 32)
    down = [m for m in info.modules if m.suffix == "down_proj"]
    assert [m.rank for m in down] == [32, 32]
    assert [m.layer for m in down] == [0, 1]


def test_embedding_and_lm_head_use_their_peft_names(tmp_path):
    path = adapter_factory.write_adapter(tmp_path / "e", targets=("q_proj", "embed_tokens", "lm_head"))
    info = adapter_inspect.inspect(path)
    by_suffix = {m.suffix: m for m in info.modules}
    embed = by_suffix["embed_tokens"]
    assert (embed.name, embed.embedding, embed.a_shape, embed.b_shape) == (
        "model.embed_tokens", True, (8, 256), (64, 8))
    head = by_suffix["lm_head"]
    assert (head.name, head.embedding, head.a_shape, head.b_shape) == ("lm_head", False, (8, 64), (256, 8))
    assert info.modules[0].suffix in ("embed_tokens", "lm_head")  # outside the layers, listed first


def test_lora_tensor_names_follow_vllm_parsing():
    assert adapter_inspect.lora_tensor_name("base_model.model.model.layers.3.mlp.up_proj.lora_B.weight") == (
        "model.layers.3.mlp.up_proj", "B")
    assert adapter_inspect.lora_tensor_name("base_model.model.model.embed_tokens.lora_embedding_A") == (
        "model.embed_tokens", "embedding_A")
    assert adapter_inspect.lora_tensor_name("base_model.model.model.layers.0.self_attn.q_proj.lora_magnitude_vector") is None
    assert adapter_inspect.lora_tensor_name("base_model.model.model.layers.0.self_attn.q_proj.lora_B.bias") is None


def test_unparseable_and_base_embedding_tensors_are_sorted_out(tmp_path):
    tensors = adapter_factory.lora_tensors(TINY_LLAMA, 8, ("q_proj",))
    tensors["base_model.model.model.layers.0.self_attn.q_proj.lora_E"] = ("F32", [8, 1])
    tensors["base_model.model.model.embed_tokens.base_layer.weight"] = ("BF16", [256, 64])
    tensors["base_model.model.score.weight"] = ("BF16", [2, 64])
    info = adapter_inspect.inspect(adapter_factory.write_adapter(tmp_path / "x", tensors=tensors))
    assert info.unsupported_tensors == ("base_model.model.model.layers.0.self_attn.q_proj.lora_E",)
    assert info.classifier_tensors == ("base_model.model.score.weight",)
    assert [m.suffix for m in info.modules] == ["q_proj", "q_proj"]


def test_pickled_weights_are_never_opened(tmp_path):
    path = adapter_factory.write_adapter(tmp_path / "bin", rank=16, weights="bin")
    info = adapter_inspect.inspect(path)
    assert (info.weights_format, info.weights_file) == ("bin", "adapter_model.bin")
    assert info.tensors == () and not info.tensors_known
    assert info.ranks == (16,)  # from adapter_config.json
    assert info.bytes_read == os.path.getsize(path / "adapter_config.json")


def test_safetensors_wins_over_bin_as_in_vllm(tmp_path):
    path = adapter_factory.write_adapter(tmp_path / "both")
    (path / "adapter_model.bin").write_bytes(b"ignored")
    assert adapter_inspect.inspect(path).weights_format == "safetensors"


def test_no_weights_file(tmp_path):
    info = adapter_inspect.inspect(adapter_factory.write_adapter(tmp_path / "none", weights="none"))
    assert (info.weights_format, info.weights_file, info.tensors) == (None, None, ())


@pytest.mark.parametrize(("text", "kind", "detail"), [
    ("{not json", "invalid-json", "Expecting property name enclosed in double quotes: line 1 column 2 (char 1)"),
    ("[1, 2]", "not-an-object", "list indices must be integers or slices, not str"),
])
def test_a_broken_config_is_reported_with_python_error_text(tmp_path, text, kind, detail):
    path = adapter_factory.write_adapter(tmp_path / "bad")
    (path / "adapter_config.json").write_text(text)
    info = adapter_inspect.inspect(path)
    assert info.config is None
    assert (info.config_problem.kind, info.config_problem.detail) == (kind, detail)


def test_a_missing_config_is_reported(tmp_path):
    path = adapter_factory.write_adapter(tmp_path / "noconf")
    (path / "adapter_config.json").unlink()
    assert adapter_inspect.inspect(path).config_problem.kind == "missing"


def test_wrongly_typed_config_fields_are_problems_not_crashes(tmp_path):
    path = adapter_factory.write_adapter(tmp_path / "t", config={"r": "eight", "rank_pattern": {"q_proj": 0}})
    config = adapter_inspect.inspect(path).config
    assert config.r is None
    assert config.problems == ("r must be a positive integer, got 'eight'",
                               "rank_pattern['q_proj'] must be a positive integer, got 0")


def test_a_damaged_header_is_recorded_with_the_safetensors_kind(tmp_path):
    path = adapter_factory.write_adapter(tmp_path / "trunc")
    weights = path / "adapter_model.safetensors"
    os.truncate(weights, weights.stat().st_size - 10)
    info = adapter_inspect.inspect(path)
    assert info.weights_problem.kind == "MetadataIncompleteBuffer"
    assert info.weights_problem.detail == "Error while deserializing header: incomplete metadata, file not fully covered"
    assert info.tensors == () and not info.tensors_known


def test_a_missing_directory_raises_adapter_not_found(tmp_path):
    with pytest.raises(adapter_inspect.AdapterNotFound, match="does not exist"):
        adapter_inspect.inspect(tmp_path / "nowhere")


def test_a_fifo_in_place_of_the_weights_is_not_read(tmp_path):
    path = adapter_factory.write_adapter(tmp_path / "fifo", weights="none")
    os.mkfifo(path / "adapter_model.safetensors")
    info = adapter_inspect.inspect(path)  # would block forever if the FIFO were opened for reading
    assert info.weights_format is None


def test_to_json_is_plain_data(tmp_path):
    info = adapter_inspect.inspect(adapter_factory.write_adapter(tmp_path / "j", targets=("q_proj",)))
    data = json.loads(json.dumps(info.to_json()))
    assert data["ranks"] == [8] and data["target_modules"] == ["q_proj"]
    assert data["modules"][0] == {"name": "model.layers.0.self_attn.q_proj", "rank": 8, "a_shape": [8, 64],
                                  "b_shape": [64, 8], "dtype": "BF16"}
