"""bitsandbytes 4-bit weights as vLLM stores them, per release (issue #18, weights).

The constants and the vLLM functions they come from are in catalog/data/bitsandbytes.yaml. One
quantized weight costs the packed half byte plus its block's absmax; the modules a checkpoint
keeps in 16 bit (`llm_int8_skip_modules`, Unsloth's "dynamic" 4-bit lists) are matched the way
`is_layer_skipped_bnb` matches them against vLLM's module prefixes.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable

from fleetspec.catalog import data_files
from fleetspec.catalog import models as catalog_models

# vLLM's module names inside one decoder layer (LlamaDecoderLayer and the families built like it):
# self_attn.qkv_proj / o_proj, mlp.gate_up_proj / down_proj (fc1 / fc2 for a plain MLP), mlp.experts,
# mlp.shared_experts.
_ATTENTION = ("self_attn",)
_MLP = ("mlp",)


@dataclasses.dataclass(frozen=True)
class Checkpoint:
    """What a bitsandbytes checkpoint's quantization_config says that changes its size."""

    skip_modules: tuple[str, ...] = ()  # llm_int8_skip_modules (modules_to_not_convert)
    double_quant: bool | None = None  # bnb_4bit_use_double_quant; None: as vLLM's in-flight path (True)
    blocksize: int | None = None  # weights per absmax; None: 64


def constants() -> dict:
    return data_files.load("bitsandbytes")


def _version(version: tuple[int, ...] | None) -> tuple[int, ...]:
    return (0, 33) if version is None else tuple(version)


def bytes_per_weight(version: tuple[int, ...] | None, checkpoint: Checkpoint | None = None) -> float:
    """Bytes one 4-bit weight occupies: n/2 packed (create_qweight_for_4bit) plus the absmax of its
    block: uint8 and a float32 nested absmax per 256 blocks under double quantization, float32
    without it, and float32 always from 0.10 (BitsAndBytesModelLoader._dequantize_dq)."""
    c = constants()
    cp = checkpoint or Checkpoint()
    block = cp.blocksize or c["blocksize"]
    nested = cp.double_quant is not False
    if _version(version) >= tuple(c["dequantized_double_quant_since"]) or not nested:
        return c["packed_bytes_per_weight"] + c["absmax_bytes_float32"] / block
    return (c["packed_bytes_per_weight"] + c["absmax_bytes_nested"] / block
            + c["absmax_bytes_float32"] / (block * c["nested_blocksize"]))


def experts_quantized(version: tuple[int, ...] | None) -> bool:
    """Whether routed experts get the 4-bit method (BitsAndBytesMoEMethod, 0.10.0+)."""
    return _version(version) >= tuple(constants()["experts_quantized_since"])


def is_layer_skipped(prefix: str, skip_modules: Iterable[str], version: tuple[int, ...] | None = None) -> bool:
    """vLLM's is_layer_skipped_bnb (quantization/bitsandbytes.py): a skip entry equal to one
    component of the prefix, or (0.7.3+) to one of its dotted prefixes."""
    skip = set(skip_modules)
    components = prefix.split(".")
    if any(name in components for name in skip):
        return True
    if _version(version) < tuple(constants()["skip_prefix_match_since"]):
        return False
    return bool(skip & {".".join(components[: i + 1]) for i in range(len(components))})


def _normalise(entry: str) -> str:
    """A checkpoint's entry as a prefix of the text model's `model.layers.N...` (multimodal
    checkpoints put the text model under language_model.)."""
    for head in ("language_model.model.layers.", "model.language_model.layers.", "language_model.layers."):
        if entry.startswith(head):
            return "model.layers." + entry[len(head):]
    return entry


def dotted_entries(skip_modules: Iterable[str]) -> list[str]:
    """Entries that only the 0.7.3+ prefix match honours."""
    return [e for e in skip_modules if "." in e]


def stock_cannot_load(checkpoint: Checkpoint | None, version: tuple[int, ...] | None) -> list[str]:
    """Dotted skip entries a release before 0.7.3 does not match (is_layer_skipped_bnb compares
    single components only): stock vLLM then builds 4-bit parameters for 16-bit tensors."""
    if checkpoint is None or _version(version) >= tuple(constants()["skip_prefix_match_since"]):
        return []
    return dotted_entries(checkpoint.skip_modules)


