"""Which modules vLLM 0.33 gives LoRA slots for a base architecture, and their dimensions.

vLLM wraps every linear layer of the model plus `embed_tokens`/`lm_head` where the model class
declares `embedding_modules`; adapter modules are matched by name suffix after expanding the packed
modules (Llama: q/k/v → qkv_proj, gate/up → gate_up_proj; vllm/model_executor/models/llama.py).
A LoRA module is A [r, in] and B [out, r]; vLLM copies them into slot buffers sized by the base
model, so the base dimensions are what an adapter's tensors must match.

Layouts are known exactly for dense Llama-style and Phi-3 models. For MoE and MLA models the
attention and expert modules differ per model class, so only what is certain is checked.
"""

from __future__ import annotations

import dataclasses
import functools

from fleetspec.spec import models

# model_type / architectures of dense models whose decoder layers are Llama-shaped:
# self_attn.{q,k,v,o}_proj and mlp.{gate,up,down}_proj, packed as in vLLM's llama.py.
LLAMA_STYLE_TYPES = frozenset({
    "llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3_text", "granite", "cohere",
    "cohere2", "olmo2", "internlm3", "yi", "solar",
})
PHI3_TYPES = frozenset({"phi3"})
MOE_TYPES = frozenset({"mixtral", "qwen2_moe", "qwen3_moe", "phimoe", "granitemoe", "olmoe"})
MLA_TYPES = frozenset({"deepseek_v2", "deepseek_v3", "kimi_k2"})

ATTENTION = ("q_proj", "k_proj", "v_proj", "o_proj")
MLP = ("gate_proj", "up_proj", "down_proj")
EMBEDDINGS = ("embed_tokens", "lm_head")


@dataclasses.dataclass(frozen=True)
class Layout:
    family: str  # "llama", "phi3", "moe", "mla", "unknown"
    expected: frozenset[str] | None  # module suffixes vLLM accepts; None when fleetspec does not know
    exact: bool  # every module vLLM wraps is known: unknown names are certain errors
    embedding_lora: bool

    def module_names(self, suffix: str, layers: int) -> tuple[str, ...] | None:
        """Every full module name that suffix may take in the base model (None: not modelled)."""
        template = _TEMPLATES.get(suffix)
        if template is None:
            return None
        if "{i}" not in template:
            return (template,)
        return tuple(template.format(i=i) for i in range(layers))


_TEMPLATES = {
    **{s: "model.layers.{i}.self_attn." + s for s in (*ATTENTION, "qkv_proj")},
    **{s: "model.layers.{i}.mlp." + s for s in (*MLP, "gate_up_proj")},
    "embed_tokens": "model.embed_tokens",
    "lm_head": "lm_head",
}


def family(architecture: models.Architecture) -> str:
    model_type = (architecture.model_type or "").lower()
    names = " ".join(architecture.architectures or []).lower()
    if architecture.kv_lora_rank or model_type in MLA_TYPES:
        return "mla"
    if architecture.num_local_experts or architecture.num_experts or model_type in MOE_TYPES:
        return "moe"
    if model_type in PHI3_TYPES or "phi3forcausallm" in names:
        return "phi3"
    if model_type in LLAMA_STYLE_TYPES or (not model_type and not names):
        return "llama"  # no type given: inline facts are most often a Llama-style model
    if any(n in names for n in ("llamafor", "mistralfor", "qwen2for", "qwen3for", "gemmafor", "gemma2for")):
        return "llama"
    return "unknown"


def layout_for(architecture: models.Architecture, embedding_lora: bool) -> Layout:
    kind = family(architecture)
    embeddings = set(EMBEDDINGS) if embedding_lora else set()
    if kind == "llama":
        return Layout(kind, frozenset({*ATTENTION, *MLP, *embeddings}), True, embedding_lora)
    if kind == "phi3":
        return Layout(kind, frozenset({"qkv_proj", "o_proj", "gate_up_proj", "down_proj", *embeddings}), True,
                      embedding_lora)
    if kind == "moe":
        return Layout(kind, frozenset({*ATTENTION, *MLP, "gate", "w1", "w2", "w3", *embeddings}), False,
                      embedding_lora)
    if kind == "mla":
        mla = {"q_proj", "q_a_proj", "q_b_proj", "kv_a_proj_with_mqa", "kv_b_proj", "o_proj", "gate"}
        return Layout(kind, frozenset({*mla, *MLP, *embeddings}), False, embedding_lora)
    return Layout(kind, None, False, embedding_lora)


def dims(architecture: models.Architecture, suffix: str, family_name: str) -> tuple[int, int] | None:
    """(in_features, out_features) of a module in the base model; None where not modelled."""
    hidden = architecture.hidden_size
    q = architecture.num_attention_heads * architecture.attention_head_dim
    kv = architecture.kv_heads * architecture.attention_head_dim
    inter = architecture.intermediate_size
    table = {
        "embed_tokens": (architecture.vocab_size, hidden),
        "lm_head": (hidden, architecture.vocab_size),
    }
    if family_name in ("llama", "phi3", "moe"):
        table.update({"q_proj": (hidden, q), "k_proj": (hidden, kv), "v_proj": (hidden, kv), "o_proj": (q, hidden)})
    if family_name in ("llama", "phi3"):
        table.update({"gate_proj": (hidden, inter), "up_proj": (hidden, inter), "down_proj": (inter, hidden)})
    if family_name == "phi3":
        table.update({"qkv_proj": (hidden, q + 2 * kv), "gate_up_proj": (hidden, 2 * inter)})
    if family_name == "moe":
        experts = architecture.num_local_experts or architecture.num_experts
        if experts:
            table["gate"] = (hidden, experts)
    return table.get(suffix)


def is_known_name(module_name: str, layout: Layout, layers: int) -> bool:
    """Whether vLLM will find this module in the base model (wrong prefixes load as silent no-ops).

    Only meaningful for exact layouts; elsewhere every name is given the benefit of the doubt.
    """
    if not layout.exact:
        return True
    suffix = module_name.rsplit(".", 1)[-1]
    return suffix not in _TEMPLATES or module_name in _known_names(layout, layers)


@functools.lru_cache(maxsize=64)
def _known_names(layout: Layout, layers: int) -> frozenset[str]:
    return frozenset(name for suffix in layout.expected for name in layout.module_names(suffix, layers) or ())
