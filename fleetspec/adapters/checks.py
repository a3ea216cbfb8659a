"""Check inspected adapters against the fleet that will serve them. Pure.

Catches, before deploy, what vLLM 0.33 refuses at load time (quoting vLLM's own sentence so the
operator recognises it later) and what vLLM accepts silently but serves wrongly: tensors smaller
than the base model's (a wrong-base adapter copied into a corner of the slot), modules under names
the base model does not have, ranks that disagree with adapter_config.json.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from fleetspec.adapters import engine, fit, sizing
from fleetspec.adapters import inspect as adapter_inspect
from fleetspec.adapters import report as adapter_report
from fleetspec.adapters.report import Locate, Report, Target
from fleetspec.errors import Diagnostic
from fleetspec.spec import hosting, models


def check_adapter(
    info: adapter_inspect.AdapterInfo, target: Target | None = None, where: tuple = (), locate: Locate | None = None,
) -> list[Diagnostic]:
    """Every problem of one adapter for this target; without a target, the adapter alone."""
    target = target or Target()
    report = Report(info, where, locate)
    if not _readable(report) or not _is_lora(report):
        return report.items
    _weights_readable(report)
    _features(report)
    _rank_consistency(report)
    _ranks_fit(report, target)
    if info.tensors_known and target.architecture is not None:
        shapes_fit = fit.check(report, target)
    else:
        fit.unsupported_tensors(report)
        shapes_fit = None
    _base_model(report, target, shapes_fit)
    return report.items


def check_fleet(
    spec: models.FleetSpec, infos: Mapping[tuple[str, str], adapter_inspect.AdapterInfo],
    architecture: models.Architecture | None, embedding_lora: bool, locate: Locate | None = None,
) -> list[Diagnostic]:
    """Check every inspected specialist version (`infos` keyed by (name, version)), then rank padding."""
    found: list[Diagnostic] = []
    hosting_index = hosting.index(spec)
    for index, specialist in enumerate(spec.specialists):
        hosts = tuple((i, spec.servers[i]) for i in hosting_index.host_positions(specialist))
        for where, version in version_fields(index, specialist):
            info = infos.get((specialist.name, version))
            if info is None:
                continue
            entry = specialist.version_entry(version)
            target = Target(spec.base_model.id, architecture, embedding_lora, hosts, specialist.base_model, entry.rank)
            found += check_adapter(info, target, where, locate)
    return found + _padding(spec, infos, locate)


def version_fields(index: int, specialist: models.Specialist) -> list[tuple[tuple, str]]:
    """(field path of the adapter path, version) for the active version and every other one."""
    fields = [(("specialists", index, "path"), specialist.version)]
    fields += [(("specialists", index, "versions", j, "path"), v.version) for j, v in enumerate(specialist.versions)]
    return fields


def _padding(spec, infos, locate) -> list[Diagnostic]:
    found = []
    for index, server in enumerate(spec.servers):
        if server.lora is None:
            continue
        ranks = [
            rank
            for specialist in spec.hosted_by(server)
            for version in specialist.all_versions
            if (info := infos.get((specialist.name, version))) is not None
            for rank in info.ranks
        ]
        where = ("servers", index, "lora", "max_lora_rank")
        finding = sizing.padding_finding(
            server.lora.max_lora_rank, ranks, where=where, server_name=server.name, locate=locate,
        )
        if finding:
            found.append(finding)
    return found


# ---------------------------------------------------------------------------------------------
# Files and PEFT type


def _readable(report: Report) -> bool:
    info = report.info
    problem = info.config_problem
    if problem is not None:
        if problem.kind == "missing":
            report.error(
                "adapter-config-missing", f"{info.path} has no adapter_config.json, so it is not a PEFT adapter directory",
                "point the path at the directory holding adapter_config.json and adapter_model.safetensors",
            )
        else:
            report.error("adapter-config-invalid", f"{info.path}: {problem.message}",
                         "re-save the adapter with PEFT's save_pretrained")
        return False
    for sentence in info.config.problems:
        report.error("adapter-config-invalid", f"{info.path}/adapter_config.json: {sentence}",
                     "fix the value, or re-save the adapter with PEFT's save_pretrained")
    return not info.config.problems


def _weights_readable(report: Report) -> None:
    info = report.info
    if info.weights_format is None:
        report.error(
            "adapter-weights-missing",
            f"{info.path} has no adapter_model.safetensors (or .bin/.pt); vLLM refuses it: "
            f"\"{info.path} doesn't contain tensors\"",
            "copy the weights file next to adapter_config.json",
        )
    elif info.weights_problem is not None:
        report.error(
            "adapter-weights-invalid", f"{info.path}/{info.weights_problem.message}; vLLM cannot load it",
            "re-download or re-save the adapter: the weights file is damaged or not safetensors",
        )
    elif info.weights_format != "safetensors":
        report.warning(
            "adapter-weights-unchecked",
            f"{info.path} stores its weights as {info.weights_file}, a pickle fleetspec does not open, "
            "so ranks come from adapter_config.json and tensor shapes are not checked",
            "convert it to safetensors (PEFT save_pretrained with safe_serialization=True) to have it checked",
        )


def _is_lora(report: Report) -> bool:
    config = report.info.config
    if config.peft_type is None or config.peft_type.upper() == "LORA":
        if config.missing:
            reason = engine.helper_error(config.raw)
            report.error("adapter-config-incomplete", f"{report.info.path}/adapter_config.json lacks "
                         f"{', '.join(config.missing)}; vLLM refuses it: \"{reason}\"",
                         "re-save the adapter with PEFT's save_pretrained")
            return False
        return True
    reason = engine.helper_error(config.raw) or next(
        (f"{name} is unsupported LoRA weight" for name in report.info.unsupported_tensors), None)
    refusal = f"; vLLM refuses it: \"{reason}\"" if reason else "; vLLM would misread its weights"
    report.error(
        "adapter-not-lora", f"{report.info.path} is a {config.peft_type} adapter and vLLM serves only LoRA{refusal}",
        "train or convert it as a LoRA adapter (PEFT LoraConfig)",
    )
    return False


# ---------------------------------------------------------------------------------------------
# Options and ranks

_FEATURE_HINTS = {  # code → (what the adapter uses, how to fix it)
    "adapter-dora": ("DoRA (use_dora: true)",
                     "retrain with use_dora=false, or merge it into the base model and serve that"),
    "adapter-lora-bias": ("LoRA bias (lora_bias: true)", "retrain with lora_bias=false"),
    "adapter-modules-to-save": ("modules_to_save",
                                "retrain without modules_to_save; put those modules in target_modules instead"),
    "adapter-init-weights": ("a PiSSA/OLoRA-style init_lora_weights",
                             "convert it with PEFT's path_initial_model_for_weight_conversion"),
    "adapter-alora": ("Activated LoRA (alora_invocation_tokens)", "retrain as a plain LoRA adapter"),
    "adapter-layer-replication": ("layer_replication", "retrain without layer_replication"),
    "adapter-bdlora": ("block-diagonal LoRA (use_bdlora)", "retrain as a plain LoRA adapter"),
    "adapter-qalora": ("QALoRA (use_qalora: true)", "retrain with use_qalora=false"),
}


def _features(report: Report) -> None:
    config = report.info.config
    for code, sentence in engine.unsupported_features(config.raw):
        feature, hint = _FEATURE_HINTS[code]
        report.error(code, f"{report.info.path} uses {feature}; vLLM refuses it: \"{sentence}\"", hint)
    if config.bias != "none":
        report.error(
            "adapter-bias", f"{report.info.path} trains biases (bias: {config.bias}); "
            f"vLLM refuses it: \"{engine.BIAS_ERROR}\"", "retrain with bias=\"none\"",
        )


def configured_rank(config: adapter_inspect.AdapterConfig, module_name: str) -> int | None:
    """The rank PEFT gives `module_name`: the first matching rank_pattern key, else r (vLLM's rule)."""
    for key, rank in config.rank_pattern.items():
        try:
            if re.match(rf"(.*\.)?({key})$", module_name):
                return rank
        except re.error:
            continue
    return config.r


def _rank_consistency(report: Report) -> None:
    info = report.info
    incomplete = [m.name for m in info.modules if not m.a_shape or not m.b_shape]
    if incomplete:
        report.error("adapter-incomplete-module",
                     f"{info.path}: {adapter_report.few(incomplete)} has only one of its lora_A/lora_B tensors",
                     "re-export the adapter; a LoRA module needs both tensors")
    wrong = [
        (m, configured_rank(info.config, m.name)) for m in info.modules
        if m.a_shape and m.b_shape and (m.rank != m.b_shape[-1] or m.rank != configured_rank(info.config, m.name))
    ]
    if wrong:
        module, expected = wrong[0]
        report.error(
            "adapter-rank-mismatch",
            f"{info.path}: {module.name} has tensors of shape {list(module.a_shape)} and {list(module.b_shape)} "
            f"but adapter_config.json gives it rank {expected}{adapter_report.more(wrong)}; vLLM would scale it by "
            "lora_alpha/r with the wrong r and serve wrong outputs",
            "make r and rank_pattern in adapter_config.json match the weights, or re-export the adapter",
        )


def _ranks_fit(report: Report, target: Target) -> None:
    info = report.info
    rank = max([*info.ranks, *info.config.configured_ranks], default=None)
    if rank is not None and target.declared_rank is not None and target.declared_rank != rank:
        report.warning(
            "adapter-declared-rank-differs",
            f"the fleet file says rank {target.declared_rank} but {info.path} has rank {rank}",
            f"write rank: {rank}, or leave rank out and fleetspec reads it from the adapter",
        )
    for index, server in target.servers:
        if rank is None or server.lora is None or rank <= server.lora.max_lora_rank:
            continue
        limit = server.lora.max_lora_rank
        best = sizing.recommended_max_lora_rank([rank])
        report.error(
            "rank-above-max-lora-rank",
            f"{info.path} has rank {rank}, above max_lora_rank {limit} of server {server.name}; vLLM refuses to load "
            f"it: \"{engine.rank_error(rank, limit)}\"",
            f"set servers[{index}].lora.max_lora_rank to {best}" if best else
            f"vLLM's largest max_lora_rank is {models.ALLOWED_MAX_LORA_RANKS[-1]}; retrain the adapter at a lower rank",
        )


# ---------------------------------------------------------------------------------------------
# Base model name

def _base_model(report: Report, target: Target, shapes_fit: bool | None) -> None:
    trained = report.info.config.base_model_name_or_path
    if not trained or not target.base_model_id or shapes_fit is False:
        return  # a shape mismatch already names the adapter's base
    same = adapter_report.same_model
    if same(trained, target.base_model_id) or (target.trained_on and same(trained, target.trained_on)):
        return
    fit_text = "its tensor shapes fit, so vLLM will load it" if shapes_fit else "its tensor shapes could not be checked"
    report.warning(
        "adapter-base-model-differs",
        f"{report.info.path} was trained on {trained}, not on the fleet's base model {target.base_model_id}; "
        f"{fit_text}, but its outputs may be poor",
        f"if this is intended, record it with base_model: {trained} on the specialist",
    )
