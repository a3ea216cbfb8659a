"""PYTORCH_CUDA_ALLOC_CONF in the caching-allocator replay (issue #18): values worked from PyTorch's
c10/cuda/CUDAAllocatorConfig.cpp (parseRoundUpPower2Divisions, roundup_power2_divisions) and
CUDACachingAllocator.cpp (round_size, roundup_power2_next_division, should_split with expandable
segments), and Unsloth's setting (unsloth/__init__.py, 2025.2.4-2025.5.9)."""

from __future__ import annotations

from fleetspec.catalog import gpus
from fleetspec.catalog import models as catalog_models
from fleetspec.planner import allocator, engine, memory
from fleetspec.spec import models as spec_models

MiB = 1 << 20
UNSLOTH = "expandable_segments:True,roundup_power2_divisions:[32:256,64:128,256:64,>:32]"


def facts(model_id: str):
    return catalog_models.resolve(spec_models.BaseModelSpec(id=model_id))


def test_unsloth_setting_parses_as_pytorch_does():
    conf = allocator.AllocatorConfig.parse(UNSLOTH)
    assert conf.expandable_segments
    # 32:256 fills intervals 0-5 (below 64 MiB); 64:128 is interval 6; 128-256 MiB is named by no
    # pair (0); ">:32" fills from the last interval named (8, 256:64's) onwards, overwriting it.
    assert conf.roundup_power2_divisions == (256,) * 6 + (128, 0) + (32,) * 8


def test_defaults_and_other_forms():
    assert allocator.AllocatorConfig.parse(None) == allocator.DEFAULT
    assert allocator.AllocatorConfig.parse("") == allocator.DEFAULT
    assert allocator.AllocatorConfig.parse("roundup_power2_divisions:4").roundup_power2_divisions == (4,) * 16
    assert not allocator.AllocatorConfig.parse("expandable_segments:False").expandable_segments
    assert allocator.AllocatorConfig.parse("max_split_size_mb:512") == allocator.DEFAULT  # not modelled
    assert allocator.AllocatorConfig.parse(" expandable_segments : True ").expandable_segments  # spaces dropped


def test_roundup_power2_next_division():
    assert allocator.roundup_power2_next_division(1200, 4) == 1280  # PyTorch's own example
    assert allocator.roundup_power2_next_division(1024, 4) == 1024  # a power of two stays
    assert allocator.roundup_power2_next_division(1200, 1) == 1200


def test_round_size_with_divisions():
    conf = allocator.AllocatorConfig.parse(UNSLOTH)
    # Qwen3-4B's embedding, 151936 x 2560 x 2 B = 741.875 MiB: [512, 1024) MiB in 32 steps of 16 MiB.
    assert allocator.round_size(151936 * 2560 * 2, conf) == 752 * MiB
    assert allocator.round_size(95 * MiB, conf) == 95 * MiB  # [64, 128) MiB in steps of 512 KiB
    assert allocator.round_size(150 * MiB + 1, conf) == 150 * MiB + 512  # 128-256 MiB: 512-byte rounding
    assert allocator.round_size(1200, conf) == 1536  # not above 512 x 256 B: 512-byte rounding
    assert allocator.round_size(100) == 512


def test_expandable_segments_split_every_block():
    conf = allocator.AllocatorConfig(expandable_segments=True)
    # Without expandable segments a 31.5 MiB tensor keeps its 32 MiB segment; with them, nothing stays.
    assert allocator.slack_bytes([("alloc", "qkv", 63 * MiB // 2)]) == MiB // 2
    assert allocator.slack_bytes([("alloc", "qkv", 63 * MiB // 2)], conf) == 0
    assert allocator.slack_bytes([("alloc", "gate_up", 95 * MiB)]) == MiB


def test_qwen3_4b_slack_under_unsloth():
    f = facts("Qwen/Qwen3-4B")
    default = memory.allocator_slack_bytes(f, 1, 1, 2)
    unsloth = memory.allocator_slack_bytes(f, 1, 1, 2, alloc_conf=allocator.AllocatorConfig.parse(UNSLOTH))
    # Default: gate_up 95 MiB in 96 (+1), down 47.5 in 48 (+0.5) on 36 layers, the embedding's 1/8 MiB.
    assert default == 36 * (3 * MiB // 2) + MiB // 8
    # Unsloth: the layers' tensors are exact divisions; the tied embedding rounds 741.875 to 752 MiB.
    assert unsloth == 752 * MiB - 151936 * 2560 * 2


def test_the_server_env_reaches_the_settings():
    spec = spec_models.FleetSpec.model_validate({
        "name": "f", "base_model": {"id": "Qwen/Qwen3-4B"}, "gpus": [{"type": "T4", "count": 1}],
        "servers": [{"name": "s", "env": {"PYTORCH_CUDA_ALLOC_CONF": UNSLOTH}}],
        "runtime": {"vllm_version": "0.8.5"}})
    s = engine.settings_for(spec, spec.servers[0], facts("Qwen/Qwen3-4B"), gpus.resolve(spec.gpus[0]))
    assert s.alloc_conf == allocator.AllocatorConfig.parse(UNSLOTH)


def test_qwen3_embedding_lora_only_from_the_release_that_declares_it():
    f = facts("Qwen/Qwen3-4B")
    assert "embed_tokens" not in memory.lora_targets(f, None, (0, 8, 5))
    assert "lm_head" not in memory.lora_targets(f, None, "0.14.0")
    assert "embed_tokens" in memory.lora_targets(f, None, (0, 16))
    assert "embed_tokens" in memory.lora_targets(f, None)  # no release: the catalog's (0.33) view
