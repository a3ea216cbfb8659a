"""Score the planner against vLLM startup logs: plan the setup a log ran, compare with what it logged.

Pure: a case is the log's text plus the facts a log does not print (the GPU type, the
utilization when it was not the default); bench/score_startup_logs.py reads the files. The method
is llm-d-planner's: per record, |planned − logged| / logged for weights and KV tokens; the summary
gives median and p90; a log that failed is a hit only when the plan does not fit, and a plan that
does not fit a log that started is a false alarm.
"""

from __future__ import annotations

import dataclasses
import statistics
from collections.abc import Iterable, Mapping

from fleetspec.catalog import repo_names
from fleetspec.planner import report, startup_log
from fleetspec.spec import models as spec_models

GIB = 1 << 30
_DTYPES = {
    "bfloat16": "bfloat16",
    "float16": "float16",
    "half": "float16",
    "float32": "float32",
    "float": "float32",
}


@dataclasses.dataclass(frozen=True)
class Scored:
    id: str
    errors: dict[str, float]  # (planned − logged) / logged per scored quantity
    logged_failure: str | None
    plan_fits: bool
    unmodelled: str | None = None  # why the planner could not plan it (counts as a miss)

    @property
    def failure_predicted(self) -> bool | None:
        """Whether a logged failure was foreseen; a record the planner could not plan foresaw nothing
        (its "does not fit" is the unknown model or setting, not a prediction)."""
        if self.logged_failure is None:
            return None
        return not self.unmodelled and not self.plan_fits

    @property
    def false_alarm(self) -> bool:
        return self.logged_failure is None and not self.unmodelled and not self.plan_fits


def fleet_for(case: Mapping, facts: startup_log.StartupFacts) -> spec_models.FleetSpec:
    """The fleet of one replica that reproduces the logged run; the case's own keys win over the log."""
    cfg = facts.config
    tp = int(case.get("tensor_parallel_size", cfg.get("tensor_parallel_size", 1)))
    pp = int(case.get("pipeline_parallel_size", cfg.get("pipeline_parallel_size", 1)))
    quant = str(case.get("quantization", cfg.get("quantization") or "none"))
    base = {
        "id": case.get("model") or cfg["model"],
        "quantization": "none" if quant == "None" else quant,
        "dtype": _DTYPES.get(str(case.get("dtype", cfg.get("dtype", "auto"))), "auto"),
        "kv_cache_dtype": str(case.get("kv_cache_dtype", cfg.get("kv_cache_dtype", "auto"))),
    }
    if case.get("max_model_len") or cfg.get("max_model_len"):
        base["max_model_len"] = int(case.get("max_model_len") or cfg["max_model_len"])
    base.update(_bnb_keys(case, facts))
    server = {
        "name": "logged",
        "tensor_parallel_size": tp,
        "pipeline_parallel_size": pp,
        "enforce_eager": bool(case.get("enforce_eager", cfg.get("enforce_eager", False))),
    }
    for key in ("gpu_memory_utilization", "max_num_seqs", "max_num_batched_tokens"):
        if case.get(key) is not None:
            server[key] = case[key]
    if case.get("enable_lora"):
        # LoRA slots the launcher asked for (vLLM's defaults otherwise: LoRAConfig max_loras 1, rank 16).
        server["lora"] = {key: int(case[key]) for key in ("max_loras", "max_lora_rank") if case.get(key) is not None}
    env = {str(k): str(v) for k, v in (case.get("env") or {}).items()}  # the launcher's, e.g. VLLM_USE_V1=0
    if facts.flashinfer_sampler_env is not None:
        env["VLLM_USE_FLASHINFER_SAMPLER"] = facts.flashinfer_sampler_env
    if env:
        server["env"] = env
    group = {"type": case["gpu"], "count": tp * pp}
    if case.get("interconnect") or facts.interconnect:
        group["interconnect"] = case.get("interconnect") or facts.interconnect
    version = case.get("vllm_version") or facts.vllm_version or "0.33.0"
    runtime = {"vllm_version": version}
    flashinfer = case.get("flashinfer", facts.flashinfer)
    if flashinfer is not None:
        runtime["flashinfer"] = bool(flashinfer)
    return spec_models.FleetSpec.model_validate(
        {
            "name": "logged",
            "base_model": base,
            "gpus": [group],
            "servers": [server],
            "runtime": runtime,
        }
    )


