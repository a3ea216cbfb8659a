"""What happens after the KV cache is allocated: CUDA-graph capture and V1's sampler warm-up.

vLLM sizes the KV cache from the budget, then (Worker.compile_or_warm_up_model, vllm/v1/worker/
gpu_worker.py) captures CUDA graphs and runs the sampler once more over max_num_seqs rows
(GPUModelRunner._dummy_sampler_run). Before 0.21 the graphs were not subtracted from the budget, so
they and the warm-up must fit in what is left outside it plus the activation peak the profile run
reserved and freed again.
"""

from __future__ import annotations

import pytest

from fleetspec.catalog import models as catalog_models
from fleetspec.catalog import overheads
from fleetspec.planner import memory, report
from fleetspec.spec import models as spec

GIB = 1 << 30


def gemma_fleet(version: str, utilization: float, **server) -> dict:
    return {
        "name": "w",
        "base_model": {"id": "google/gemma-2-9b-it", "max_model_len": 4096},
        "gpus": "1x L40S",
        "runtime": {"vllm_version": version},
        "servers": [{"name": "w", "gpu_memory_utilization": utilization, **server}],
    }


def plan(data: dict) -> report.FleetPlan:
    return report.plan_fleet(spec.FleetSpec.model_validate(data))


def codes(p: report.FleetPlan) -> set[str]:
    return {f.code for f in p.findings}


def gemma() -> catalog_models.ModelFacts:
    return catalog_models.resolve(spec.BaseModelSpec(id="google/gemma-2-9b-it"))


def test_sampler_warmup_is_fp32_logits_over_max_num_seqs_rows_times_the_fitted_peak():
    facts = gemma()
    expected = overheads.load().sampler_factor * 512 * facts.architecture.vocab_size * 4
    assert memory.sampler_bytes(facts, 512) == round(expected)
    assert memory.sampler_bytes(facts, 1024) == pytest.approx(2 * memory.sampler_bytes(facts, 512), abs=1)


def test_only_the_v1_engine_warms_the_sampler_up_after_kv_allocation():
    assert not memory.warms_up_sampler_after_kv("0.6.4")
    assert not memory.warms_up_sampler_after_kv("0.7.3")
    assert memory.warms_up_sampler_after_kv("0.8.0")
    assert memory.warms_up_sampler_after_kv("0.33.0")
    b06 = plan(gemma_fleet("0.6.4", 0.9)).servers[0].replicas[0].budget
    b19 = plan(gemma_fleet("0.19.0", 0.9)).servers[0].replicas[0].budget
    assert b06.sampler_warmup == 0
    assert b19.sampler_warmup == memory.sampler_bytes(gemma(), 256)  # L40S default max_num_seqs


def test_free_memory_at_warmup_adds_back_the_activation_room_and_takes_outside_graphs():
    free = memory.warmup_free_bytes(
        total=100, budget=90, cuda_context=2, activation=5, cudagraph=3, cudagraph_in_budget=False
    )
    assert free == 100 - 90 - 2 + 5 - 3
    assert memory.warmup_free_bytes(100, 90, 2, 5, 3, True) == 100 - 90 - 2 + 5


def test_graphs_outside_the_budget_kill_a_tight_replica_after_its_kv_cache_is_sized():
    # vLLM 0.19 at 0.975 of an L40S: the CUDA context fits in the 2.5 % outside the budget, the
    # ~1 GiB of graphs gemma-2's 42 layers capture does not, even with the activation room back.
    tight = plan(gemma_fleet("0.19.0", 0.975))
    assert "no-headroom-outside-budget" not in codes(tight)
    problem = next(f for f in tight.findings if f.code == "fails-after-kv-cache-allocation")
    assert "CUDA context and graphs" in problem.message and "enforce_eager" in problem.hint
    assert not tight.fits


@pytest.mark.parametrize("change", [{"enforce_eager": True}], ids=["eager"])
def test_no_graphs_no_failure_after_kv(change):
    assert "fails-after-kv-cache-allocation" not in codes(plan(gemma_fleet("0.19.0", 0.975, **change)))


def test_since_0_21_graphs_come_out_of_the_budget_so_the_same_utilization_starts():
    p = plan(gemma_fleet("0.21.0", 0.975))
    assert "fails-after-kv-cache-allocation" not in codes(p)
    assert p.servers[0].replicas[0].budget.warmup_fits


def test_graphs_that_fit_in_the_freed_activation_room_are_not_a_false_alarm():
    # 0.93 leaves 3.1 GiB outside the budget: context and graphs fit there together.
    p = plan(gemma_fleet("0.19.0", 0.93))
    assert not codes(p) & {"fails-after-kv-cache-allocation", "no-headroom-outside-budget"}
    b = p.servers[0].replicas[0].budget
    assert b.warmup_fits and b.warmup_free > b.sampler_warmup


def test_budget_json_reports_the_warmup_terms():
    per_gpu = plan(gemma_fleet("0.19.0", 0.9)).to_json()["servers"][0]["replicas"][0]["per_gpu"]
    assert per_gpu["sampler_warmup_gib"] > 0 and per_gpu["warmup_free_gib"] > per_gpu["sampler_warmup_gib"]


def test_v0_batch_defaults_follow_max_model_len_not_the_device_table():
    # vLLM < 0.8: 256 sequences everywhere; one step holds a whole prompt unless chunked prefill
    # (default above 32K tokens) caps it at 2048 (overheads.yaml engine.v0_defaults).
    def settings(version: str, length: int):
        data = {
            "name": "e",
            "base_model": {"id": "meta-llama/Llama-3.1-8B-Instruct", "max_model_len": length},
            "gpus": "1x H100-80GB",
            "runtime": {"vllm_version": version},
            "servers": [{"name": "e"}],
        }
        return plan(data).servers[0].settings

    old = settings("0.6.4", 20000)
    assert (old.max_num_seqs, old.max_num_batched_tokens) == (256, 20000)
    assert settings("0.6.4", 1024).max_num_batched_tokens == 2048
    assert settings("0.7.3", 65536).max_num_batched_tokens == 2048
    new = settings("0.19.0", 20000)
    assert (new.max_num_seqs, new.max_num_batched_tokens) == (1024, 8192)


def test_plans_say_when_the_release_is_extrapolated():
    def scope(version: str) -> set[str]:
        return {
            f.message
            for f in plan(gemma_fleet(version, 0.9)).findings
            if f.code == "memory-model-extrapolated"
        }

    assert scope("0.19.0") == set() and scope("0.33.0") == set()
    assert any("V0 engine" in m for m in scope("0.6.4"))
    assert any("outside the releases" in m for m in scope("0.40.0"))
    assert plan(gemma_fleet("0.6.4", 0.9)).fits  # information, not a failure
