"""Calibrated constants of the memory model (`data/overheads.yaml`), as typed values.

The formulas that use them live in `fleetspec.planner.memory`; this module only reads the data so
every measured number stays in one file next to where it was measured.
"""

from __future__ import annotations

import dataclasses
import functools

from fleetspec.catalog import data_files

GIB = 1 << 30


@dataclasses.dataclass(frozen=True)
class BatchDefault:
    min_memory_gib: float
    max_num_batched_tokens: int
    max_num_seqs: int
    excluded_types: tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class V0Defaults:
    max_num_seqs: int
    min_batched_tokens: int
    chunked_prefill_above_len: int
    chunked_batched_tokens: int


@dataclasses.dataclass(frozen=True)
class CpuOverheads:
    worker_base_bytes: int
    side_processes_bytes: int
    block_size: int
    batch_default: BatchDefault


@dataclasses.dataclass(frozen=True)
class Overheads:
    sampler_factor: float
    reference_batched_tokens: int
    activation_base_bytes: dict[str, int]  # "dense" / "moe"
    activation_pp_factor: float
    activation_old_before: tuple[int, ...]
    activation_old_factor: float
    non_torch_bytes: dict[str, int]  # single_gpu / tensor_parallel / pipeline_only
    cuda_context_bytes: dict[str, int]
    cudagraph_base_bytes: int
    cudagraph_per_layer_bytes: int
    cudagraph_subtracted_since: tuple[int, ...]
    cudagraph_lora_factor: float
    v1_engine_since: tuple[int, ...]
    v0_defaults: V0Defaults
    block_size: int
    batch_defaults: tuple[BatchDefault, ...]
    cpu: CpuOverheads


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(p) for p in str(text).split("."))


def _gib(value: float) -> int:
    return round(value * GIB)


@functools.cache
def load() -> Overheads:
    data = data_files.load("overheads")
    act, graphs, cpu = data["activation"], data["cudagraph"], data["cpu"]
    return Overheads(
        sampler_factor=act["sampler_factor"],
        reference_batched_tokens=act["reference_batched_tokens"],
        activation_base_bytes={k: _gib(v) for k, v in act["base_gib"].items()},
        activation_pp_factor=act["pp_factor"],
        activation_old_before=_version(act["older_versions"]["before"]),
        activation_old_factor=act["older_versions"]["factor"],
        non_torch_bytes={k: _gib(v) for k, v in data["non_torch_gib"].items()},
        cuda_context_bytes={k: _gib(v) for k, v in data["cuda_context_gib"].items()},
        cudagraph_base_bytes=_gib(graphs["base_gib"]),
        cudagraph_per_layer_bytes=_gib(graphs["per_layer_gib"]),
        cudagraph_subtracted_since=_version(graphs["subtracted_since"]),
        cudagraph_lora_factor=graphs["lora_factor"],
        v1_engine_since=_version(data["engine"]["v1_default_since"]),
        v0_defaults=V0Defaults(**data["engine"]["v0_defaults"]),
        block_size=data["block_size"],
        batch_defaults=tuple(
            BatchDefault(row["min_memory_gib"], row["max_num_batched_tokens"], row["max_num_seqs"],
                         tuple(row.get("except", ())))
            for row in data["batch_defaults"]
        ),
        cpu=CpuOverheads(
            worker_base_bytes=_gib(cpu["worker_base_gib"]),
            side_processes_bytes=_gib(cpu["side_processes_gib"]),
            block_size=cpu["block_size"],
            batch_default=BatchDefault(0, cpu["batch_defaults"]["max_num_batched_tokens"],
                                       cpu["batch_defaults"]["max_num_seqs"], ()),
        ),
    )
