"""Uneven pipeline splits (also across GPU types), data parallel and expert parallel (issue 18 item 6),
each against vLLM 0.32's own code: get_pp_indices (vllm/distributed/utils.py), get_kv_cache_configs
(vllm/v1/core/kv_cache_utils.py), FusedMoEParallelConfig.make (model_executor/layers/fused_moe/config.py),
determine_expert_map (fused_moe/expert_map_manager.py), FusedMoEWithLoRA (vllm/lora/layers/fused_moe.py)."""

from __future__ import annotations

import pytest

from fleetspec.catalog import gpus, models
from fleetspec.compile import vllm_args
from fleetspec.planner import budget, engine, memory, report
from fleetspec.spec import models as spec

LLAMA8 = models.resolve(spec.BaseModelSpec(id="meta-llama/Llama-3.1-8B-Instruct"))
MIXTRAL = models.resolve(spec.BaseModelSpec(id="mistralai/Mixtral-8x7B-Instruct-v0.1"))
DSV2 = models.resolve(spec.BaseModelSpec(id="deepseek-ai/DeepSeek-V2-Lite-Chat"))
GPT_OSS = models.resolve(spec.BaseModelSpec(id="openai/gpt-oss-20b"))


def fleet(servers: list[dict], gpus_: object = "2x A100-80GB", model: str = "meta-llama/Llama-3.1-8B-Instruct",
          **runtime) -> dict:
    return {"name": "shapes", "base_model": {"id": model, "max_model_len": 8192}, "gpus": gpus_,
            "servers": servers, "runtime": {"vllm_version": "0.19.0", **runtime}}


def plan(data: dict) -> report.FleetPlan:
    return report.plan_fleet(spec.FleetSpec.model_validate(data))


# ---- the split vLLM builds ---------------------------------------------------------------------

@pytest.mark.parametrize(("layers", "pp", "expected"), [
    (32, 2, [16, 16]),
    (32, 3, [11, 11, 10]),      # remainder 2: stages -2 and -3 get one more, the last (lm_head) none
    (80, 3, [27, 27, 26]),
    (10, 4, [2, 3, 3, 2]),      # the first and last stages keep the embedding and lm_head light
    (7, 4, [2, 2, 2, 1]),       # remainder 3 reaches the first stage, never the last
])
def test_default_split_is_get_pp_indices(layers, pp, expected):
    stages = memory.pipeline_stages(layers, pp)
    assert [s.layers for s in stages] == expected
    assert [s.start for s in stages] == [sum(expected[:i]) for i in range(pp)]
    assert stages[0].first and stages[-1].last and not any(s.first or s.last for s in stages[1:-1])


def test_the_fleets_split_is_used_as_given():
    assert [(s.start, s.layers) for s in memory.pipeline_stages(32, 2, (22, 10))] == [(0, 22), (22, 10)]


def test_stage_parameters_add_up_to_the_whole_model():
    whole = memory.params_per_gpu(LLAMA8, 1, 1).total
    for split in ((16, 16), (22, 10), (1, 31)):
        stages = memory.pipeline_stages(32, 2, split)
        assert sum(memory.params_per_gpu(LLAMA8, 1, 2, stage=s).total for s in stages) == pytest.approx(whole)


def test_first_stage_holds_the_embedding_and_last_the_lm_head():
    first, last = memory.pipeline_stages(32, 2, (16, 16))
    table = memory.padded_vocab(128256) * 4096
    gap = memory.params_per_gpu(LLAMA8, 1, 2, stage=first).other - memory.params_per_gpu(LLAMA8, 1, 2, stage=last).other
    assert gap == pytest.approx(4096)  # the final norm's weight is the embedding side's extra `hidden`
    assert memory.params_per_gpu(LLAMA8, 1, 2, stage=last).other >= table


def test_kv_bytes_per_token_count_only_the_stages_layers():
    _, last = memory.pipeline_stages(32, 2, (22, 10))
    assert memory.kv_bytes_per_token(LLAMA8, 1, 2, 2, stage=last) == 10 * 8 * 2 * 128 * 2


# ---- one budget per stage, the fewest blocks for all -------------------------------------------

