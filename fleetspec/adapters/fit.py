"""Does an adapter fit its base model? Module names and tensor shapes against the architecture. Pure.

vLLM refuses modules it has no slot for and tensors larger than a slot, but copies smaller tensors
into a corner of the slot without a word: a wrong-base adapter then serves garbage. These checks
catch both, from the safetensors header alone.
"""

from __future__ import annotations

from fleetspec.adapters import layout as adapter_layout
from fleetspec.adapters import report as adapter_report
from fleetspec.adapters.report import Report, Target
from fleetspec.errors import Severity
from fleetspec.spec import models


def check(report: Report, target: Target) -> bool | None:
    """Modules and shapes: True when every shape fits, False when one does not, None when unknown."""
    layout = adapter_layout.layout_for(target.architecture, target.embedding_lora)
    _modules(report, target, layout)
    if layout.expected is None:
        return None
    return _shapes(report, target, layout)


def unsupported_tensors(report: Report) -> None:
    config = report.info.config
    names = [
        n for n in report.info.unsupported_tensors
        if not (config.use_dora and "lora_magnitude_vector" in n)
        and not (config.raw.get("lora_bias") and n.endswith(".bias"))
    ]
    if names:
        report.error(
            "adapter-unsupported-tensor",
            f"{report.info.path} holds {adapter_report.few(names)}, which is not a LoRA weight; "
            f"vLLM refuses it: \"{names[0]} is unsupported LoRA weight\"",
            "re-export a plain LoRA adapter (only lora_A/lora_B and lora_embedding_A/B tensors)",
        )


def _modules(report: Report, target: Target, layout: adapter_layout.Layout) -> None:
    unsupported_tensors(report)
    if layout.expected is None:
        report.add(Severity.INFO, "adapter-layout-unknown",
                   f"fleetspec does not know which modules vLLM adapts in a {adapter_report.arch_name(target)} model, "
                   f"so the modules and shapes of {report.info.path} were not checked")
        return
    _unknown_modules(report, target, layout)
    layers = target.architecture.num_hidden_layers
    ignored = [m.name for m in report.info.modules if m.suffix in layout.expected
               and not adapter_layout.is_known_name(m.name, layout, layers) and (m.layer or 0) < layers]
    if ignored:
        report.error(
            "adapter-module-ignored",
            f"{report.info.path}: the base model has no module named {adapter_report.few(ignored)}, so vLLM loads "
            "the adapter but silently ignores those weights",
            f"re-export the adapter from PEFT against {target.base_model_id or 'the base model'}; its tensor names "
            "carry an unexpected prefix",
        )
    for index, server in target.servers:
        _not_served(report, index, server)


def _unknown_modules(report: Report, target: Target, layout: adapter_layout.Layout) -> None:
    info, to_save = report.info, set(report.info.config.modules_to_save)
    names = [m.name for m in info.modules] + [n.split(".")[-2] for n in info.classifier_tensors]
    unknown = sorted({n.rsplit(".", 1)[-1] for n in names} - layout.expected - to_save)
    if not unknown:
        return
    if not layout.exact:
        report.warning("adapter-module-unverified",
                       f"{info.path} adapts {', '.join(unknown)}, which fleetspec cannot confirm vLLM serves on "
                       f"a {adapter_report.arch_name(target)} model", "check that vLLM loads it on a test server first")
        return
    embedding = set(unknown) & set(adapter_layout.EMBEDDINGS)
    hint = (f"vLLM gives {adapter_report.arch_name(target)} no embed_tokens/lm_head LoRA; retrain without them "
            "in target_modules"
            if embedding else f"retrain with target_modules among {', '.join(sorted(layout.expected))}; "
            "the adapter was probably made for another model family")
    report.error(
        "adapter-unknown-module",
        f"{info.path} adapts {', '.join(unknown)}, which vLLM has no LoRA slot for on {adapter_report.arch_name(target)}; "
        f"vLLM refuses it: \"expected target modules in {{{', '.join(sorted(layout.expected))}}} "
        f"but received [...{unknown[0]}...]\"",
        hint,
    )


_PACKED = {"q_proj": "qkv_proj", "k_proj": "qkv_proj", "v_proj": "qkv_proj", "gate_proj": "gate_up_proj",
           "up_proj": "gate_up_proj"}


def _not_served(report: Report, index: int, server: models.Server) -> None:
    """--lora-target-modules: vLLM wraps only the listed modules (or their packed parent/siblings)."""
    allowed = set(server.lora.target_modules or []) if server.lora else set()
    if not allowed:
        return
    missing = sorted({m.suffix for m in report.info.modules} - served_modules(allowed))
    if missing:
        report.warning(
            "adapter-module-not-served",
            f"server {server.name} gives LoRA slots only to {', '.join(sorted(allowed))}, so the {', '.join(missing)} "
            f"weights of {report.info.path} are silently ignored there",
            f"add {', '.join(sorted({_PACKED.get(m, m) for m in missing}))} to servers[{index}].lora.target_modules",
        )


