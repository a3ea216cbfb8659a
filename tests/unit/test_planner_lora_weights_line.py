"""Which vLLM memory line holds the LoRA buffers, and the planner's figure compared with it (issue 18).

Values come from vLLM's released wheels (read 2026-12-07), not from any held-out log:
- V0 GPUModelRunnerBase.load_model (vllm/worker/model_runner.py) builds LRUCacheWorkerLoRAManager and
  calls create_lora_manager inside `with DeviceMemoryProfiler(self.device) as m` from 0.8.0 (@0.8.0,
  0.8.1, 0.8.2, 0.8.5.post1: "Model loading took %.4f GB and %.6f seconds"), after it before
  (@0.6.3.post1 - 0.7.3: "Loading model weights took %.4f GB").
- V1 GPUModelRunner.load_model (vllm/v1/worker/gpu_model_runner.py) calls load_lora_model inside its
  DeviceMemoryProfiler block (@0.7.3, 0.8.0, 0.8.5.post1, 0.9.2, 0.10.1, 0.11.0).
- V0 0.7.0-0.7.3 memory_profiling (vllm/utils.py): weights_memory is the weights alone,
  torch_peak_increase starts after the LoRA buffers exist, non_torch is cuda − torch reserved, so no
  term holds them and the KV cache is sized without them.
- Buffer shapes: vllm/lora/layers.py create_lora_weights @0.8.5.post1 (max_loras slots, lora_dtype =
  the model dtype by default, lora_extra_vocab_size 256, lora_vocab_padding_size 256).
"""

from __future__ import annotations

import pytest

from fleetspec.catalog import models as catalog_models
from fleetspec.planner import budget, log_score, memory, report, startup_log
from fleetspec.spec import models as spec_models

GIB = 1 << 30
LLAMA_3B = "meta-llama/Llama-3.2-3B-Instruct"


def _facts(model_id: str):
    return catalog_models.resolve(spec_models.BaseModelSpec.model_validate({"id": model_id}))


