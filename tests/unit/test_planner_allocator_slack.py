"""Caching-allocator slack in "Model loading took" (issue #18, item 5): values worked from PyTorch's
c10/cuda/CUDACachingAllocator.cpp (get_allocation_size, should_split, allocated_bytes += block->size)
and the tensors vLLM's LlamaModel / Qwen2Model create (0.7.3, 0.10.1)."""

from __future__ import annotations

import pytest

from fleetspec.catalog import models as catalog_models
from fleetspec.planner import allocator, memory
from fleetspec.spec import models as spec_models

MiB = 1 << 20


def facts(model_id: str):
    return catalog_models.resolve(spec_models.BaseModelSpec(id=model_id))


def test_segment_sizes_follow_get_allocation_size():
    assert allocator.allocation_size(MiB) == 2 * MiB  # small pool
    assert allocator.allocation_size(8 * MiB) == 20 * MiB  # 1-10 MiB share a 20 MiB segment
    assert allocator.allocation_size(31 * MiB + MiB // 2) == 32 * MiB  # rounded up to 2 MiB


def test_block_is_split_only_when_more_than_1_mib_remains():
    # 31.5 MiB in a 32 MiB segment: 0.5 MiB stays with the block; 24.5 MiB in 26 MiB: split.
    assert allocator.slack_bytes([("alloc", "qkv", 63 * MiB // 2)]) == MiB // 2
    assert allocator.slack_bytes([("alloc", "o", 49 * MiB // 2)]) == 0
    assert allocator.slack_bytes([("alloc", "exact", 48 * MiB)]) == 0
    # 1 MiB remaining is not "more than 1 MiB": kept (Qwen2.5-32B TP2 qkv_proj, 35 MiB in 36).
    assert allocator.slack_bytes([("alloc", "qkv", 35 * MiB)]) == MiB


def test_freed_blocks_are_reused_best_fit():
    # A freed 64 MiB block takes a 35 MiB tensor and splits (29 MiB remain): no slack.
    events = [("alloc", "tmp", 64 * MiB), ("free", "tmp", 0), ("alloc", "qkv", 35 * MiB)]
    assert allocator.slack_bytes(events) == 0


@pytest.mark.parametrize("model_id, tp, slack_mib", [
    # Qwen2-7B shapes: qkv 31.5, gate_up 259, down 129.5 MiB each keep up to 1 MiB more (2 MiB a
    # layer × 28) plus 0.5 MiB on embed_tokens and lm_head (1039.5 MiB): 57 MiB; logged 0.10.1
    # 14.2488 GiB against 14.1930 GiB of tensors (dennislee22 records).
    ("Qwen/Qwen2.5-7B-Instruct", 1, 57.0),
    ("Qwen/Qwen2.5-7B-Instruct", 2, 21.5),  # 0.25 + 0.5 MiB a layer, 0.25 on each vocab table
    # qkv 35, o_proj 25, down 135 MiB per rank: 3 MiB × 64 layers (vllm#15815 logged 192.1 MiB more)
    ("Qwen/Qwen2.5-32B-Instruct", 2, 192.0),
    # 3.5 MiB × 48 = 168 MiB, less 4 MiB: the rotary embedding's freed float32 temporaries
    # (131072 positions: 32 + 32 + 32 + 64 MiB) take layer 1's qkv_proj and four o_proj without
    # slack (vllm#13061 logged 164.1 MiB more).
    ("deepseek-ai/DeepSeek-R1-Distill-Qwen-14B", 2, 164.0),
    ("meta-llama/Meta-Llama-3-8B-Instruct", 1, 0.0),  # every tensor a multiple of 2 MiB
])
def test_unquantized_slack(model_id, tp, slack_mib):
    assert memory.allocator_slack_bytes(facts(model_id), tp, 1, 2) == slack_mib * MiB


def test_slack_is_part_of_weight_bytes_and_only_unquantized():
    f = facts("Qwen/Qwen2.5-7B-Instruct")
    assert memory.allocator_slack_bytes(f, 1, 1, 2, "awq") == 0
    plain = memory.weight_bytes(f, 1, 1, 2)
    assert plain - memory.allocator_slack_bytes(f, 1, 1, 2) == round(
        memory.params_per_gpu(f, 1, 1).total * 2) + memory.rope_cache_bytes(f, 2)


def test_pipeline_stage_takes_its_own_tensors():
    f = facts("Qwen/Qwen2.5-7B-Instruct")
    first, last = memory.pipeline_stages(28, 2)
    # 14 layers × 2 MiB, plus embed_tokens (first) or lm_head (last) 0.5 MiB each
    assert memory.allocator_slack_bytes(f, 1, 2, 2, stage=first) == 28.5 * MiB
    assert memory.allocator_slack_bytes(f, 1, 2, 2, stage=last) == 28.5 * MiB