def _bnb_keys(case: Mapping, facts: startup_log.StartupFacts) -> dict:
    """base_model keys for a bitsandbytes checkpoint: the case's, else the config the log prints."""
    logged = facts.bnb_config or {}
    out = {}
    skip = case.get("quantization_skip_modules", logged.get("llm_int8_skip_modules"))
    if skip:
        out["quantization_skip_modules"] = [str(m) for m in skip]
    # The checkpoint's double quantization matters only when it is pre-quantized (the logged name is
    # a bitsandbytes repack); a 16-bit checkpoint is quantized in flight with compress_statistics=True
    # whatever config the launcher passed (BitsAndBytesModelLoader._unquantized_generator).
    reading = repo_names.read(str(facts.config.get("model", "")))
    prequantized = reading is not None and reading.method == "bitsandbytes"
    double = case.get("bnb_4bit_use_double_quant",
                      logged.get("bnb_4bit_use_double_quant") if prequantized else None)
    if isinstance(double, bool):
        out["bnb_4bit_use_double_quant"] = double
    return out


# A record whose checkpoint is quantized in a way neither its log nor its thread names: planning it
# at the model's dtype would score the planner on a guess, so it counts as unmodelled.
UNSTATED = "unstated"


def score(case: Mapping, text: str) -> Scored:
    facts = startup_log.parse(text)
    if case.get("quantization") == UNSTATED:
        return Scored(str(case["id"]), {}, facts.failure, True,
                      unmodelled="the checkpoint is quantized, and neither the log nor the thread says how")
    try:
        plan = report.plan_fleet(fleet_for(case, facts))
    except (ValueError, KeyError) as exc:  # a setup the spec cannot express
        return Scored(str(case["id"]), {}, facts.failure, True, unmodelled=str(exc).splitlines()[0])
    server = plan.servers[0] if plan.servers else None
    if server is None or not server.replicas or server.replicas[0].budget is None:
        reason = next((f.message for f in plan.findings if f.severity.value == "error"), "no budget planned")
        return Scored(str(case["id"]), {}, facts.failure, plan.fits, unmodelled=reason)
    b = server.replicas[0].budget
    planned = {
        # What "Model loading took" measures: the weights, plus the LoRA buffers where vLLM builds the
        # LoRA manager inside that profiler (budget.GpuBudget.weights_line).
        "weights_gib": b.weights_line / GIB,
        "kv_cache_gib": max(b.kv_cache, 0) / GIB,
        "kv_tokens": b.kv_tokens,
        "cudagraph_gib": b.cudagraph / GIB,
    }
    errors = {k: (planned[k] - v) / v for k, v in facts.measured().items() if v}
    return Scored(str(case["id"]), errors, facts.failure, plan.fits)


def p90(values: list[float]) -> float:
    """90th percentile, nearest-rank (the value 90 % of records are at or below)."""
    ordered = sorted(values)
    return ordered[max(0, -(-9 * len(ordered) // 10) - 1)]


def summary(results: Iterable[Scored]) -> dict:
    results = list(results)
    out: dict = {"records": len(results), "unmodelled": sum(1 for r in results if r.unmodelled)}
    for key in ("weights_gib", "kv_tokens", "kv_cache_gib"):
        values = [abs(r.errors[key]) for r in results if key in r.errors]
        if values:
            out[key] = {"n": len(values), "median": statistics.median(values), "p90": p90(values)}
    failed = [r for r in results if r.logged_failure is not None]
    out["failures"] = {
        "logged": len(failed),
        "predicted": sum(1 for r in failed if r.failure_predicted),
        "false_alarms": sum(1 for r in results if r.false_alarm),
    }
    return out
