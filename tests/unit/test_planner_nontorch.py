"""Non-torch memory and the CUDA context by release, tensor-parallel size and link (issue 18 item 2),
each figure from vLLM's worker code or NCCL's and FlashInfer's buffer sizes (overheads.yaml
non_torch_model cites the lines), plus V1's fallback to V0 on GPUs below compute capability 8.0."""

from __future__ import annotations

import pytest

from fleetspec.catalog import gpus, models
from fleetspec.planner import engine, memory, nontorch, startup_log
from fleetspec.spec import models as spec

GIB, MIB = 1 << 30, 1 << 20
H100 = (9, 0)


def gib(value: float) -> int:
    return round(value * GIB)


@pytest.mark.parametrize(("tp", "expected_mib"), [
    (2, 128 + 2 + 384),   # 64 MiB per rank of the one-shot buffer: round2M(2 x 64) + 2 + round2M(3 x 128)
    (4, 8 + 2 + 24),
    (8, 4 + 2 + 12),
    (3, 0),               # not a world size of vLLM's table: no fusion
])
def test_flashinfer_fusion_workspace_on_hopper(tp, expected_mib):
    got = nontorch.flashinfer_fusion_bytes(tp, (0, 19), H100, hidden=4096, batched_tokens=8192)
    assert got == expected_mib * MIB


def test_fusion_workspace_is_sized_by_the_batch_when_that_is_smaller():
    # T = min(64 MiB / (4096 x 2 B), 256) = 256 tokens: 2 x 256 x 4096 x 2 B = 4 MiB
    assert nontorch.flashinfer_fusion_bytes(2, (0, 19), H100, hidden=4096, batched_tokens=256) == (4 + 2 + 12) * MIB


@pytest.mark.parametrize(("version", "capability", "pp"), [
    ((0, 16), H100, 1),        # before 0.17
    ((0, 19), (8, 0), 1),      # A100: not a capability FlashInfer's fusion supports
    ((0, 19), H100, 2),        # 0.17-0.19 want dp = pp = 1
])
def test_no_fusion_workspace(version, capability, pp):
    assert nontorch.flashinfer_fusion_bytes(2, version, capability, hidden=4096, batched_tokens=8192, pp=pp) == 0


def test_fusion_with_pipeline_parallel_from_0_20():
    assert nontorch.flashinfer_fusion_bytes(2, (0, 20), H100, hidden=4096, batched_tokens=8192, pp=2) > 0


@pytest.mark.parametrize(("tp", "measured_gib"), [(2, 2.09), (4, 2.17)])
def test_the_0_19_h100_measurement_is_reproduced(tp, measured_gib):
    got = nontorch.non_torch(tp, 1, (0, 19), interconnect="nvlink", compute_capability=H100)
    assert got.in_budget == pytest.approx(gib(measured_gib), abs=MIB)
    assert got.outside == gib(1.55) and got.confidence == "measured"
    assert any(name.startswith("FlashInfer") for name, _ in got.parts)


def test_before_0_17_hopper_has_no_fusion_workspace_in_non_torch():
    late, early = (nontorch.non_torch(2, 1, v, compute_capability=H100).in_budget for v in ((0, 19), (0, 14)))
    assert late - early == 514 * MIB


def test_pcie_keeps_nccl_small():
    got = nontorch.non_torch(2, 1, (0, 19), interconnect="pcie", compute_capability=(8, 9))
    # the base, one communicator of 2 channels x 10 MiB, and outside: the context, vLLM's own
    # communicator and custom all-reduce's two 8 MiB buffers
    assert got.in_budget == gib(0.25) + 20 * MIB
    assert got.outside == gib(0.51) + 20 * MIB + 16 * MIB
    assert got.confidence == "estimated"


def test_ranks_on_different_hosts_use_nccl_over_the_network():
    # NCCL's NET transport: the PCIe-sized buffers at most (GPU memory only with GPUDirect RDMA,
    # transport/net.cc v2.26.2), and no custom all-reduce buffers across nodes (custom_all_reduce.py).
    got = nontorch.non_torch(2, 1, (0, 19), interconnect="network", compute_capability=(8, 0))
    assert got.in_budget == gib(0.25) + 20 * MIB
    assert got.outside == gib(0.51) + 20 * MIB
    assert got.confidence == "estimated"
    # 0.10.1 takes its snapshot before distributed init: that communicator is counted too.
    early = nontorch.non_torch(2, 1, (0, 10, 1), interconnect="network", compute_capability=(8, 0))
    assert early.in_budget == gib(0.25) + 40 * MIB


def test_a_group_spanning_nodes_is_read_from_the_log():
    text = ("(RayWorkerWrapper pid=1384) WARNING 09-03 04:38:28 [custom_all_reduce.py:85] Custom allreduce is disabled\n"
            " because this process group spans across nodes.\n")
    assert startup_log.parse(text).interconnect == "network"


def test_before_0_11_distributed_init_is_inside_the_budget():
    late = nontorch.non_torch(2, 1, (0, 11), compute_capability=(8, 0))
    early = nontorch.non_torch(2, 1, (0, 10, 1), compute_capability=(8, 0))
    assert early.in_budget - late.in_budget == gib(1.55) - gib(0.51)
    assert early.outside == gib(0.51)


def test_v1_of_0_8_counts_the_whole_device():
    got = nontorch.non_torch(1, 1, (0, 8, 5))
    assert got.in_budget == gib(0.25) + gib(0.51) and got.outside == 0
    v0 = nontorch.non_torch(1, 1, (0, 8, 5), v0=True)  # the V0 fallback takes its own snapshot
    assert v0.in_budget == 0 and v0.outside == gib(0.51)  # context in its baseline; no base (V0 ≥ 0.7)


