"""Findings carry a code, a path and a fix; every fix is applied here and must make the plan fit."""

from __future__ import annotations

import copy
import re

import pytest

from fleetspec.planner import report
from fleetspec.spec import models as spec

SEED_001 = {
    "name": "hi-moe",
    "base_model": {"id": "Qwen/QwQ-32B-Preview-AWQ", "quantization": "awq", "max_model_len": 8192},
    "gpus": "1x A100-40GB",
    "servers": [{"name": "main", "lora": {"max_loras": 16, "max_cpu_loras": 32, "max_lora_rank": 64,
                                          "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj"]}}],
    "specialists": [
        {"name": "python-lora", "version": "1.2.0", "path": "/adapters/python", "rank": 32},
        {"name": "math-lora", "version": "1.0.0", "path": "/adapters/math", "rank": 64},
        {"name": "docs-lora", "version": "1.0.0", "path": "/adapters/docs", "rank": 16},
    ],
    "runtime": {"engine": "vllm", "target": "docker"},
}


def plan(data: dict) -> report.FleetPlan:
    return report.plan_fleet(spec.FleetSpec.model_validate(data))


def with_changes(data: dict, *changes) -> dict:
    out = copy.deepcopy(data)
    for path, value in changes:
        node = out
        for key in path[:-1]:
            node = node.setdefault(key, {}) if isinstance(key, str) else node[key]
        node[path[-1]] = value
    return out


def only(p: report.FleetPlan, code: str):
    found = [f for f in p.findings if f.code == code]
    assert len(found) == 1, [f.render() for f in p.findings]
    return found[0]


def numbers(text: str, after: str) -> float:
    return float(re.search(re.escape(after) + r" ([0-9.]+)", text).group(1))


def test_seed_001_awq_fleet_fits_a_40gb_a100():
    p = plan(SEED_001)
    assert p.fits and p.errors == []
    replica = p.servers[0].replicas[0]
    assert replica.gpus == (0,) and replica.gpu_type == "A100-40GB"
    assert replica.budget.kv_tokens >= 8192
    assert replica.budget.lora == 4 << 30  # 16 slots × rank 64 on q/k/v/o of QwQ-32B


def test_seed_001_with_buffers_on_every_projection_does_not_fit_and_the_fix_works():
    data = with_changes(SEED_001, (("servers", 0, "lora", "target_modules"), None))
    data["servers"][0]["lora"].pop("target_modules")
    p = plan(data)
    problem = only(p, "no-room-for-kv-cache")
    assert not p.fits and problem.path == "servers[0].lora.max_loras"
    assert "LoRA buffers 16.0 GiB" in problem.message
    loras = int(numbers(problem.hint, "lower lora.max_loras to"))
    fixed = plan(with_changes(data, (("servers", 0, "lora", "max_loras"), loras)))
    assert fixed.fits
    too_many = plan(with_changes(data, (("servers", 0, "lora", "max_loras"), loras + 1)))
    assert not too_many.fits  # the suggestion is the largest count that fits


def llama_on_l4(length: int) -> dict:
    return {"name": "chat", "base_model": {"id": "meta-llama/Llama-3.1-8B-Instruct", "max_model_len": length},
            "gpus": "1x L4", "servers": [{"name": "chat"}]}


def test_context_too_long_suggests_a_length_that_fits():
    p = plan(llama_on_l4(131072))
    problem = only(p, "kv-cache-too-small")
    assert problem.path == "base_model.max_model_len"
    assert re.match(r"max_model_len 131072 needs 16\.0 GiB of KV cache per GPU, [0-9.]+ GiB is left", problem.message)
    length = int(numbers(problem.hint, "lower max_model_len to"))
    assert length % 256 == 0
    assert plan(llama_on_l4(length)).fits
    assert "gpu_memory_utilization" not in problem.hint  # no utilization could hold 16 GiB more


def test_utilization_fix_is_offered_when_it_works():
    p = plan(llama_on_l4(32768))
    problem = only(p, "kv-cache-too-small")
    util = numbers(problem.hint, "raise gpu_memory_utilization to")
    length = int(numbers(problem.hint, "lower max_model_len to"))
    raised = llama_on_l4(32768)
    raised["servers"][0]["gpu_memory_utilization"] = util
    assert plan(raised).fits
    assert plan(llama_on_l4(length)).fits
    raised["servers"][0]["gpu_memory_utilization"] = round(util - 0.01, 2)
    assert not plan(raised).fits


