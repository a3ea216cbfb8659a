"""Concrete changes that make a replica fit, each one checked by re-running the budget with it.

A fix is only ever suggested after `budget.compute` says it works, so a hint like "lower it to
22016" is a promise, not a guess.
"""

from __future__ import annotations

import math

from fleetspec.catalog import gpus as catalog_gpus
from fleetspec.catalog import models as catalog_models
from fleetspec.planner import budget, engine, memory
from fleetspec.spec import models as spec_models

MAX_SUGGESTED_UTILIZATION = 0.98  # above this a driver update or a monitoring agent breaks startup


def friendly_length(length: int) -> int:
    """Round a context length down to a multiple of 256 (vLLM's exact estimate is unfriendly)."""
    return length // 256 * 256 if length >= 1024 else length


def shorter_model_len(facts: catalog_models.ModelFacts, s: engine.EngineSettings, gpu: catalog_gpus.GpuFacts,
                      b: budget.GpuBudget) -> int | None:
    length = friendly_length(b.largest_model_len)
    if length < 1 or length >= s.max_model_len:
        return None
    return length if fits(facts, s.replace(max_model_len=length), gpu) else None


def utilization_ceiling(gpu: catalog_gpus.GpuFacts, b: budget.GpuBudget, shared_with: float) -> float:
    """Highest utilization that still leaves room for the CUDA context (and, before vLLM 0.21,
    the CUDA graphs) outside the budget, next to `shared_with` of other replicas on the GPU."""
    outside = b.cuda_context + b.resident_outside
    ceiling = 1.0 - shared_with - outside / gpu.total_bytes
    return min(MAX_SUGGESTED_UTILIZATION, math.floor(ceiling * 100) / 100)


def higher_utilization(facts: catalog_models.ModelFacts, s: engine.EngineSettings, gpu: catalog_gpus.GpuFacts,
                       b: budget.GpuBudget, shared_with: float = 0.0) -> float | None:
    missing = b.request_bytes - b.kv_cache
    wanted = math.ceil((b.budget + missing) / gpu.total_bytes * 100) / 100
    for candidate in (wanted, round(wanted + 0.01, 2)):  # ceil() of the budget can cost one step
        if s.gpu_memory_utilization < candidate <= utilization_ceiling(gpu, b, shared_with) and fits(
                facts, s.replace(gpu_memory_utilization=candidate), gpu):
            return candidate
    return None


def fewer_loras(facts: catalog_models.ModelFacts, s: engine.EngineSettings, gpu: catalog_gpus.GpuFacts,
                b: budget.GpuBudget) -> int | None:
    """Largest max_loras below the current one that fits, if any does."""
    if s.lora is None or s.lora.max_loras <= 1 or b.lora == 0:
        return None
    per_slot = b.lora / s.lora.max_loras
    missing = b.request_bytes - b.kv_cache
    count = min(s.lora.max_loras - 1, math.floor((b.lora - missing) / per_slot))
    while count >= 1:
        trial = s.replace(lora=s.lora.model_copy(update={"max_loras": count}))
        if fits(facts, trial, gpu):
            return count
        count -= 1
    return None


def smaller_rank(facts: catalog_models.ModelFacts, s: engine.EngineSettings, gpu: catalog_gpus.GpuFacts,
                 largest_rank: int | None) -> int | None:
    """The smallest max_lora_rank that still holds every hosted adapter, if that alone fits."""
    if s.lora is None or largest_rank is None:
        return None
    rank = smallest_rank(largest_rank)
    if rank >= s.lora.max_lora_rank:
        return None
    return rank if fits(facts, s.replace(lora=s.lora.model_copy(update={"max_lora_rank": rank})), gpu) else None