def settings(**changes) -> engine.EngineSettings:
    server = spec.Server(name="s", **changes)
    a100 = gpus.resolve(spec.GpuGroup(type="A100-80GB"))
    data = spec.FleetSpec.model_validate(fleet([server.model_dump(exclude_defaults=True)]))
    return engine.settings_for(data, data.servers[0], LLAMA8, a100)


def test_uneven_split_binds_on_the_stage_with_the_fewest_blocks():
    s = settings(pipeline_stages=[{"layers": 22}, {"layers": 10}])
    b = budget.compute(LLAMA8, s, 80 << 30)
    first, second = b.stages
    assert first.kv_tokens < second.kv_tokens  # 22 layers per token against 10
    assert b.kv_tokens == first.kv_tokens and b.stage.index == 0
    assert b.weights == first.weights > second.weights


def test_only_the_last_stage_warms_up_the_sampler():
    b = budget.compute(LLAMA8, settings(pipeline_parallel_size=2), 80 << 30)
    assert b.stages[0].sampler_warmup == 0 and b.stages[1].sampler_warmup > 0


def test_stages_on_different_gpus_take_each_gpus_memory():
    s = settings(pipeline_stages=[{"layers": 22}, {"layers": 10}])
    big, small = (gpus.resolve(spec.GpuGroup(type=t)) for t in ("A100-80GB", "A100-40GB"))
    b = budget.compute(LLAMA8, s, big.total_bytes, (big, small))
    assert [st.total for st in b.stages] == [big.total_bytes, small.total_bytes]
    assert [st.stage_gpu for st in b.stages] == ["A100-80GB", "A100-40GB"]
    assert b.kv_tokens == min(st.kv_tokens for st in b.stages)


# ---- fleets: placement order, findings, compile -------------------------------------------------

MIXED = fleet([{"name": "big", "pipeline_stages": [{"layers": 22, "gpu_type": "A100-80GB"},
                                                   {"layers": 10, "gpu_type": "A100-40GB"}]}],
              gpus_=[{"type": "A100-40GB", "count": 1}, {"type": "A100-80GB", "count": 1}])


def test_mixed_stages_are_placed_in_rank_order():
    p = plan(MIXED)
    assert p.fits and p.errors == []
    replica = p.servers[0].replicas[0]
    assert replica.gpus == (1, 0)  # the 80 GB card (id 1) runs stage 0
    assert replica.gpu_type == "A100-80GB+A100-40GB"
    stages = replica.to_json()["per_gpu"]["pipeline_stages"]
    assert [(st["layers"], st["gpu_type"]) for st in stages] == [(22, "A100-80GB"), (10, "A100-40GB")]


def test_mixed_stages_compile_to_the_layer_split_and_device_order():
    data = spec.FleetSpec.model_validate(MIXED)
    env = vllm_args.launch_env(data, data.servers[0], (1, 0))
    assert env["VLLM_PP_LAYER_PARTITION"] == "22,10" and env["CUDA_VISIBLE_DEVICES"] == "1,0"


def test_mixed_stages_without_enough_of_one_type_say_which():
    data = {**MIXED, "gpus": [{"type": "A100-80GB", "count": 2}, {"type": "A100-40GB", "count": 1}],
            "servers": [{**MIXED["servers"][0], "replicas": 2}]}
    p = plan(data)
    [problem] = [f for f in p.findings if f.code == "not-enough-gpus"]
    assert "1 A100-40GB GPU(s) (0 left)" in problem.message


def test_a_split_that_does_not_add_up_is_refused_like_vllm():
    p = plan(fleet([{"name": "s", "pipeline_stages": [{"layers": 20}, {"layers": 10}]}]))
    [problem] = [f for f in p.findings if f.code == "layer-split-does-not-add-up"]
    assert "30 layers" in problem.message and "has 32" in problem.message and not p.fits


def test_mixed_stages_in_containers_are_warned():
    p = plan({**MIXED, "runtime": {"vllm_version": "0.19.0", "target": "docker"}})
    assert any(f.code == "mixed-stage-gpus-in-container" for f in p.findings)


