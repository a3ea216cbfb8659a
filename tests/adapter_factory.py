"""Real PEFT adapter directories on disk, for tests of inspection, checks, the sim and the planner.

An adapter is `adapter_config.json` plus `adapter_model.safetensors` written byte for byte: an
8-byte little-endian header length, the JSON header, then the tensor data. The data is zeros and is
written with `truncate`, so a 100 MB adapter costs almost no disk (a sparse file).

Key names follow PEFT: `base_model.model.model.layers.{i}.self_attn.q_proj.lora_A.weight` [r, in],
`...lora_B.weight` [out, r]; `base_model.model.model.embed_tokens.lora_embedding_A` [r, vocab] and
`lora_embedding_B` [hidden, r]; `base_model.model.lm_head.lora_A.weight` [r, hidden].

    from adapter_factory import TINY_LLAMA, write_adapter
    path = write_adapter(tmp_path / "good", TINY_LLAMA, rank=8)
"""

from __future__ import annotations

import json
import pathlib

from fleetspec.adapters import writer
from fleetspec.spec import models

# hidden 64, 4 heads × 16 (q = 64), 2 kv heads × 16 (kv = 32), intermediate 128, 2 layers, vocab 256
TINY_LLAMA = models.Architecture(
    model_type="llama", architectures=["LlamaForCausalLM"], hidden_size=64, intermediate_size=128,
    num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=16, vocab_size=256,
)
# Same shapes, but vLLM gives Qwen2 no embed_tokens/lm_head LoRA.
TINY_QWEN2 = TINY_LLAMA.model_copy(update={"model_type": "qwen2", "architectures": ["Qwen2ForCausalLM"]})
# A bigger sibling (hidden 128): adapters made for it do not fit TINY_LLAMA.
BIGGER_LLAMA = TINY_LLAMA.model_copy(update={"hidden_size": 128, "intermediate_size": 256, "num_attention_heads": 8,
                                              "num_key_value_heads": 4, "vocab_size": 512, "num_hidden_layers": 3})
# A smaller sibling (hidden 32): its adapters fit inside TINY_LLAMA's buffers, so vLLM loads them silently.
SMALLER_LLAMA = TINY_LLAMA.model_copy(update={"hidden_size": 32, "intermediate_size": 64, "num_attention_heads": 2,
                                               "num_key_value_heads": 1})

# Llama-3.1-8B's shapes: a rank-10 F32 LoRA over all seven linear modules is exactly 100 MiB of data.
LLAMA_8B = models.Architecture(
    model_type="llama", architectures=["LlamaForCausalLM"], hidden_size=4096, intermediate_size=14336,
    num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8, head_dim=128, vocab_size=128256,
)

ATTENTION = ("q_proj", "k_proj", "v_proj", "o_proj")
MLP = ("gate_proj", "up_proj", "down_proj")
DTYPE_BYTES = writer.DTYPE_BYTES


def dims(arch: models.Architecture, module: str) -> tuple[int, int]:
    """(in_features, out_features) of a Llama-style module."""
    h, i = arch.hidden_size, arch.intermediate_size
    q = arch.num_attention_heads * arch.attention_head_dim
    kv = arch.kv_heads * arch.attention_head_dim
    return {
        "q_proj": (h, q), "k_proj": (h, kv), "v_proj": (h, kv), "o_proj": (q, h),
        "gate_proj": (h, i), "up_proj": (h, i), "down_proj": (i, h),
        "lm_head": (h, arch.vocab_size),
    }[module]


def module_key(module: str, layer: int) -> str:
    if module == "lm_head":
        return "base_model.model.lm_head"
    block = "self_attn" if module in (*ATTENTION, "qkv_proj") else "mlp"
    return f"base_model.model.model.layers.{layer}.{block}.{module}"


def lora_tensors(
    arch: models.Architecture, rank: int = 8, targets=ATTENTION, layers: int | None = None,
    dtype: str = "BF16", ranks: dict[str, int] | None = None,
) -> dict[str, tuple[str, list[int]]]:
    """name → (dtype, shape) for a LoRA over `targets` (embed_tokens and lm_head allowed).

    `ranks` overrides the rank of modules whose name contains a key, like PEFT's rank_pattern.
    """
    tensors: dict[str, tuple[str, list[int]]] = {}
    for module in targets:
        if module == "embed_tokens":
            prefix = "base_model.model.model.embed_tokens"
            r = _rank_for(prefix, rank, ranks)
            tensors[f"{prefix}.lora_embedding_A"] = (dtype, [r, arch.vocab_size])
            tensors[f"{prefix}.lora_embedding_B"] = (dtype, [arch.hidden_size, r])
            continue
        in_features, out_features = dims(arch, module)
        for layer in range(1 if module == "lm_head" else (layers or arch.num_hidden_layers)):
            prefix = module_key(module, layer)
            r = _rank_for(prefix, rank, ranks)
            tensors[f"{prefix}.lora_A.weight"] = (dtype, [r, in_features])
            tensors[f"{prefix}.lora_B.weight"] = (dtype, [out_features, r])
    return tensors


def _rank_for(name: str, rank: int, ranks: dict[str, int] | None) -> int:
    return next((r for key, r in (ranks or {}).items() if key in name), rank)


def safetensors_bytes(tensors: dict[str, tuple[str, list[int]]]) -> tuple[bytes, int]:
    """(8-byte length + JSON header, size of the data section) for these tensors in name order."""
    return writer.header_bytes(tensors)


def write_safetensors(path: pathlib.Path, tensors: dict[str, tuple[str, list[int]]], *,
                      size: int | None = None) -> int:
    """Write a valid file (zero data, sparse) and return its size; `size` forces another length."""
    head, data = safetensors_bytes(tensors)
    total = len(head) + data if size is None else size
    with open(path, "wb") as handle:
        handle.write(head[:total])
        handle.truncate(total)
    return total


def write_adapter(
    directory: pathlib.Path, arch: models.Architecture = TINY_LLAMA, *, rank: int = 8, alpha: float = 16,
    targets=ATTENTION, tensors: dict | None = None, config: dict | None = None, weights: str = "safetensors",
    base_model: str = "fleetspec/tiny-llama", dtype: str = "BF16",
) -> pathlib.Path:
    """A PEFT LoRA adapter directory. `config` entries override or (value None) remove config keys.

    `weights`: "safetensors", "bin" (a few opaque bytes: never unpickled), or "none".
    """
    directory.mkdir(parents=True, exist_ok=True)
    document = {
        "peft_type": "LORA", "task_type": "CAUSAL_LM", "r": rank, "lora_alpha": alpha,
        "target_modules": list(targets), "bias": "none", "use_dora": False, "use_rslora": False,
        "modules_to_save": None, "rank_pattern": {}, "alpha_pattern": {},
        "base_model_name_or_path": base_model, "init_lora_weights": True,
    }
    for key, value in (config or {}).items():
        if value is None:
            document.pop(key, None)
        else:
            document[key] = value
    (directory / "adapter_config.json").write_text(json.dumps(document, indent=2))
    if weights == "safetensors":
        chosen = tensors if tensors is not None else lora_tensors(arch, rank, targets, dtype=dtype)
        write_safetensors(directory / "adapter_model.safetensors", chosen)
    elif weights == "bin":
        (directory / "adapter_model.bin").write_bytes(b"PK\x03\x04 not a real pickle, never opened")
    return directory