def test_max_lora_rank_above_every_adapter_frees_memory():
    data = with_changes(SEED_001, (("specialists", 1, "rank"), 32))  # largest adapter now rank 32
    p = plan(data)
    problem = only(p, "max-lora-rank-above-adapters")
    assert problem.path == "servers[0].lora.max_lora_rank"
    assert problem.message == "max_lora_rank 64 but your largest adapter is rank 32"
    assert problem.hint == "set max_lora_rank to 32 and free 2.0 GiB per GPU"
    fixed = plan(with_changes(data, (("servers", 0, "lora", "max_lora_rank"), 32)))
    assert not [f for f in fixed.findings if f.code == "max-lora-rank-above-adapters"]
    before, after = p.servers[0].replicas[0].budget, fixed.servers[0].replicas[0].budget
    assert before.lora - after.lora == 2 << 30


def test_adapters_training_only_attention_suggest_narrower_buffers():
    data = copy.deepcopy(SEED_001)
    data["servers"][0]["lora"].pop("target_modules")
    data["servers"][0]["lora"]["max_loras"] = 4
    for s in data["specialists"]:
        s["target_modules"] = ["q_proj", "v_proj"]
    problem = only(plan(data), "lora-buffers-for-untrained-modules")
    assert problem.hint.startswith("set lora.target_modules to [q_proj, v_proj] and free 3.3 GiB per GPU")
    # q and v live in the packed qkv_proj: 4 slots × 64 × 2 B × 64 layers × (3H + q + 2kv) stay, o and the MLP go.


def test_tensor_parallel_that_vllm_refuses_gets_a_valid_alternative():
    data = {"name": "q", "base_model": {"id": "Qwen/Qwen2.5-7B-Instruct", "max_model_len": 8192},
            "gpus": "16x H100", "servers": [{"name": "q", "tensor_parallel_size": 14}]}
    problem = only(plan(data), "tp-does-not-divide-model")
    assert "4 KV heads cannot be split or replicated evenly over 14 GPUs" in problem.message
    assert "the MLP width 18944 is not divisible by 14" in problem.message
    assert problem.hint == "use tensor_parallel_size 4"
    data["servers"][0]["tensor_parallel_size"] = 4
    assert plan(data).fits

    data["servers"][0]["tensor_parallel_size"] = 8
    heads = only(plan(data), "heads-not-divisible-by-tp")
    assert "28 attention heads are not divisible by 8" in heads.message
    assert heads.hint == "use tensor_parallel_size 4"  # 7 divides the heads but not the 4 KV heads


def test_unknown_model_asks_for_an_inline_architecture():
    data = {"name": "x", "base_model": {"id": "acme/mystery-13b"}, "gpus": "1x H100", "servers": [{"name": "x"}]}
    p = plan(data)
    problem = only(p, "unknown-base-model")
    assert problem.path == "base_model.id" and "base_model.architecture" in problem.hint
    assert not p.fits
    data["base_model"]["architecture"] = {
        "model_type": "llama", "hidden_size": 5120, "intermediate_size": 13824, "num_hidden_layers": 40,
        "num_attention_heads": 40, "vocab_size": 32000, "max_position_embeddings": 4096}
    assert plan(data).fits


def test_context_above_the_model_limit():
    data = {"name": "t", "base_model": {"id": "TinyLlama/TinyLlama-1.1B-Chat-v1.0", "max_model_len": 4096},
            "gpus": "1x T4", "servers": [{"name": "t"}]}
    problem = only(plan(data), "max-model-len-above-model-limit")
    assert problem.hint == "lower max_model_len to 2048"
    data["base_model"]["max_model_len"] = 2048
    assert plan(data).fits


def test_gpt2_cannot_serve_lora():
    data = {"name": "d", "base_model": {"id": "microsoft/DialoGPT-medium"}, "gpus": "1x T4",
            "servers": [{"name": "d", "lora": {"max_loras": 2}}]}
    assert only(plan(data), "lora-unsupported").path == "servers[0].lora"


def test_utilization_leaving_no_room_for_the_cuda_context():
    data = {"name": "t", "base_model": {"id": "TinyLlama/TinyLlama-1.1B-Chat-v1.0"}, "gpus": "1x T4",
            "servers": [{"name": "t", "gpu_memory_utilization": 0.99}]}
    problem = only(plan(data), "no-headroom-outside-budget")
    ceiling = numbers(problem.hint, "at")
    data["servers"][0]["gpu_memory_utilization"] = ceiling
    assert plan(data).fits


def test_discovered_gpus_are_planned_and_missing_discovery_is_explained():
    data = {"name": "d", "base_model": {"id": "Qwen/Qwen3-8B", "max_model_len": 8192}, "gpus": {"discover": True},
            "servers": [{"name": "d"}]}
    assert only(plan(data), "gpus-not-discovered").severity.value == "error"
    fleet = spec.FleetSpec.model_validate(data)
    p = report.plan_fleet(fleet, gpus_override=[spec.GpuGroup(type="H100-80GB", count=1, ids=[3])])
    assert p.fits and p.servers[0].replicas[0].gpus == (3,)