@pytest.mark.parametrize(("version", "capability", "v0"), [
    ((0, 7, 1), (9, 0), True),
    ((0, 8, 5), (7, 5), True),     # T4: "Compute Capability < 8.0 is not supported by the V1 Engine"
    ((0, 9, 2), (7, 0), True),
    ((0, 8, 5), (8, 0), False),
    ((0, 10, 2), (7, 5), False),
])
def test_v1_falls_back_to_v0_below_capability_8(version, capability, v0):
    assert memory.runs_v0(version, capability) is v0


def test_a_t4_on_0_8_plans_the_v0_engine_with_its_defaults():
    fleet = spec.FleetSpec.model_validate({
        "name": "t4", "base_model": {"id": "meta-llama/Llama-3.2-3B-Instruct", "max_model_len": 4096},
        "gpus": "1x T4", "servers": [{"name": "s"}], "runtime": {"vllm_version": "0.8.5"}})
    facts = models.resolve(fleet.base_model)
    s = engine.settings_for(fleet, fleet.servers[0], facts, gpus.resolve(spec.GpuGroup(type="T4")))
    assert s.v0 and (s.max_num_seqs, s.max_num_batched_tokens) == (256, 4096)  # chunked prefill off


@pytest.mark.parametrize(("group", "link"), [
    ({"type": "H100-80GB"}, "nvlink"),
    ({"type": "H100-PCIe"}, "pcie"),
    ({"type": "A100-80GB", "interconnect": "pcie"}, "pcie"),
    ({"type": "L40S"}, "pcie"),
    ({"type": "RTX-3090", "interconnect": "nvlink"}, "nvlink"),
    ({"memory_gib": 48}, "pcie"),
])
def test_interconnect_of_a_gpu_group(group, link):
    assert gpus.resolve(spec.GpuGroup(**group)).interconnect == link


# ---- FlashInfer's sampler in V1 of 0.8-0.11 ----------------------------------------------------

@pytest.mark.parametrize(("version", "installed", "env", "expected"), [
    ((0, 10, 1), True, None, True),     # on whenever installed (VLLM_USE_FLASHINFER_SAMPLER unset)
    ((0, 10, 1), False, None, False),
    ((0, 10, 1), True, "0", False),
    ((0, 12, 0), True, None, False),    # opt-in from 0.12
    ((0, 14, 0), True, "1", True),
    ((0, 7, 1), True, None, False),     # V0
])
def test_when_v1_samples_with_flashinfer(version, installed, env, expected):
    assert memory.flashinfer_samples(version, installed, env, v0=version < (0, 8)) is expected


def fleet_on(target: str, version: str, env: dict | None = None) -> engine.EngineSettings:
    fleet = spec.FleetSpec.model_validate({
        "name": "f", "base_model": {"id": "Qwen/Qwen2.5-7B-Instruct", "max_model_len": 8192},
        "gpus": "1x A100-80GB", "servers": [{"name": "s", "env": env or {}}],
        "runtime": {"vllm_version": version, "target": target}})
    return engine.settings_for(fleet, fleet.servers[0], models.resolve(fleet.base_model),
                               gpus.resolve(spec.GpuGroup(type="A100-80GB")))


def test_vllm_images_carry_flashinfer_and_pip_brings_it_from_0_14():
    assert fleet_on("docker", "0.10.1").flashinfer_sampler
    assert not fleet_on("local", "0.10.1").flashinfer_sampler
    assert fleet_on("local", "0.14.0", {"VLLM_USE_FLASHINFER_SAMPLER": "1"}).flashinfer_sampler


def test_flashinfer_sampling_needs_less_than_sorting_the_vocabulary():
    facts = models.resolve(spec.BaseModelSpec(id="Qwen/Qwen2.5-7B-Instruct"))
    sort = memory.activation_bytes(facts, 2048, 256, 1, (0, 10, 1))
    fused = memory.activation_bytes(facts, 2048, 256, 1, (0, 10, 1), flashinfer_sampler=True)
    logits = 256 * 152064 * 4
    assert sort - fused == pytest.approx((9.40 - 3.54) * logits, rel=1e-6)


@pytest.mark.parametrize(("line", "installed", "env"), [
    ("INFO 09-03 [topk_topp_sampler.py:50] Using FlashInfer for top-p & top-k sampling.", True, None),
    ("WARNING [topk_topp_sampler.py:61] FlashInfer is not available. Falling back to the PyTorch-native", False, None),
    ("WARNING FlashInfer is available, but it is not enabled. Falling back to the PyTorch-native", True, "0"),
])
def test_the_log_says_whether_flashinfer_sampled(line, installed, env):
    facts = startup_log.parse(line)
    assert (facts.flashinfer, facts.flashinfer_sampler_env) == (installed, env)


@pytest.mark.parametrize("line", [
    "WARNING [custom_all_reduce.py:147] Custom allreduce is disabled because your platform lacks GPU P2P capability",
    "WARNING Custom allreduce is disabled because it's not supported on more than two PCIe-only GPUs.",
    "WARNING Custom allreduce is disabled because your platform lacks GPU\n P2P capability or P2P test failed.",
])
def test_the_log_says_when_the_gpus_only_share_pcie(line):
    assert startup_log.parse(line).interconnect == "pcie"
    assert startup_log.parse("INFO nothing about links").interconnect is None
