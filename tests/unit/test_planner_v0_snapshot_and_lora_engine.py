"""V0's non-torch term from its baseline snapshot, and the engine `vllm serve` picks with LoRA (issue 18).

Worked from vLLM's code (overheads.yaml non_torch_model and engine cite the lines):
- V0 from 0.7.0 takes `baseline_snapshot = MemorySnapshot()` in Worker.init_device, after the CUDA
  context exists, and memory_profiling's non_torch_increase is (cuda used − torch reserved) after the
  profile run minus the same at that baseline (vllm/worker/worker.py, vllm/utils.py @0.7.1, 0.8.5):
  the context stays outside the budget, and on one GPU vLLM allocates nothing outside torch before
  the profile run ends (no pynccl / custom all-reduce at world size 1), so no base is planned.
  0.6.4-0.6.6 (allocated-based, slack counted) and ≤ 0.6.3 (init free − free) keep the measured base.
- 0.8.0-0.8.2 fall back to V0 when LoRA is enabled (`if self.enable_lora and
  _warn_or_fallback("LORA")`, engine/arg_utils.py); 0.8.3 dropped the check; VLLM_USE_V1=1 keeps V1,
  VLLM_USE_V1=0 disables V1 while V0 exists (to 0.10.x).
"""

from __future__ import annotations

import pytest

from fleetspec.catalog import gpus, models
from fleetspec.planner import budget, engine, memory, nontorch
from fleetspec.spec import models as spec

GIB, MIB = 1 << 30, 1 << 20


def gib(value: float) -> int:
    return round(value * GIB)


# ---- V0's non-torch term ---------------------------------------------------------------------------

@pytest.mark.parametrize("version", [(0, 7, 0), (0, 7, 3), (0, 8, 2), (0, 8, 5), (0, 9, 2)])
def test_v0_from_0_7_plans_no_base_on_one_gpu(version):
    got = nontorch.non_torch(1, 1, version, v0=True)
    assert got.in_budget == 0 and got.parts == ()
    assert got.outside == gib(0.51)  # the CUDA context: in the baseline snapshot, beside the budget
    assert got.confidence == "estimated"  # the driver's own kernel loads are not modelled


@pytest.mark.parametrize("version", [(0, 6, 3), (0, 6, 4), (0, 6, 6)])
def test_v0_before_0_7_keeps_the_measured_base(version):
    # 0.6.4-0.6.6 count the allocator's slack as non-torch (Δ allocated, not reserved); 0.6.3 counts
    # the whole increase from init: the measured base stays.
    assert nontorch.non_torch(1, 1, version, v0=True).in_budget == gib(0.25)


def test_v0_tensor_parallel_keeps_what_distributed_init_makes_after_the_baseline():
    # Two GPUs over PCIe on 0.7.1: no base; NCCL's communicator made at first use (2 channels × 10 MiB,
    # one ring neighbour) and, since V0's baseline precedes init_worker_distributed_environment,
    # vLLM's pynccl communicator (20 MiB) and custom all-reduce's two 8 MiB buffers.
    got = nontorch.non_torch(2, 1, (0, 7, 1), interconnect="pcie", v0=True)
    names = [name for name, _ in got.parts]
    assert "base" not in names
    assert got.in_budget == 20 * MIB + (20 * MIB + 16 * MIB)
    assert got.outside == gib(0.51)


def test_v1_of_0_8_still_counts_the_whole_device():
    got = nontorch.non_torch(1, 1, (0, 8, 5), v0=False)
    assert got.in_budget == gib(0.25) + gib(0.51) and got.outside == 0


# ---- engine choice with LoRA -------------------------------------------------------------------------

@pytest.mark.parametrize(("version", "env", "v0"), [
    ((0, 8, 0), None, True),
    ((0, 8, 1), None, True),   # "LORA is experimental on VLLM_USE_V1=1. Falling back to V0 Engine."
    ((0, 8, 2), None, True),   # the last release with the check
    ((0, 8, 3), None, False),
    ((0, 8, 5), None, False),
    ((0, 8, 1), "1", False),   # _warn_or_fallback: VLLM_USE_V1=1 set explicitly keeps V1
    ((0, 8, 1), "0", True),
])
def test_lora_falls_back_to_v0_in_0_8_0_to_0_8_2(version, env, v0):
    assert memory.runs_v0(version, (8, 0), lora=True, use_v1_env=env) is v0
    assert memory.runs_v0(version, (8, 0), lora=False, use_v1_env=env) is (env == "0")


@pytest.mark.parametrize(("version", "v0"), [((0, 8, 5), True), ((0, 10, 2), True), ((0, 11, 0), False)])
def test_vllm_use_v1_0_disables_v1_while_v0_exists(version, v0):
    assert memory.runs_v0(version, (9, 0), use_v1_env="0") is v0


def _fleet(version: str, lora: bool) -> spec.FleetSpec:
    server = {"name": "s", "max_num_seqs": 320, "max_num_batched_tokens": 2048,
              "gpu_memory_utilization": 0.79}
    if lora:
        server["lora"] = {"max_loras": 1, "max_lora_rank": 64}
    return spec.FleetSpec.model_validate({
        "name": "l", "base_model": {"id": "meta-llama/Llama-3.2-3B-Instruct", "max_model_len": 2048,
                                    "dtype": "bfloat16"},
        "gpus": "1x A100-40GB", "servers": [server], "runtime": {"vllm_version": version}})


def test_an_a100_with_lora_on_0_8_1_is_planned_on_v0_without_the_context_in_its_budget():
    group = gpus.resolve(spec.GpuGroup(type="A100-40GB"))
    fleet = _fleet("0.8.1", lora=True)
    facts = models.resolve(fleet.base_model)
    s = engine.settings_for(fleet, fleet.servers[0], facts, group)
    assert s.v0
    b = budget.compute(facts, s, group.total_bytes)
    # V1 of 0.8 would put the whole context (0.51 GiB) and the base (0.25 GiB) in the budget; V0 neither.
    assert b.non_torch == 0 and b.cuda_context == gib(0.51)
    without = _fleet("0.8.1", lora=False)
    assert not engine.settings_for(without, without.servers[0], facts, group).v0
    later = _fleet("0.8.3", lora=True)
    assert not engine.settings_for(later, later.servers[0], facts, group).v0