@pytest.mark.parametrize(("server", "message"), [
    ({"pipeline_parallel_size": 3, "pipeline_stages": [{"layers": 16}, {"layers": 16}]}, "lists 2 pipeline_stages"),
    ({"pipeline_stages": [{"layers": 16}, {"layers": 16}], "env": {"VLLM_PP_LAYER_PARTITION": "16,16"}},
     "sets the layer split twice"),
    ({"gpu_type": "L4", "pipeline_stages": [{"layers": 16, "gpu_type": "T4"}, {"layers": 16}]}, "pins gpu_type L4"),
    ({"data_parallel_size": 64, "tensor_parallel_size": 32}, "would span 2,048 GPUs"),
    ({"pipeline_stages": [{"layers": 16, "gpu_type": "T4"}, {"layers": 16}]}, "some pipeline_stages"),
])
def test_impossible_shapes_are_spec_errors(server, message):
    with pytest.raises(ValueError, match=message):
        spec.Server(name="s", **server)


def test_stages_set_pipeline_parallel_size():
    server = spec.Server(name="s", pipeline_stages=[{"layers": 10}, {"layers": 11}, {"layers": 11}])
    assert server.pipeline_parallel_size == 3 and server.layer_partition == (10, 11, 11)


# ---- data and expert parallel -------------------------------------------------------------------

def test_data_parallel_ranks_multiply_the_gpus_not_the_budget():
    p = plan(fleet([{"name": "s", "data_parallel_size": 2}]))
    replica = p.servers[0].replicas[0]
    assert replica.gpus == (0, 1)
    alone = plan(fleet([{"name": "s"}])).servers[0].replicas[0]
    assert replica.budget.kv_tokens == alone.budget.kv_tokens  # each rank its own KV cache
    assert replica.to_json()["max_concurrency_all_ranks"] == pytest.approx(2 * alone.budget.max_concurrency, abs=0.02)


def test_data_and_expert_parallel_flags_compile_and_need_0_8():
    data = spec.FleetSpec.model_validate(fleet([{"name": "s", "data_parallel_size": 2, "expert_parallel": True}],
                                               model="mistralai/Mixtral-8x7B-Instruct-v0.1",
                                               gpus_="2x H100-80GB"))
    argv = vllm_args.render_flags(vllm_args.engine_settings(data, data.servers[0], host="h", port=1, adapters=()))
    assert argv[argv.index("--data-parallel-size") + 1] == "2" and "--enable-expert-parallel" in argv
    old = spec.FleetSpec.model_validate({**data.model_dump(exclude_defaults=True),
                                         "runtime": {"vllm_version": "0.7.3"}})
    codes = [d.code for d in vllm_args.check_server(old, old.servers[0])]
    assert codes.count("flag-not-in-release") == 2


EXPERT = 3 * 4096 * 14336  # one Mixtral expert: w1, w3, w2


@pytest.mark.parametrize(("tp", "dp", "ep", "experts_per_gpu"), [
    (1, 1, False, 8.0),
    (2, 1, False, 4.0),       # every expert sliced in two
    (2, 1, True, 4.0),        # four whole experts each: the same bytes, different shapes
    (1, 2, False, 4.0),       # MoE layers are sliced over data x tensor parallel even without EP
    (1, 3, True, 3.0),        # 8 experts over 3 ranks: 3, 3, 2 — the busiest holds 3
    (1, 1, True, 8.0),        # one rank: vLLM ignores expert parallel
])
def test_routed_experts_per_gpu(tp, dp, ep, experts_per_gpu):
    shard = memory.ExpertShard.of(tp, dp, ep)
    split = memory.params_per_gpu(MIXTRAL, tp, 1, shard=shard)
    assert split.experts / (32 * memory._layer_scale(MIXTRAL)) == pytest.approx(experts_per_gpu * EXPERT)


def test_attention_stays_tensor_parallel_under_data_parallel():
    plain = memory.params_per_gpu(MIXTRAL, 1, 1)
    dp2 = memory.params_per_gpu(MIXTRAL, 1, 1, shard=memory.ExpertShard.of(1, 2))
    assert dp2.attention == plain.attention and dp2.experts == pytest.approx(plain.experts / 2)


