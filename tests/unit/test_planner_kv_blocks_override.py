"""--num-gpu-blocks-override in extra_args fixes the KV cache's block count whatever the budget leaves
(may_override_num_blocks, vllm/v1/core/kv_cache_utils.py of 0.32), and vLLM allocates those blocks
whatever the device has left: the plan counts the blocks and refuses a count the GPU cannot hold."""

from __future__ import annotations

import pytest

from fleetspec.catalog import vllm_flags
from fleetspec.planner import report
from fleetspec.spec import models as spec_models

GIB = 1 << 30
BLOCK = 16 * 131072  # Llama-3.1-8B: 16 tokens × 32 layers × 8 KV heads × 128 × 2 (K, V) × 2 B


def plan(extra_args):
    spec = spec_models.FleetSpec.model_validate({
        "name": "k", "base_model": {"id": "meta-llama/Llama-3.1-8B-Instruct", "max_model_len": 8192},
        "gpus": [{"type": "H100-80GB", "count": 1}],
        "servers": [{"name": "a", "extra_args": extra_args}], "runtime": {"vllm_version": "0.19.0"},
    })
    result = report.plan_fleet(spec)
    return result, result.servers[0].replicas[0].budget


@pytest.mark.parametrize(("args", "blocks"), [
    (["--num-gpu-blocks-override", "2048"], 2048),
    (["--num-gpu-blocks-override=2048"], 2048),
    (["--num-gpu-blocks-override", "0"], None),  # not a block count: the budget sizes the cache
    (["--num-gpu-blocks-override", "1e9"], None),
    (["--num-gpu-blocks-override", "9" * 40], None),  # no number in a file can overflow the plan
    ([], None),
])
def test_the_flag_is_read_only_as_a_whole_positive_block_count(args, blocks):
    assert vllm_flags.num_gpu_blocks_override(args) == blocks


def test_the_override_replaces_what_the_budget_leaves():
    _, profiled = plan([])
    result, fixed = plan(["--num-gpu-blocks-override", "2048"])
    assert fixed.kv_cache == 2048 * BLOCK and fixed.kv_tokens == 2048 * 16
    assert fixed.kv_cache < profiled.kv_cache and fixed.weights == profiled.weights
    assert result.fits
    term = next(t for t in fixed.terms if t.term == "kv_cache")
    assert "--num-gpu-blocks-override 2048" in term.source


def test_more_blocks_than_the_gpu_holds_is_an_error_naming_the_flag_and_a_count_that_fits():
    result, b = plan(["--num-gpu-blocks-override", "40000"])
    assert not result.fits and b.kv_cache > b.kv_ceiling
    found = [f for f in result.findings if f.code == "kv-blocks-override-too-large"]
    assert len(found) == 1 and found[0].path == "servers[0].extra_args[1]"
    largest = int(b.kv_ceiling // BLOCK)
    assert f"lower it to {largest} blocks" in found[0].hint
    # The suggested count fits, one more block than the GPU has does not.
    assert plan(["--num-gpu-blocks-override", str(largest)])[1].kv_cache <= b.kv_ceiling
    assert not plan(["--num-gpu-blocks-override", str(largest + 1)])[1].fits


def test_the_flag_is_no_longer_reported_as_unmodelled():
    result, _ = plan(["--num-gpu-blocks-override", "2048"])
    assert not [f for f in result.findings if f.code == "extra-arg-not-modelled"]