def test_lora_buffer_bytes_match_vllm_085_shapes():
    # Llama-3.2-3B (hidden 3072, intermediate 8192, 28 layers, 24 q / 8 kv heads of 128, vocab 128256),
    # tp 1, max_loras 1, max_lora_rank 64, 2-byte lora_dtype, vLLM 0.8.5 shapes per slot:
    # qkv_proj (MergedQKVParallelLinearWithLoRA): A 3 x [64, 3072], B [3072, 64] + 2 x [1024, 64]
    # o_proj (RowParallelLinearWithLoRA): A [64, 3072], B [3072, 64]
    # gate_up_proj (MergedColumnParallelLinearWithLoRA): A 2 x [64, 3072], B 2 x [8192, 64]
    # down_proj: A [64, 8192], B [3072, 64]
    rank = 64
    per_layer = rank * ((3 * 3072 + 3072 + 2 * 1024) + (3072 + 3072) + (2 * 3072 + 2 * 8192) + (8192 + 3072))
    # VocabParallelEmbeddingWithLoRA: embeddings_tensors [256, 3072], lora_a [128256 + 256, 64], lora_b [3072, 64]
    embed = 256 * 3072 + (128256 + 256) * rank + 3072 * rank
    # LogitsProcessorWithLoRA: lora_a [64, 3072], lora_b [ceil(128256 / 256) * 256, 64], embeddings_tensors [256, 3072]
    head = rank * 3072 + 128256 * rank + 256 * 3072
    expected = 2 * (28 * per_layer + embed + head)
    assert expected == 231_309_312
    assert memory.lora_bytes(_facts(LLAMA_3B), 1, 1, 1, rank, 2, vllm_version="0.8.5") == expected
    # From 0.12 there is no extra vocabulary (LoRAConfig.lora_extra_vocab_size removed): rank-sized terms only.
    assert memory.lora_bytes(_facts(LLAMA_3B), 1, 1, 1, rank, 2, vllm_version="0.33.0") == \
        2 * rank * (28 * per_layer // rank + 2 * (128256 + 3072))


@pytest.mark.parametrize(("version", "v0", "in_line", "in_kv"), [
    ("0.6.6", True, False, True),    # after the profiler; 0.6.6's non_torch_increase still holds them
    ("0.7.1", True, False, False),   # after the profiler, and in no memory_profiling term
    ("0.7.3", True, False, False),
    ("0.8.0", True, True, True),     # inside DeviceMemoryProfiler: model_memory_usage holds them
    ("0.8.5", True, True, True),
    ("0.8.5", False, True, True),    # V1: load_lora_model inside the block
    ("0.19.0", False, True, True),
])
def test_version_switch(version, v0, in_line, in_kv):
    assert memory.lora_in_weights_line(version, v0) is in_line
    assert memory.lora_in_kv_budget(version, v0) is in_kv


def _budget(version: str, lora: bool, gpu: str = "T4") -> budget.GpuBudget:
    server = {"name": "s", "max_num_seqs": 160, "max_num_batched_tokens": 2048, "gpu_memory_utilization": 0.6}
    if lora:
        server["lora"] = {"max_loras": 1, "max_lora_rank": 64}
    spec = spec_models.FleetSpec.model_validate({
        "name": "lora-line",
        "base_model": {"id": LLAMA_3B, "dtype": "float16", "max_model_len": 2048},
        "gpus": [{"type": gpu, "count": 1}],
        "servers": [server],
        "runtime": {"vllm_version": version},
    })
    return report.plan_fleet(spec).servers[0].replicas[0].budget


def test_v0_08_logs_lora_in_the_weights_line_and_budgets_it_once():
    plain, with_lora = _budget("0.8.5", False), _budget("0.8.5", True)  # T4: V0 on 0.8.x
    assert with_lora.lora > 0 and with_lora.lora_in_budget
    assert with_lora.weights == plain.weights
    assert with_lora.weights_line == with_lora.weights + with_lora.lora
    assert plain.weights_line == plain.weights
    # The LoRA term is taken off the KV budget once, not again through the weights line.
    assert plain.kv_cache - with_lora.kv_cache == with_lora.lora
    assert [t.term for t in with_lora.terms].count("lora") == 1
    assert "Model loading took" in next(t.source for t in with_lora.terms if t.term == "lora")


def test_v0_07_logs_weights_alone_and_sizes_kv_without_lora():
    plain, with_lora = _budget("0.7.3", False), _budget("0.7.3", True)
    assert with_lora.weights_line == with_lora.weights
    assert not with_lora.lora_in_budget
    assert with_lora.kv_cache == plain.kv_cache
    # The buffers still occupy the GPU, beyond the budget (beside the graphs, outside it before 0.21).
    assert not with_lora.cudagraph_in_budget
    assert with_lora.resident_outside == with_lora.cudagraph + with_lora.lora


_V085_LOG = (
    "INFO 05-12 [llm_engine.py:240] Initializing a V0 LLM engine (v0.8.5.post1) with config: "
    "model='unsloth/Llama-3.2-3B-Instruct', dtype=torch.float16, max_seq_len=2048, tensor_parallel_size=1, "
    "pipeline_parallel_size=1, quantization=None, enforce_eager=False, kv_cache_dtype=auto, \n"
    "INFO 05-12 [model_runner.py:1140] Model loading took {weights:.4f} GiB and 2.8 seconds\n"
)


def test_scorer_compares_the_weights_line_figure():
    case = {"id": "synthetic", "gpu": "T4", "model": LLAMA_3B, "max_num_seqs": 160,
            "max_num_batched_tokens": 2048, "gpu_memory_utilization": 0.6, "enable_lora": True,
            "max_lora_rank": 64}
    b = _budget("0.8.5", True)
    logged = round(b.weights_line / GIB, 4)
    scored = log_score.score(case, _V085_LOG.format(weights=logged))
    assert scored.errors["weights_gib"] == pytest.approx((b.weights_line / GIB - logged) / logged)
    assert abs(scored.errors["weights_gib"]) < 1e-4
    # Without enable_lora the same line is planned as the weights alone.
    bare = log_score.score({k: v for k, v in case.items() if k not in ("enable_lora", "max_lora_rank")},
                           _V085_LOG.format(weights=logged))
    assert bare.errors["weights_gib"] == pytest.approx((b.weights / GIB - logged) / logged)


def test_fleet_for_reads_the_lora_keys():
    facts = startup_log.parse(_V085_LOG.format(weights=6.0))
    fleet = log_score.fleet_for({"gpu": "T4", "model": LLAMA_3B, "enable_lora": True, "max_lora_rank": 32}, facts)
    assert fleet.servers[0].lora is not None
    assert (fleet.servers[0].lora.max_loras, fleet.servers[0].lora.max_lora_rank) == (1, 32)
    assert log_score.fleet_for({"gpu": "T4", "model": LLAMA_3B}, facts).servers[0].lora is None
