"""Writing PEFT LoRA adapters in their on-disk format: adapter_config.json and a safetensors file.

The reading side is `inspect` and `header`; this is its mirror, used by `scripts/make-demo-adapters`
(tiny adapters with random weights) and by `standins` (adapters of a fleet's declared shapes, for
trying a fleet on a machine that does not have its adapters). Standard library only, so the demo
script runs before any virtualenv exists.

safetensors: an 8-byte little-endian header length, the JSON header (padded with spaces to a
multiple of 8, as the safetensors library writes it), then the tensors back to back.
"""

from __future__ import annotations

import json
import os
import struct

DTYPE_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "F8_E4M3": 1, "U8": 1, "I8": 1}


def adapter_config(rank: int, alpha: float, targets, base_model: str) -> dict:
    """A PEFT LoraConfig as `save_pretrained` writes it, for a plain LoRA over `targets`."""
    return {
        "alpha_pattern": {},
        "base_model_name_or_path": base_model,
        "bias": "none",
        "fan_in_fan_out": False,
        "inference_mode": True,
        "init_lora_weights": True,
        "lora_alpha": alpha,
        "lora_dropout": 0.0,
        "modules_to_save": None,
        "peft_type": "LORA",
        "r": rank,
        "rank_pattern": {},
        "target_modules": sorted(targets),
        "task_type": "CAUSAL_LM",
        "use_dora": False,
        "use_rslora": False,
    }


def config_text(config: dict) -> str:
    return json.dumps(config, indent=2, sort_keys=True) + "\n"


def header_bytes(entries: dict[str, tuple[str, list[int]]], metadata: dict | None = None) -> tuple[bytes, int]:
    """(length + JSON header, size of the data section) for tensors name → (dtype, shape), in name order."""
    header: dict = {"__metadata__": metadata} if metadata is not None else {}
    offset = 0
    for name in sorted(entries):
        dtype, shape = entries[name]
        size = DTYPE_BYTES[dtype]
        for dim in shape:
            size *= dim
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + size]}
        offset += size
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)  # keep the tensor data 8-byte aligned, as safetensors does
    return struct.pack("<Q", len(text)) + text, offset


def safetensors_bytes(tensors: dict[str, tuple[list[int], bytes]]) -> bytes:
    """A whole float16 file from name → (shape, little-endian float16 bytes)."""
    head, _ = header_bytes({name: ("F16", shape) for name, (shape, _) in tensors.items()}, {"format": "pt"})
    return head + b"".join(tensors[name][1] for name in sorted(tensors))


def write_zero_safetensors(path: str | os.PathLike, entries: dict[str, tuple[str, list[int]]]) -> int:
    """Write a valid file whose tensors are all zeros, as a sparse file (a 100 MB adapter costs almost
    no disk); returns its size. Zero weights are what PEFT starts lora_B from: the adapter changes
    nothing in the base model's outputs."""
    head, data = header_bytes(entries, {"format": "pt"})
    with open(path, "wb") as handle:
        handle.write(head)
        handle.truncate(len(head) + data)
    return len(head) + data
