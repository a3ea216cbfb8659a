"""Base-model facts: architecture numbers and what vLLM does with the architecture.

`resolve(base_model)` answers from the spec's inline `architecture` (config.json keys; the loader
fills it for local model directories) or from the packaged catalog (`data/models.yaml`), matched
by Hugging Face id or alias, case-insensitively. Inline numbers always win over the catalog.
"""

from __future__ import annotations

import dataclasses
import functools

from fleetspec.catalog import data_files, repo_names
from fleetspec.spec import models as spec_models

# Unpacked projection names (PEFT target_modules) → the packed module vLLM wraps with LoRA.
PACKED_MODULES = {
    "q_proj": "qkv_proj", "k_proj": "qkv_proj", "v_proj": "qkv_proj", "qkv_proj": "qkv_proj",
    "query_key_value": "qkv_proj", "c_attn": "qkv_proj",
    "o_proj": "o_proj", "dense": "o_proj", "c_proj": "o_proj",
    "gate_proj": "gate_up_proj", "up_proj": "gate_up_proj", "gate_up_proj": "gate_up_proj",
    "down_proj": "down_proj", "fc1": "fc1", "fc2": "fc2",  # phi-2's two-matrix MLP
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
    sliding_window_layers: str | None  # None, "all", "alternate", "pattern" or "layer_types"
    checkpoint_quantization: str  # the checkpoint's own quantization ("none", "awq", ...)
    checkpoint_group_size: int | None
    source: str
    from_catalog: bool
    # The catalog entry whose shapes were used because the name re-publishes it (a mirror or a
    # quantized repack, catalog/repo_names.py); None when the id itself is in the catalog.
    matched_by_name: str | None = None
    # Attention type of every decoder layer, "full" or "sliding" (issue #18 item 4): from the
    # config's layer_types, its sliding_window_pattern, or the family's known layout.
    layer_kinds: tuple[str, ...] = ()
    # config.json gives a sliding_window but nothing says which layers use it (an unknown family):
    # the planner keeps every layer full (more KV per request, the safe side) and says so.
    window_layers_unknown: bool = False
    dense_mlp: str = "gated"  # the MLP of dense layers (a MoE model's first_k_dense_replace layers): gated/plain
    quantization_scope: frozenset[str] | None = None  # module kinds the checkpoint quantizes; None: the method's
    # Hybrid attention + state-space models (issue #18 item 4): the token mixer of every decoder layer
    # ("attention", "mamba2", "gdn" or "" for an MLP-only block) and whether it has an MLP. Empty:
    # every layer is attention + MLP. layer_kinds then says "mamba" for a state layer and "none" for a
    # layer without a cache.
    mixers: tuple[str, ...] = ()
    mlp_layers: tuple[bool, ...] = ()
    rotary: bool = True  # the attention layers use a rotary embedding (Nemotron-H's do not)
    qk_norm: bool = False  # q_norm / k_norm of head_dim per attention layer (Qwen3.5)
    # The dummy multimodal data vLLM's profile run builds (its DummyInputsBuilder): "qwen2_vl" = one
    # image and one video at the image processor's max_pixels (qwen2_vl.py Qwen2VLDummyInputsBuilder).
    mm_dummy: str | None = None
    # The first vLLM release whose model class declares embed_tokens / lm_head in embedding_modules
    # (models.yaml family `embedding_lora_since`); None: every release as `embedding_lora` says.
    embedding_lora_since: str | None = None

    @property
    def is_moe(self) -> bool:
        return self.mlp == "moe"

    @property
    def num_experts(self) -> int:
        return self.architecture.routed_experts

    @property
    def expert_intermediate_size(self) -> int:
        return self.architecture.moe_intermediate_size or self.architecture.intermediate_size

    @property
    def shared_expert_intermediate_size(self) -> int:
        """Width of the shared-expert MLP of each MoE layer: DeepSeek's n_shared_experts ×
        moe_intermediate_size (DeepseekV2MoE, vllm/model_executor/models/deepseek_v2.py), Qwen-MoE's
        shared_expert_intermediate_size (Qwen2MoeSparseMoeBlock, qwen2_moe.py)."""
        a = self.architecture
        if not self.is_moe:
            return 0
        if a.shared_expert_intermediate_size is not None:
            return a.shared_expert_intermediate_size
        return (a.n_shared_experts or 0) * self.expert_intermediate_size

    @property
    def moe_layers(self) -> int:
        """Decoder layers with experts: all but DeepSeek's first_k_dense_replace dense layers
        (deepseek_v2.py DeepseekV2DecoderLayer: layer_idx >= first_k_dense_replace)."""
        if not self.is_moe:
            return 0
        return self.architecture.num_hidden_layers - min(self.architecture.first_k_dense_replace or 0,
                                                         self.architecture.num_hidden_layers)

    @property
    def sliding_layers(self) -> int:
        return sum(1 for kind in self.layer_kinds if kind == "sliding")

    @property
    def is_hybrid(self) -> bool:
        """Some layers keep a state-space (Mamba2 / Gated DeltaNet) state instead of a KV cache."""
        return "mamba" in self.layer_kinds


def resolve(base_model: spec_models.BaseModelSpec) -> ModelFacts | None:
    """Facts for the spec's base model, or None when neither the spec nor the catalog knows it."""
    entry = lookup(base_model.id)
    inline = base_model.architecture
    if inline is None:
        if entry is not None:
            return _from_entry(entry)
        return _from_name(base_model.id)
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


def lookup_by_name(model_id: str) -> tuple[dict, repo_names.NameReading] | None:
    """The catalog entry a mirror or quantized repack re-publishes, read from its name alone: the
    name without its quantization suffix (and without the organisation) matches exactly one
    entry's name. TheBloke-style names drop Llama-2's "-hf"."""
    reading = repo_names.read(model_id)
    if reading is None:
        return None
    names = _name_index()
    for name in (reading.name, reading.name + "-hf"):
        entries = names.get(name, [])
        if len(entries) == 1:
            return entries[0], reading
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
def _name_index() -> dict[str, list[dict]]:
    """Catalog entries by the name part of their ids and aliases (no organisation)."""
    names: dict[str, list[dict]] = {}
    for entry in data_files.load("models")["models"]:
        for name in {n.lower().split("/")[-1] for n in (entry["id"], *entry.get("aliases", ()))}:
            if entry not in names.setdefault(name, []):
                names[name].append(entry)
    return names


@functools.cache
def _architecture_of(model_id: str) -> spec_models.Architecture:
    return spec_models.Architecture.model_validate(_index()[model_id.lower()]["config"])


def _from_entry(entry: dict) -> ModelFacts:
    return _facts(
        model_id=entry["id"], family=entry["family"], architecture=_architecture_of(entry["id"]),
        num_parameters=entry.get("num_parameters"), dtype=entry.get("dtype", "bfloat16"),
        entry=entry, source=entry["source"], from_catalog=True,
    )


def _from_name(model_id: str) -> ModelFacts | None:
    found = lookup_by_name(model_id)
    if found is None:
        return None
    entry, reading = found
    if reading.method is not None:
        quant = {"method": reading.method}
        if reading.group_size:
            quant["group_size"] = reading.group_size
        entry = {**entry, "quantization": quant}
        if reading.dtype:
            entry["dtype"] = reading.dtype
    facts = _from_entry(entry)
    return dataclasses.replace(facts, id=model_id.strip().rstrip("/"), matched_by_name=facts.id,
                               source=f"{facts.source} (`{model_id}` read by name as {reading.says})")


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
    moe = bool(architecture.routed_experts)
    quant = (entry or {}).get("quantization") or {}
    default_modules = ["qkv_proj", "o_proj", "experts", "gate"] if moe else ["qkv_proj", "o_proj", "gate_up_proj", "down_proj"]
    window_layers = (entry or {}).get("sliding_window_layers") or fam.get("sliding_window_layers")
    layout, kinds, unknown = window_layout(architecture, window_layers, fam.get("sliding_window_pattern", 6))
    dense_mlp = architecture.mlp or fam.get("mlp", "gated")
    scope = architecture.quantization_scope or quant.get("scope")
    mixers, mlp_layers = hybrid_layout(architecture)
    if architecture.hybrid_override_pattern:
        kinds = tuple({"M": "mamba", "*": "full"}.get(c, "none") for c in architecture.hybrid_override_pattern)
    return ModelFacts(
        id=model_id, family=family, architecture=architecture, num_parameters=num_parameters,
        default_dtype=dtype, max_position_embeddings=architecture.max_position_embeddings,
        lora_supported=fam.get("lora_supported", True), embedding_lora=fam.get("embedding_lora", False),
        lora_modules=tuple(fam.get("lora_modules", default_modules)),
        mlp="moe" if moe else dense_mlp,
        attention="mla" if architecture.kv_lora_rank else fam.get("attention", "standard"),
        qkv_bias=fam.get("qkv_bias", False), learned_positions=fam.get("learned_positions", False),
        sliding_window_layers=layout,
        checkpoint_quantization=quant.get("method", "none"), checkpoint_group_size=quant.get("group_size"),
        source=source, from_catalog=from_catalog,
        layer_kinds=kinds, window_layers_unknown=unknown,
        dense_mlp="gated" if dense_mlp == "moe" else dense_mlp,
        quantization_scope=frozenset(scope) if scope else None,
        mixers=mixers, mlp_layers=mlp_layers, rotary=fam.get("rotary", True), qk_norm=fam.get("qk_norm", False),
        mm_dummy=fam.get("mm_dummy"),
        embedding_lora_since=fam.get("embedding_lora_since"),
    )


def hybrid_layout(arch: spec_models.Architecture) -> tuple[tuple[str, ...], tuple[bool, ...]]:
    """(mixer, has an MLP) of every decoder layer of a hybrid model, as vLLM builds them; ((), ()) for
    an ordinary decoder. Nemotron-H (ALL_DECODER_LAYER_TYPES, vllm/model_executor/models/nemotron_h.py):
    each layer is one block, M a MambaMixer2, * attention, - an MLP. Qwen3.5/3.6 (qwen3_5.py): every
    layer has an MLP after a Gated DeltaNet (layer_types linear_attention) or full attention."""
    if arch.hybrid_override_pattern:
        pattern = arch.hybrid_override_pattern
        return (tuple({"M": "mamba2", "*": "attention"}.get(c, "") for c in pattern), tuple(c == "-" for c in pattern))
    if arch.layer_types and "linear_attention" in arch.layer_types:
        return (tuple("gdn" if t == "linear_attention" else "attention" for t in arch.layer_types),
                (True,) * len(arch.layer_types))
    return (), ()


def window_layout(arch: spec_models.Architecture, family_layout: str | None,
                  family_pattern: int = 6) -> tuple[str | None, tuple[str, ...], bool]:
    """(layout name, per-layer "full"/"sliding", window given but its layers unknown).

    What vLLM gives each layer (issue #18 item 4): a model whose code reads `layer_types` (Gemma-2/3,
    Llama, gpt-oss: `per_layer_sliding_window`, vllm/model_executor/models/gemma3.py, llama.py) windows
    only the sliding_attention layers; a config without layer_types puts its sliding_window on the
    CacheConfig and so on every layer (EngineArgs.create_engine_config, vllm/engine/arg_utils.py:
    "Only set CacheConfig.sliding_window if the model is all sliding window"; Attention.__init__,
    vllm/model_executor/layers/attention/attention.py). Which families do that is catalog data;
    for an unknown family the window is not assumed."""
    layers = arch.num_hidden_layers
    full = ("full",) * layers
    if arch.layer_types is not None:
        named = {"sliding_attention": "sliding", "linear_attention": "mamba"}
        kinds = tuple(named.get(t, "full") for t in arch.layer_types)
        return ("layer_types" if "sliding" in kinds else None), kinds, False
    if not arch.sliding_window or arch.use_sliding_window is False:
        return None, full, False
    layout = "pattern" if arch.sliding_window_pattern else family_layout
    if layout is None and arch.use_sliding_window:
        layout = "all"  # Qwen2-style: use_sliding_window true on a config without layer_types
    if layout == "all":
        return layout, ("sliding",) * layers, False
    if layout == "alternate":  # HF Gemma2Config / gpt-oss (layer_idx % 2 == 0): even layers slide
        return layout, tuple("sliding" if i % 2 == 0 else "full" for i in range(layers)), False
    if layout == "pattern":  # HF Gemma3TextConfig: every sliding_window_pattern-th layer is global
        period = arch.sliding_window_pattern or family_pattern
        return layout, tuple("full" if (i + 1) % period == 0 else "sliding" for i in range(layers)), False
    return None, full, True
