"""bitsandbytes 4-bit weights as vLLM stores them, per release (planner/bnb.py, issue #18 weights)."""

from __future__ import annotations

import pytest

from fleetspec.catalog import models
from fleetspec.planner import bnb, log_score, memory, report, startup_log
from fleetspec.spec import models as spec

LLAMA8 = models.resolve(spec.BaseModelSpec(id="meta-llama/Llama-3.1-8B-Instruct"))
QWEN3B = models.resolve(spec.BaseModelSpec(id="Qwen/Qwen2.5-3B-Instruct"))
MIXTRAL = models.resolve(spec.BaseModelSpec(id="mistralai/Mixtral-8x7B-Instruct-v0.1"))
GIB = 1 << 30


def test_bytes_per_weight_double_quant_before_0_10():
    """vLLM 0.7.3 loader.py BitsAndBytesModelLoader._quantized_4bit_generator keeps the checkpoint's
    QuantState as it is: uint8 packed n/2 (bitsandbytes.py create_qweight_for_4bit), uint8 absmax per
    64 weights and a float32 nested absmax per 256 absmax (bnb_4bit_use_double_quant)."""
    assert bnb.bytes_per_weight((0, 7, 3)) == pytest.approx(0.5 + 1 / 64 + 4 / (64 * 256))
    assert bnb.bytes_per_weight((0, 9, 2), bnb.Checkpoint(double_quant=False)) == pytest.approx(0.5 + 4 / 64)
    assert bnb.bytes_per_weight((0, 7, 3), bnb.Checkpoint(blocksize=128)) == pytest.approx(
        0.5 + 1 / 128 + 4 / (128 * 256))


def test_absmax_is_float32_from_0_10():
    """BitsAndBytesModelLoader._dequantize_dq (model_loader/bitsandbytes_loader.py, 0.10.0 .. 0.26.0;
    absent in 0.9.2) replaces the nested uint8 absmax by its float32 dequantization at load time."""
    assert bnb.bytes_per_weight((0, 10, 0)) == pytest.approx(0.5625)
    assert bnb.bytes_per_weight((0, 19, 0), bnb.Checkpoint(double_quant=True)) == pytest.approx(0.5625)


def test_skip_matching_by_release():
    """is_layer_skipped_bnb (quantization/bitsandbytes.py): whole components only up to 0.7.2,
    also dotted prefixes (prefix_check) from 0.7.3."""
    path = "model.layers.1.mlp.gate_up_proj"
    assert bnb.is_layer_skipped(path, ["mlp"], (0, 7, 1))
    assert not bnb.is_layer_skipped(path, ["model.layers.1.mlp"], (0, 7, 2))
    assert bnb.is_layer_skipped(path, ["model.layers.1.mlp"], (0, 7, 3))
    assert not bnb.is_layer_skipped("model.layers.11.mlp.down_proj", ["model.layers.1.mlp"], (0, 8, 5))
    assert not bnb.is_layer_skipped(path, ["lm_head"])


def test_unsloth_dynamic_skip_keeps_the_layer_in_16_bit():
    """Unsloth's meta-llama-3.1-8b-instruct-unsloth-bnb-4bit skips model.layers.1.mlp: gate_up_proj and
    down_proj (3 × 4096 × 14336) get UnquantizedLinearMethod, i.e. 2 bytes per weight in fp16."""
    version = (0, 7, 3)
    plain = memory.weight_bytes(LLAMA8, 1, 1, 2, "bitsandbytes", vllm_version=version)
    skip = bnb.Checkpoint(skip_modules=("lm_head", "model.layers.1.mlp"))
    dynamic = memory.weight_bytes(LLAMA8, 1, 1, 2, "bitsandbytes", vllm_version=version, bnb_checkpoint=skip)
    mlp = 3 * 4096 * 14336
    assert dynamic - plain == pytest.approx(mlp * (2 - bnb.bytes_per_weight(version)), abs=2)


def test_llama8_bnb_weights_from_vllm_storage():
    """Llama-3.1-8B under bitsandbytes on 0.7.3: every decoder linear layer 4-bit, embed_tokens and
    lm_head (not LinearBase) and the norms in fp16, plus the rotary cos/sin cache."""
    split = memory.params_per_gpu(LLAMA8, 1, 1)
    expected = split.linear * bnb.bytes_per_weight((0, 7, 3)) + split.other * 2 + 131072 * 128 * 2
    assert memory.weight_bytes(LLAMA8, 1, 1, 2, "bitsandbytes", vllm_version=(0, 7, 3)) == pytest.approx(
        expected, abs=2)