def served_modules(allowed: set[str]) -> set[str]:
    """A packed module (qkv_proj) is wrapped when it or any of its parts is listed; then all parts are served."""
    served = set(allowed)
    for child, parent in _PACKED.items():
        siblings = {c for c, p in _PACKED.items() if p == parent}
        if parent in allowed or siblings & allowed:
            served.add(child)
    return served


def _shapes(report: Report, target: Target, layout: adapter_layout.Layout) -> bool:
    """Tensor shapes against the base dimensions; True when every checked module fits."""
    arch, info = target.architecture, report.info
    _vocab(report, target)
    mismatches = []
    for module in info.modules:
        if module.layer is not None and module.layer >= arch.num_hidden_layers:
            mismatches.append((module, f"layer {module.layer}", f"{arch.num_hidden_layers} layers", True))
            continue
        mismatch = _module_mismatch(module, arch, layout.family)
        if mismatch:
            mismatches.append((module, *mismatch))
    if mismatches:
        _report_shapes(report, target, mismatches)
    return not mismatches


def _module_mismatch(module, arch, family_name) -> tuple[str, str, bool] | None:
    """(what the adapter has, what the base needs, adapter is larger) for a module that does not fit."""
    dims = adapter_layout.dims(arch, module.suffix, family_name)
    if dims is None or not module.a_shape or not module.b_shape or module.suffix in adapter_layout.EMBEDDINGS:
        return None  # embeddings are checked against the vocabulary in _vocab
    (in_features, out_features), rank = dims, module.rank
    want_a, want_b = (rank, in_features), (out_features, rank)
    if module.a_shape == want_a and module.b_shape == want_b:
        return None
    larger = module.a_shape[-1] > in_features or module.b_shape[0] > out_features
    have = f"lora_A {list(module.a_shape)} and lora_B {list(module.b_shape)}"
    need = f"{list(want_a)} and {list(want_b)} ({_dims_text(arch, module.suffix, in_features, out_features)})"
    return have, need, larger


def _report_shapes(report: Report, target: Target, mismatches: list) -> None:
    module, have, need, _ = mismatches[0]
    larger = any(m[3] for m in mismatches)
    trained = report.info.config.base_model_name_or_path
    consequence = ("vLLM fails to load it" if larger else
                   "vLLM would load it without complaint and serve garbage")
    report.error(
        "adapter-shape-mismatch",
        f"{report.info.path} was trained for a different base model: {module.name} has {have} where "
        f"{target.base_model_id or 'the base model'} needs {need}{adapter_report.more(mismatches)}; {consequence}",
        f"use an adapter trained on {target.base_model_id or 'the fleet base model'}"
        + (f"; this one names {trained} as its base"
           if trained and not adapter_report.same_as_fleet(trained, target) else ""),
    )


def _vocab(report: Report, target: Target) -> None:
    vocab = target.architecture.vocab_size
    for module in report.info.modules:
        size = (module.a_shape[-1] if module.embedding and module.a_shape else
                module.b_shape[0] if module.suffix == "lm_head" and module.b_shape else None)
        if size is None or size == vocab:
            continue
        words = (f"vLLM refuses it: \"The embedding LoRA size({size}) must be consistent with the base model's "
                 f"vocabulary size({vocab}).\"" if module.embedding else
                 "vLLM fails to load it" if size > vocab else "vLLM would load it and serve wrong logits")
        report.error(
            "adapter-vocab-mismatch",
            f"{report.info.path}: {module.name} covers a vocabulary of {size} tokens but the base model has "
            f"{vocab}; {words}",
            "train the adapter on the fleet's base model and tokenizer, or drop embed_tokens/lm_head from it",
        )


def _dims_text(arch: models.Architecture, suffix: str, in_features: int, out_features: int) -> str:
    hidden, inter = f"hidden_size {arch.hidden_size}", f"intermediate_size {arch.intermediate_size}"
    q = f"{arch.num_attention_heads} heads × head_dim {arch.attention_head_dim}"
    kv = f"{arch.kv_heads} kv heads × head_dim {arch.attention_head_dim}"
    names = {
        "q_proj": (hidden, q), "k_proj": (hidden, kv), "v_proj": (hidden, kv), "o_proj": (q, hidden),
        "gate_proj": (hidden, inter), "up_proj": (hidden, inter), "down_proj": (inter, hidden),
    }
    first, second = names.get(suffix, (str(in_features), str(out_features)))
    return f"in: {first}, out: {second}"
