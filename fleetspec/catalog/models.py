"""Base-model facts: architecture numbers and what vLLM does with the architecture.

`resolve(base_model)` answers from the spec's inline `architecture` (config.json keys; the loader
fills it for local model directories) or from the packaged catalog (`data/models.yaml`), matched
by Hugging Face id or alias, case-insensitively. Inline numbers always win over the catalog.
"""

from __future__ import annotations

import dataclasses
import functools

from fleetspec.catalog import data_files
from fleetspec.spec import models as spec_models

# Unpacked projection names (PEFT target_modules) → the packed module vLLM wraps with LoRA.
PACKED_MODULES = {
    "q_proj": "qkv_proj", "k_proj": "qkv_proj", "v_proj": "qkv_proj", "qkv_proj": "qkv_proj",
    "query_key_value": "qkv_proj", "c_attn": "qkv_proj",
    "o_proj": "o_proj", "dense": "o_proj", "c_proj": "o_proj",
    "gate_proj": "gate_up_proj", "up_proj": "gate_up_proj", "gate_up_proj": "gate_up_proj",
    "down_proj": "down_proj",
    "w1": "experts", "w2": "experts", "w3": "experts", "experts": "experts",
    "gate": "gate", "embed_tokens": "embed_tokens", "lm_head": "lm_head",
    "kv_a_proj_with_mqa": "kv_a_proj_with_mqa", "kv_b_proj": "kv_b_proj",
    "q_a_proj": "q_proj", "q_b_proj": "q_proj",
}


@dataclasses.dataclass(frozen=True)
class ModelFacts:
    id: str  # catalog id, or base_model.id for inline architectures
    family: str  # key of `families` in models.yaml, or "unknown"
    architecture: spec_models.Architecture
    num_parameters: int | None  # published total; None → derived from the shapes
    default_dtype: str  # what vLLM's --dtype auto serves
    max_position_embeddings: int | None
    lora_supported: bool
    embedding_lora: bool  # vLLM gives embed_tokens / lm_head LoRA buffers
    lora_modules: tuple[str, ...]  # packed module names vLLM wraps (qkv_proj, gate_up_proj, experts, ...)
    mlp: str  # "gated" (gate/up/down), "plain" (fc/proj), "moe"
    attention: str  # "standard" or "mla"
    qkv_bias: bool
    learned_positions: bool
    sliding_window_layers: str | None  # None, "all" or "alternate"
    checkpoint_quantization: str  # the checkpoint's own quantization ("none", "awq", ...)
    checkpoint_group_size: int | None
    source: str
    from_catalog: bool

    @property
    def is_moe(self) -> bool:
        return self.mlp == "moe"

    @property
    def num_experts(self) -> int:
        return self.architecture.num_local_experts or self.architecture.num_experts or 0

    @property
    def expert_intermediate_size(self) -> int:
        return self.architecture.moe_intermediate_size or self.architecture.intermediate_size


def resolve(base_model: spec_models.BaseModelSpec) -> ModelFacts | None:
    """Facts for the spec's base model, or None when neither the spec nor the catalog knows it."""
    entry = lookup(base_model.id)
    inline = base_model.architecture
    if inline is None:
        return _from_entry(entry) if entry is not None else None
    family = _family_of(inline) or (entry["family"] if entry else None)
    return _facts(
        model_id=entry["id"] if entry else base_model.id, family=family or "unknown",
        architecture=inline, num_parameters=inline.num_parameters,
        dtype=entry.get("dtype", "bfloat16") if entry else "bfloat16",
        entry=entry, source="inline base_model.architecture", from_catalog=False,
    )


def lookup(model_id: str) -> dict | None:
    """The catalog entry for a Hugging Face id or alias (any case), or a path ending in one."""
    index = _index()
    key = model_id.strip().lower().rstrip("/")
    if key in index:
        return index[key]
    parts = key.replace("\\", "/").split("/")
    if len(parts) > 2 and "/".join(parts[-2:]) in index:  # /models/org/name
        return index["/".join(parts[-2:])]
    return None


def known_ids() -> list[str]:
    return [entry["id"] for entry in data_files.load("models")["models"]]


def family(name: str) -> dict:
    return data_files.load("models")["families"].get(name, {})


@functools.cache
def _index() -> dict[str, dict]:
    index: dict[str, dict] = {}
    for entry in data_files.load("models")["models"]:
        for name in (entry["id"], *entry.get("aliases", ())):
            index[name.lower()] = entry
    return index


@functools.cache
def _architecture_of(model_id: str) -> spec_models.Architecture:
    return spec_models.Architecture.model_validate(_index()[model_id.lower()]["config"])


def _from_entry(entry: dict) -> ModelFacts:
    return _facts(
        model_id=entry["id"], family=entry["family"], architecture=_architecture_of(entry["id"]),
        num_parameters=entry.get("num_parameters"), dtype=entry.get("dtype", "bfloat16"),
        entry=entry, source=entry["source"], from_catalog=True,
    )


def _family_of(arch: spec_models.Architecture) -> str | None:
    families = data_files.load("models")["families"]
    if arch.model_type and arch.model_type.lower() in families:
        return arch.model_type.lower()
    for name, facts in families.items():
        if arch.architectures and arch.architectures[0] in facts.get("architectures", ()):
            return name
    return None


def _facts(*, model_id: str, family: str, architecture: spec_models.Architecture, num_parameters: int | None,
           dtype: str, entry: dict | None, source: str, from_catalog: bool) -> ModelFacts:
    fam = data_files.load("models")["families"].get(family, {})
    moe = bool(architecture.num_local_experts or architecture.num_experts)
    quant = (entry or {}).get("quantization") or {}
    default_modules = ["qkv_proj", "o_proj", "experts", "gate"] if moe else ["qkv_proj", "o_proj", "gate_up_proj", "down_proj"]
    window_layers = (entry or {}).get("sliding_window_layers") or fam.get("sliding_window_layers")
    return ModelFacts(
        id=model_id, family=family, architecture=architecture, num_parameters=num_parameters,
        default_dtype=dtype, max_position_embeddings=architecture.max_position_embeddings,
        lora_supported=fam.get("lora_supported", True), embedding_lora=fam.get("embedding_lora", False),
        lora_modules=tuple(fam.get("lora_modules", default_modules)),
        mlp="moe" if moe else fam.get("mlp", "gated"),
        attention="mla" if architecture.kv_lora_rank else fam.get("attention", "standard"),
        qkv_bias=fam.get("qkv_bias", False), learned_positions=fam.get("learned_positions", False),
        sliding_window_layers=(window_layers or "all") if architecture.sliding_window else None,
        checkpoint_quantization=quant.get("method", "none"), checkpoint_group_size=quant.get("group_size"),
        source=source, from_catalog=from_catalog,
    )