def test_deepseek_shared_experts_are_not_spread_by_expert_parallel():
    plain = memory.params_per_gpu(DSV2, 2, 1)
    ep = memory.params_per_gpu(DSV2, 2, 1, shard=memory.ExpertShard.of(2, 1, True))
    assert ep.shared_experts == plain.shared_experts and ep.experts == pytest.approx(plain.experts)


def test_mxfp4_padding_uses_the_whole_expert_under_expert_parallel():
    hopper = (9, 0)
    # gpt-oss-20b: intermediate 2880; tp 4 slices it to 720, which Hopper's Triton kernel rounds to 768.
    sliced = memory.mxfp4_expert_padding(GPT_OSS, 4, hopper, "mxfp4")
    whole = memory.mxfp4_expert_padding(GPT_OSS, 4, hopper, "mxfp4", shard=memory.ExpertShard.of(4, 1, True))
    assert sliced == pytest.approx(768 / 720) and whole == pytest.approx(1.0)


def test_moe_lora_buffers_hold_local_experts_at_the_moe_layers_width():
    args = (MIXTRAL, 2, 1, 4, 16, 2, ["w1", "w2", "w3"])
    sliced = memory.lora_bytes(*args)
    whole = memory.lora_bytes(*args, shard=memory.ExpertShard.of(2, 1, True))
    # per layer per slot per rank: sliced 8 x (3H + 3I/2), whole 4 x (3H + 3I)
    hidden, inter = 4096, 14336
    assert whole / sliced == pytest.approx(4 * (3 * hidden + 3 * inter) / (8 * (3 * hidden + 3 * inter / 2)),
                                           rel=1e-3)


def test_expert_parallel_on_a_dense_model_is_warned():
    p = plan(fleet([{"name": "s", "tensor_parallel_size": 2, "expert_parallel": True}]))
    assert any(f.code == "expert-parallel-without-experts" for f in p.findings)


def test_fully_sharded_moe_lora_with_expert_parallel_is_refused_like_vllm():
    server = {"name": "s", "tensor_parallel_size": 2, "expert_parallel": True,
              "lora": {"max_loras": 2, "fully_sharded": True}}
    p = plan(fleet([server], model="mistralai/Mixtral-8x7B-Instruct-v0.1", gpus_="2x H100-80GB",
                   vllm_version="0.33.0"))
    assert any(f.code == "fully-sharded-lora-with-expert-parallel" for f in p.errors)


def test_a_thousand_stages_cost_a_handful_of_budgets(monkeypatch):
    calls = []
    real = budget._stage_budget
    monkeypatch.setattr(budget, "_stage_budget", lambda *a: calls.append(a) or real(*a))
    s = settings(pipeline_parallel_size=1024)
    b = budget.compute(LLAMA8, s, 80 << 30)
    assert len(b.stages) == 1024 and len(calls) <= 4  # first, last, and the middle shapes


def test_a_split_that_does_not_add_up_is_planned_as_the_default():
    s = settings(pipeline_stages=[{"layers": 20}, {"layers": 10}])
    assert [st.stage.layers for st in budget.compute(LLAMA8, s, 80 << 30).stages] == [16, 16]


@pytest.mark.parametrize("word", ["--speculative-config={\"method\": \"ngram\"}", "--cpu_offload_gb=4",
                                  "--enable-eplb", "--limit-mm-per-prompt={\"image\": 2}"])
def test_extra_args_that_change_memory_the_plan_does_not_model_are_said(word):
    p = plan(fleet([{"name": "s", "extra_args": [word]}]))
    [found] = [f for f in p.findings if f.code == "extra-arg-not-modelled"]
    assert found.path == "servers[0].extra_args[0]" and "does not model" in found.message


def test_a_block_size_in_extra_args_is_planned_with():
    small, large = (plan(fleet([{"name": "s", "extra_args": ["--block-size", str(b)]}])).servers[0].replicas[0].budget
                    for b in (16, 128))
    assert small.kv_tokens % 16 == 0 and large.kv_tokens % 128 == 0 and large.kv_tokens <= small.kv_tokens