def more_tensor_parallel(facts: catalog_models.ModelFacts, s: engine.EngineSettings, gpu: catalog_gpus.GpuFacts,
                         gpus_available: int, replicas: int = 1) -> int | None:
    """Smallest valid tensor_parallel_size above the current one that fits, with every replica
    still finding its GPUs in the inventory."""
    for tp in valid_tensor_parallel_sizes(facts, s.quantization, s.group_size):
        if tp <= s.tensor_parallel_size or tp * s.pipeline_parallel_size * max(1, replicas) > gpus_available:
            continue
        if fits(facts, s.replace(tensor_parallel_size=tp), gpu):
            return tp
    return None


def narrower_targets(facts: catalog_models.ModelFacts, s: engine.EngineSettings,
                     adapter_modules: set[str] | None) -> tuple[list[str], int] | None:
    """When every hosted adapter's target_modules are known and narrower than what vLLM wraps by
    default: (the modules to list in lora.target_modules, bytes that frees per GPU)."""
    if s.lora is None or s.lora.target_modules is not None or not adapter_modules:
        return None
    wanted = sorted(adapter_modules)
    if set(memory.lora_targets(facts, wanted)) == set(memory.lora_targets(facts, None)):
        return None
    current = budget.lora_buffer_bytes(facts, s)
    narrowed = budget.lora_buffer_bytes(facts, s.replace(lora=s.lora.model_copy(update={"target_modules": wanted})))
    return (wanted, current - narrowed) if narrowed < current else None


def eager_fits(facts: catalog_models.ModelFacts, s: engine.EngineSettings, gpu: catalog_gpus.GpuFacts,
               b: budget.GpuBudget) -> bool:
    """Whether dropping CUDA graphs (--enforce-eager) alone makes it fit (vLLM ≥ 0.21 budgets graphs)."""
    return not s.enforce_eager and b.cudagraph_in_budget and fits(facts, s.replace(enforce_eager=True), gpu)


def valid_tensor_parallel_sizes(facts: catalog_models.ModelFacts, method: str = "none",
                                group_size: int | None = None, limit: int = 64) -> list[int]:
    """tensor_parallel_size values vLLM accepts for this model (vllm-facts §6)."""
    return [tp for tp in range(1, limit + 1) if not tensor_parallel_problems(facts, tp, method, group_size)]


def tensor_parallel_problems(facts: catalog_models.ModelFacts, tp: int, method: str = "none",
                             group_size: int | None = None) -> list[str]:
    """Why vLLM would refuse this tensor_parallel_size, as short clauses ([] when it is fine)."""
    a = facts.architecture
    problems = []
    if a.num_attention_heads % tp:
        problems.append(f"{a.num_attention_heads} attention heads are not divisible by {tp}")
    kv = a.kv_heads
    if facts.attention != "mla" and (tp % kv if tp >= kv else kv % tp):
        problems.append(f"{kv} KV heads cannot be split or replicated evenly over {tp} GPUs")
    inter = facts.expert_intermediate_size if facts.is_moe else a.intermediate_size
    if inter % tp:
        problems.append(f"the MLP width {inter} is not divisible by {tp}")
    elif method in ("awq", "awq_marlin", "auto_awq", "gptq", "gptq_marlin", "auto_gptq") and (inter // tp) % (group_size or 128):
        problems.append(f"each GPU's MLP slice ({inter // tp}) is not a whole number of {group_size or 128}-wide quantization groups")
    if memory.padded_vocab(a.vocab_size) % tp:
        problems.append(f"the padded vocabulary {memory.padded_vocab(a.vocab_size)} is not divisible by {tp}")
    return problems


def smallest_rank(rank: int) -> int:
    for allowed in spec_models.ALLOWED_MAX_LORA_RANKS:
        if allowed >= rank:
            return allowed
    return spec_models.ALLOWED_MAX_LORA_RANKS[-1]


def fits(facts: catalog_models.ModelFacts, s: engine.EngineSettings, gpu: catalog_gpus.GpuFacts) -> bool:
    return budget.compute(facts, s, gpu.total_bytes).fits