def test_qwen25_3b_three_skipped_mlps():
    """Unsloth's qwen2.5-3b-instruct-unsloth-bnb-4bit keeps model.layers.{2,3,30}.mlp unquantized:
    3 layers × 3 × 2048 × 11008 weights at 2 bytes instead of the 4-bit cost."""
    version = (0, 7, 3)
    skip = bnb.Checkpoint(skip_modules=("model.layers.2.mlp", "model.layers.3.mlp", "model.layers.30.mlp"))
    kept = bnb.skipped_by_kind(QWEN3B, 1, range(QWEN3B.architecture.num_hidden_layers), skip.skip_modules)
    assert kept == {"mlp": 3 * 3 * 2048 * 11008}
    # a pipeline stage that does not hold layers 2, 3 or 30 keeps nothing in 16 bit
    assert bnb.skipped_by_kind(QWEN3B, 1, range(4, 30), skip.skip_modules) == {}
    base = memory.weight_bytes(QWEN3B, 1, 1, 2, "bitsandbytes", vllm_version=version)
    assert memory.weight_bytes(QWEN3B, 1, 1, 2, "bitsandbytes", vllm_version=version, bnb_checkpoint=skip) - base \
        == pytest.approx(3 * 3 * 2048 * 11008 * (2 - bnb.bytes_per_weight(version)), abs=2)


def test_experts_unquantized_before_0_10():
    """BitsAndBytesConfig.get_quant_method returns None for FusedMoE up to 0.9.2 (experts in the model
    dtype) and BitsAndBytesMoEMethod from 0.10.0."""
    split = memory.params_per_gpu(MIXTRAL, 1, 1)
    old = memory.weight_bytes(MIXTRAL, 1, 1, 2, "bitsandbytes", vllm_version=(0, 9, 2))
    new = memory.weight_bytes(MIXTRAL, 1, 1, 2, "bitsandbytes", vllm_version=(0, 10, 0))
    rope = memory.rope_cache_bytes(MIXTRAL, 2)
    assert old == pytest.approx(split.experts * 2 + split.attention * bnb.bytes_per_weight((0, 9, 2))
                                + split.other * 2 + rope, abs=2)
    assert new == pytest.approx((split.experts + split.attention) * 0.5625 + split.other * 2 + rope, abs=2)


UNSLOTH_LOG = """\
Unsloth: vLLM Bitsandbytes config using kwargs = {'load_in_4bit': True, 'bnb_4bit_quant_type': 'nf4', \
'bnb_4bit_use_double_quant': True, 'llm_int8_skip_modules': ['lm_head', 'model.layers.1.mlp'], 'llm_int8_threshold': 6.0}
INFO 03-07 09:37:57 llm_engine.py:234] Initializing a V0 LLM engine (v0.7.3) with config: \
model='unsloth/meta-llama-3.1-8b-instruct-unsloth-bnb-4bit', dtype=torch.float16, max_seq_len=1024, \
tensor_parallel_size=1, pipeline_parallel_size=1, quantization=bitsandbytes, enforce_eager=False, kv_cache_dtype=auto,
INFO 03-07 09:39:34 model_runner.py:1115] Loading model weights took 5.5976 GB
"""


def test_log_bnb_config_reaches_the_plan():
    facts = startup_log.parse(UNSLOTH_LOG)
    assert facts.bnb_config["llm_int8_skip_modules"] == ["lm_head", "model.layers.1.mlp"]
    fleet = log_score.fleet_for({"gpu": "T4", "model": "meta-llama/Llama-3.1-8B-Instruct"}, facts)
    assert fleet.base_model.quantization_skip_modules == ["lm_head", "model.layers.1.mlp"]
    assert fleet.base_model.bnb_4bit_use_double_quant is True


def test_inflight_checkpoint_ignores_logged_double_quant():
    """A 16-bit checkpoint is quantized in flight with compress_statistics=True whatever config the
    launcher printed (BitsAndBytesModelLoader._unquantized_generator, 0.6.6 .. 0.26)."""
    text = UNSLOTH_LOG.replace("'bnb_4bit_use_double_quant': True", "'bnb_4bit_use_double_quant': False") \
        .replace("unsloth/meta-llama-3.1-8b-instruct-unsloth-bnb-4bit", "someone/Llama-3.1-8B-Instruct")
    fleet = log_score.fleet_for({"gpu": "T4"}, startup_log.parse(text))
    assert fleet.base_model.bnb_4bit_use_double_quant is None


def _fleet(version: str) -> spec.FleetSpec:
    return spec.FleetSpec.model_validate({
        "name": "bnb", "gpus": [{"type": "T4", "count": 1}],
        "base_model": {"id": "meta-llama/Llama-3.1-8B-Instruct", "quantization": "bitsandbytes", "dtype": "float16",
                       "max_model_len": 1024, "quantization_skip_modules": ["lm_head", "model.layers.1.mlp"]},
        "servers": [{"name": "main", "gpu_memory_utilization": 0.6}],
        "runtime": {"vllm_version": version},
    })


def test_plan_sizes_the_skip_list_and_warns_before_0_7_3():
    old = report.plan_fleet(_fleet("0.7.1"))
    new = report.plan_fleet(_fleet("0.7.3"))
    codes = {f.code for f in old.findings}
    assert "bnb-skip-modules-not-matched" in codes
    assert "bnb-skip-modules-not-matched" not in {f.code for f in new.findings}
    weights = new.servers[0].replicas[0].budget.weights
    assert weights == old.servers[0].replicas[0].budget.weights