def layer_modules(facts: catalog_models.ModelFacts, tp: int, index: int, shard=None) -> dict[str, float]:
    """Linear parameters on one GPU of decoder layer `index` by vLLM module path; MLA and hybrid
    mixers count as one `self_attn` module."""
    from fleetspec.planner import memory

    a = facts.architecture
    p = f"model.layers.{index}"
    out: dict[str, float] = {}
    mixer = facts.mixers[index] if facts.mixers else "attention"
    if mixer == "attention" and facts.attention != "mla":
        d = a.attention_head_dim
        q_out = a.num_attention_heads * d / tp
        kv_out = memory.kv_heads_per_gpu(a.kv_heads, tp) * d
        gate = q_out if a.attn_output_gate else 0
        out[f"{p}.self_attn.qkv_proj"] = a.hidden_size * (q_out + gate) + 2 * a.hidden_size * kv_out
        out[f"{p}.self_attn.o_proj"] = q_out * a.hidden_size
    elif mixer:
        linear = {"attention": memory._attention_params, "mamba2": memory._mamba2_params,
                  "gdn": memory._gdn_params}[mixer](facts, tp)[0]
        out[f"{p}.self_attn"] = linear
    has_mlp = facts.mlp_layers[index] if facts.mixers else True
    dense_first = a.num_hidden_layers - facts.moe_layers
    if facts.is_moe and index >= dense_first:
        split = memory._moe_layer(facts, tp, shard)
        out[f"{p}.mlp.experts"] = split.experts
        if split.shared_experts:
            out[f"{p}.mlp.shared_experts"] = split.shared_experts
    elif has_mlp:
        width = a.hidden_size * a.intermediate_size / tp
        if facts.dense_mlp == "plain":
            out[f"{p}.mlp.fc1"], out[f"{p}.mlp.fc2"] = width, width
        else:
            out[f"{p}.mlp.gate_up_proj"], out[f"{p}.mlp.down_proj"] = 2 * width, width
    return out


def _kind(path: str) -> str:
    if ".self_attn" in path:
        return "attention"
    if path.endswith(".experts"):
        return "experts"
    if path.endswith(".shared_experts"):
        return "shared_experts"
    return "mlp"


def skipped_by_kind(facts: catalog_models.ModelFacts, tp: int, layers: range, skip_modules: Iterable[str],
                    version: tuple[int, ...] | None = None, shard=None) -> dict[str, float]:
    """Linear parameters on one GPU that the skip list keeps in 16 bit, by module kind. Dotted
    entries are honoured in every release: before 0.7.3 stock vLLM cannot load such a checkpoint at
    all (its 16-bit tensors do not fit the 4-bit parameters), so a run that loads is a patched one
    (Unsloth's is_layer_skipped_bnb) and holds them in 16 bit; `stock_cannot_load` says so."""
    skip = [_normalise(e) for e in skip_modules]
    out: dict[str, float] = {}
    if not skip:
        return out
    for index in layers:
        for path, count in layer_modules(facts, tp, index, shard).items():
            if is_layer_skipped(path, skip):
                out[_kind(path)] = out.get(_kind(path), 0.0) + count
    return out


def weight_bytes(facts: catalog_models.ModelFacts, split, scope: frozenset[str], dtype_bytes: int,
                 version: tuple[int, ...] | None, checkpoint: Checkpoint | None, layers: range,
                 tp: int, layer_scale: float = 1.0, shard=None) -> float:
    """One GPU's weights (rope cache and padding aside) under bitsandbytes: `split` is
    memory.params_per_gpu's; the kinds in `scope` are 4-bit except what the skip list names, the
    routed experts before 0.10, and everything else in the model dtype."""
    cp = checkpoint or Checkpoint()
    cost = bytes_per_weight(version, cp)
    skipped = skipped_by_kind(facts, tp, layers, cp.skip_modules, version, shard)
    total = split.other * dtype_bytes + split.vision * (cost if "vision" in scope else dtype_bytes)
    for kind, count in split.by_kind().items():
        if kind == "vision":
            continue
        quantized = kind in scope and (kind != "experts" or experts_quantized(version))
        if not quantized:
            total += count * dtype_bytes
            continue
        kept = min(count, skipped.get(kind, 0.0) * layer_scale)
        total += kept * dtype_bytes + (count - kept) * cost
    return total


def checkpoint_of(skip_modules: Iterable[str] | None, double_quant: bool | None,
                  blocksize: int | None) -> Checkpoint | None:
    if not skip_modules and double_quant is None and blocksize is None:
        return None
    return Checkpoint(tuple(skip_modules or ()), double_quant, blocksize)
