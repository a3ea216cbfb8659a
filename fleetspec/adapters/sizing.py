"""Numbers the planner takes from inspected adapters. Pure.

vLLM preallocates every GPU slot at `max_lora_rank` and runs its LoRA kernels over the padded rank,
so the right max_lora_rank is the smallest allowed value that holds the largest real adapter.
Host RAM is different: up to `max_cpu_loras` adapters sit in the CPU cache at their real size,
cast to lora_dtype (vllm/lora/lora_model.py from_lora_tensors, worker_manager.py).
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Iterable

from fleetspec.adapters import inspect as adapter_inspect
from fleetspec.errors import Diagnostic, Location, Severity
from fleetspec.spec import models, paths

GIB = 1024**3


def recommended_max_lora_rank(ranks: Iterable[int]) -> int | None:
    """Smallest value `--max-lora-rank` accepts that holds every rank; None when none does (> 512)."""
    largest = max(ranks, default=0)
    return next((allowed for allowed in models.ALLOWED_MAX_LORA_RANKS if allowed >= largest), None)


def adapter_host_bytes(info: adapter_inspect.AdapterInfo, lora_dtype_bytes: int) -> int:
    """Host RAM one adapter takes in vLLM's CPU cache: its LoRA elements at lora_dtype.

    Pickled weights cannot be measured without loading them, so their file size stands in.
    """
    if info.tensors_known:
        return sum(module.numel for module in info.modules) * lora_dtype_bytes
    return info.weights_bytes


def cpu_cache_bytes(adapter_bytes: Iterable[int], max_cpu_loras: int) -> int:
    """Worst case host RAM of a server's CPU cache: its `max_cpu_loras` largest adapters resident."""
    return sum(heapq.nlargest(max_cpu_loras, adapter_bytes))


def padding_finding(
    max_lora_rank: int, ranks: Iterable[int], *, where: tuple = (), server_name: str = "",
    freed_bytes_per_gpu: int | None = None, locate: Callable[[tuple], Location | None] | None = None,
) -> Diagnostic | None:
    """A warning when max_lora_rank is above what the largest real adapter needs.

    `where` is the field path of the server's max_lora_rank; `freed_bytes_per_gpu` (from the
    planner's LoRA buffer formula) makes the hint concrete.
    """
    ranks = list(ranks)
    best = recommended_max_lora_rank(ranks)
    if not ranks or best is None or max_lora_rank <= best:
        return None
    server = f"server {server_name}" if server_name else "this server"
    saving = f" and frees {freed_bytes_per_gpu / GIB:.2f} GiB per GPU" if freed_bytes_per_gpu else ""
    return Diagnostic(
        Severity.WARNING, "max-lora-rank-above-adapters", paths.format_path(where),
        f"{server} reserves max_lora_rank {max_lora_rank} but its largest adapter has rank {max(ranks)}; "
        f"vLLM allocates every adapter slot and runs its LoRA kernels at rank {max_lora_rank}",
        f"lower max_lora_rank to {best}: it still holds every adapter{saving}",
        locate(where) if locate else None,
    )
