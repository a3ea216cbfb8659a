"""Bytes per weight of quantized checkpoints, as vLLM stores them (vllm-facts §5.1).

Only linear layers are quantized: embeddings, lm_head and norms stay in the model dtype
(VocabParallelEmbedding is not a LinearBase, so AWQ/GPTQ/FP8 leave it alone).
"""

from __future__ import annotations

import dataclasses

DEFAULT_GROUP_SIZE = 128

# 4-bit integer weights with per-group fp16 scale and packed 4-bit zero point:
# qweight 0.5 B + (2 B scale + 0.5 B zero) / group (vllm/model_executor/layers/quantization/auto_awq.py:418-495).
_GROUPED_4BIT = {"awq", "auto_awq", "awq_marlin", "gptq", "auto_gptq", "gptq_marlin", "moe_wna16"}
# One byte per weight plus per-tensor or 128×128-block scales (≤ 0.0003 B/weight, fp8.py:290-346).
_ONE_BYTE = {
    "fp8", "fbgemm_fp8", "modelopt", "compressed-tensors", "experts_int8", "quark", "modelopt_mxfp8",
    "mxfp8", "deepseek_v4_fp8", "online", "fp8_per_tensor", "fp8_per_block", "fp8_per_channel",
    "int8_per_channel_weight_only",
}
# FP4 with one fp8 scale per 16 (NVFP4) or one e8m0 scale per 32 (MXFP4) weights.
_FP4 = {"modelopt_fp4": 0.5 + 1 / 16, "nvfp4_per_token": 0.5 + 1 / 16, "mxfp4": 0.5 + 1 / 32,
        "gpt_oss_mxfp4": 0.5 + 1 / 32}
# Methods that quantize only the routed experts: Mxfp4Config.get_quant_method returns
# UnquantizedLinearMethod for every LinearBase (attention, dense MLP) and the MXFP4 MoE method for
# RoutedExperts (vllm/model_executor/layers/quantization/mxfp4.py, 0.32; gpt-oss's config also lists
# self_attn in modules_to_not_convert).
EXPERTS_ONLY = {"mxfp4", "gpt_oss_mxfp4"}
# Out-of-tree plugins: NF4 with double-quantized absmax per 64 weights; GGUF Q4_K is 4.5 bits.
_PLUGINS = {"bitsandbytes": 0.5 + 1 / 64, "gguf": 4.5 / 8}
# compressed-tensors carries its bit width in the checkpoint; 8-bit (w8a8/fp8) is assumed, which
# over-states a w4a16 checkpoint by 2x on the safe side.
ASSUMED = {"compressed-tensors", "bitsandbytes", "gguf"}


@dataclasses.dataclass(frozen=True)
class WeightCost:
    bytes_per_weight: float  # of quantized linear layers
    estimated: bool  # True when the method's real size depends on checkpoint details we do not know


def weight_cost(method: str, group_size: int | None, dtype_bytes: int) -> WeightCost:
    """What one linear-layer weight costs on the GPU for this `--quantization` method."""
    if method in ("none", ""):
        return WeightCost(float(dtype_bytes), False)
    if method in _GROUPED_4BIT:
        group = group_size or DEFAULT_GROUP_SIZE
        if group < 0:  # -1: one scale per output channel (GPTQ/AWQ "per-channel"), a rounding error per weight
            return WeightCost(0.5, False)
        return WeightCost(0.5 + 2.5 / group, False)
    if method in _ONE_BYTE:
        return WeightCost(1.0, method in ASSUMED)
    if method in _FP4:
        return WeightCost(_FP4[method], False)
    if method in _PLUGINS:
        return WeightCost(_PLUGINS[method], True)
    # torchao, inc, fp_quant, humming, modelopt_mixed: layouts vary; assume no saving.
    return WeightCost(float(dtype_bytes), True)


def dtype_bytes(dtype: str) -> int:
    """Bytes of a model/activation dtype name as vLLM's --dtype spells it."""
    return 4 if dtype in ("float", "float32") else 2


def kv_cache_bytes(kv_cache_dtype: str, model_dtype_bytes: int) -> float:
    """Bytes per cached K or V element (vllm/utils/torch_utils.py:40-65)."""
    if kv_cache_dtype in ("auto", "float16", "bfloat16"):
        return float(model_dtype_bytes) if kv_cache_dtype == "auto" else 2.0
    if kv_cache_dtype.startswith("fp8") or kv_cache_dtype.startswith("int8"):
        return 1.0
    if kv_cache_dtype in ("int4_per_token_head",):
        return 0.5
    if kv_cache_dtype.startswith("nvfp4"):
        return 0.5 + 1 / 16
    return float(model_dtype_bytes)
