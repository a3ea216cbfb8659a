"""Planner numbers from real adapters: recommended max_lora_rank, host RAM, padding warnings."""

from __future__ import annotations

import adapter_factory
import pytest
from adapter_factory import ATTENTION, MLP, TINY_LLAMA

from fleetspec.adapters import checks, sizing
from fleetspec.adapters import inspect as adapter_inspect
from fleetspec.errors import Location, Severity
from fleetspec.spec import models


@pytest.mark.parametrize(("ranks", "expected"), [
    ([8], 8), ([1], 1), ([2], 8), ([9, 4], 16), ([16], 16), ([17], 32), ([64, 32], 64),
    ([257], 320), ([320], 320), ([321], 512), ([512], 512), ([513], None), ([], 1),
])
def test_recommended_max_lora_rank_is_the_smallest_allowed_value(ranks, expected):
    assert sizing.recommended_max_lora_rank(ranks) == expected


def test_host_bytes_count_lora_elements_at_the_lora_dtype(tmp_path):
    # rank 8 over q,k,v,o of 2 layers = 7168 elements (see test_adapters_inspect); stored F32 on disk
    info = adapter_inspect.inspect(adapter_factory.write_adapter(tmp_path / "a", dtype="F32"))
    assert info.tensor_bytes == 7168 * 4
    assert sizing.adapter_host_bytes(info, 2) == 7168 * 2
    assert sizing.adapter_host_bytes(info, 4) == 7168 * 4


def test_host_bytes_of_an_8b_model_adapter(tmp_path):
    info = adapter_inspect.inspect(adapter_factory.write_adapter(
        tmp_path / "big", adapter_factory.LLAMA_8B, rank=16, targets=ATTENTION + MLP))
    # per layer: q 16·(4096+4096) + k,v 16·(4096+1024) each + o 16·(4096+4096) + gate,up 16·(4096+14336) each
    # + down 16·(14336+4096) = 16 · 81920 = 1,310,720 elements; 32 layers; bf16
    assert sizing.adapter_host_bytes(info, 2) == 1_310_720 * 32 * 2 == 83_886_080


def test_pickled_adapters_fall_back_to_their_file_size(tmp_path):
    info = adapter_inspect.inspect(adapter_factory.write_adapter(tmp_path / "b", weights="bin"))
    assert sizing.adapter_host_bytes(info, 2) == info.weights_bytes == 36  # the factory's 36-byte stand-in


def test_cpu_cache_holds_the_largest_adapters():
    assert sizing.cpu_cache_bytes([10, 50, 20, 40], max_cpu_loras=2) == 90
    assert sizing.cpu_cache_bytes([10, 50], max_cpu_loras=8) == 60
    assert sizing.cpu_cache_bytes([], max_cpu_loras=4) == 0


def test_padding_warning_when_max_lora_rank_exceeds_the_largest_adapter():
    located = Location("fleet.yaml", 9, 22)
    finding = sizing.padding_finding(
        64, [8, 16], where=("servers", 0, "lora", "max_lora_rank"), server_name="main",
        freed_bytes_per_gpu=3 * 1024**3 // 2, locate=lambda path: located,
    )
    assert (finding.severity, finding.code, finding.path) == (
        Severity.WARNING, "max-lora-rank-above-adapters", "servers[0].lora.max_lora_rank")
    assert finding.message == ("server main reserves max_lora_rank 64 but its largest adapter has rank 16; "
                               "vLLM allocates every adapter slot and runs its LoRA kernels at rank 64")
    assert finding.hint == "lower max_lora_rank to 16: it still holds every adapter and frees 1.50 GiB per GPU"
    assert finding.location == located


@pytest.mark.parametrize(("max_rank", "ranks"), [(16, [16]), (16, [9]), (16, []), (512, [600])])
def test_no_padding_warning_when_nothing_smaller_fits(max_rank, ranks):
    assert sizing.padding_finding(max_rank, ranks) is None


def test_check_fleet_warns_per_server_about_padding(tmp_path):
    info = adapter_inspect.inspect(adapter_factory.write_adapter(tmp_path / "a", rank=8))
    spec = models.FleetSpec.model_validate({
        "name": "f", "base_model": {"id": "fleetspec/tiny-llama", "architecture": TINY_LLAMA.model_dump()},
        "gpus": "1x H100-80GB",
        "servers": [{"name": "small", "lora": {"max_lora_rank": 8}}, {"name": "wide", "lora": {"max_lora_rank": 128}}],
        "specialists": [{"name": "sql", "version": "1.0.0", "path": str(info.path)}],
    })
    found = checks.check_fleet(spec, {("sql", "1.0.0"): info}, TINY_LLAMA, True)
    assert [(d.code, d.path) for d in found] == [("max-lora-rank-above-adapters", "servers[1].lora.max_lora_rank")]
    assert found[0].hint == "lower max_lora_rank to 8: it still holds every adapter"