def test_json_has_the_documented_shape():
    out = plan(SEED_001).to_json()
    assert {"fleet", "fits", "servers", "host", "findings"} <= set(out)
    replica = out["servers"][0]["replicas"][0]
    assert {"index", "gpus", "fits", "kv_cache_tokens", "max_concurrency", "per_gpu"} <= set(replica)
    assert {"total_gib", "budget_gib", "weights_gib", "lora_gib", "activation_gib", "non_torch_gib",
            "cudagraph_gib", "kv_cache_gib"} <= set(replica["per_gpu"])
    assert set(out["host"]) == {"cpu_lora_cache_gib"}
    assert all({"severity", "code", "path", "message", "hint"} <= set(f) for f in out["findings"])


def test_cpu_cache_holds_the_largest_adapters_up_to_max_cpu_loras():
    p = plan(SEED_001)
    lora = p.servers[0].lora
    # q/k/v/o of QwQ-32B at rank r: 64 layers × r × ((5120+5120) + 2·(5120+1024) + (5120+5120)) × 2 bytes
    per_rank = 64 * ((5120 + 5120) + 2 * (5120 + 1024) + (5120 + 5120)) * 2
    assert lora.largest_adapter_bytes == 64 * per_rank
    assert lora.cpu_cache_bytes == (64 + 32 + 16) * per_rank  # three adapters, all fit in 32 CPU slots
    assert p.cpu_lora_cache_bytes == lora.cpu_cache_bytes


@pytest.mark.parametrize("replicas", [1, 3])
def test_replicas_of_one_server_share_one_budget(replicas):
    data = {"name": "r", "base_model": {"id": "Qwen/Qwen3-8B", "max_model_len": 8192}, "gpus": "4x L40S",
            "servers": [{"name": "r", "replicas": replicas}]}
    p = plan(data)
    assert p.fits and [r.gpus for r in p.servers[0].replicas] == [(i,) for i in range(replicas)]
    assert len({id(r.budget) for r in p.servers[0].replicas}) == 1


def test_enforce_eager_is_offered_when_dropping_cuda_graphs_is_enough():
    data = copy.deepcopy(SEED_001)
    data["servers"][0]["lora"].pop("target_modules")
    data["base_model"]["max_model_len"] = 4096
    problem = only(plan(data), "no-room-for-kv-cache")
    assert "set enforce_eager: true (frees 2.3 GiB of CUDA graphs; decoding gets slower)" in problem.hint
    data["servers"][0]["enforce_eager"] = True
    fixed = plan(data)
    assert fixed.fits and fixed.servers[0].replicas[0].budget.kv_tokens == 5760


def test_embedded_sim_fleet_plans_on_the_pretend_gpu():
    data = {"name": "local", "base_model": {"id": "fleetspec/tiny-test-llama"}, "gpus": "1x sim",
            "servers": [{"name": "sim", "lora": {"max_loras": 2, "max_lora_rank": 8}}]}
    p = plan(data)
    replica = p.servers[0].replicas[0]
    assert p.fits and replica.gpu_type == "sim" and replica.budget.total == 24 << 30


def test_two_servers_share_one_gpu_within_its_memory():
    data = {"name": "pair", "base_model": {"id": "Qwen/Qwen2.5-7B-Instruct", "max_model_len": 4096},
            "gpus": "1x A100-80GB",
            "servers": [{"name": "a", "gpu_memory_utilization": 0.45}, {"name": "b", "gpu_memory_utilization": 0.45}]}
    p = plan(data)
    assert p.fits and [s.replicas[0].gpus for s in p.servers] == [(0,), (0,)]
    data["servers"][1]["gpu_memory_utilization"] = 0.6
    assert only(plan(data), "not-enough-gpus").path == "servers[1].replicas"


def test_lowering_max_lora_rank_to_the_largest_adapter_is_offered_when_it_fits():
    data = llama_on_l4(16384)
    data["servers"][0]["lora"] = {"max_loras": 8, "max_lora_rank": 64}
    data["specialists"] = [{"name": "sql", "version": "1.0.0", "path": "/adapters/sql", "rank": 16}]
    problem = only(plan(data), "kv-cache-too-small")
    assert "lower lora.max_lora_rank to 16 (your largest adapter's rank)" in problem.hint
    data["servers"][0]["lora"]["max_lora_rank"] = 16
    assert plan(data).fits


def test_more_tensor_parallel_is_only_offered_when_every_replica_still_gets_gpus():
    data = llama_on_l4(65536)
    assert "raise tensor_parallel_size to 2" in only(plan(with_changes(data, (("gpus",), "2x L4"))),
                                                     "kv-cache-too-small").hint
    data["servers"][0]["replicas"] = 2
    hint = only(plan(with_changes(data, (("gpus",), "2x L4"))), "kv-cache-too-small").hint
    assert "tensor_parallel_size" not in hint
    data["servers"][0]["tensor_parallel_size"] = 2
    assert plan(with_changes(data, (("gpus",), "4x L4"))).fits
