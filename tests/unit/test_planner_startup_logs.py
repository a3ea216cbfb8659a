"""The startup-log parser and scoring harness, on logs written in each vLLM release's own format.

The lines below follow the format strings of the log calls cited in fleetspec/planner/startup_log.py
(V0: vllm/worker/model_runner.py, vllm/worker/worker.py, vllm/executor/; V1 ≤ 0.11 and 0.33:
vllm/v1/worker/gpu_model_runner.py, gpu_worker.py, vllm/v1/core/kv_cache_utils.py). The numbers of
LLAMA_V1_019 are those of the public vLLM 0.19.0 log of tests/data/calibration.yaml case
meta-llama-llama-3-1-8b--h100-80gb--tp1pp1dp1--32768.
"""

from __future__ import annotations

import importlib.util
import pathlib

import pytest

from fleetspec.planner import log_score, startup_log

ROOT = pathlib.Path(__file__).resolve().parents[2]

V0_064 = """\
INFO 11-20 10:02:11 llm_engine.py:249] Initializing an LLM engine (v0.6.4.post1) with config: model='meta-llama/Llama-3.1-8B-Instruct', speculative_config=None, tokenizer='meta-llama/Llama-3.1-8B-Instruct', skip_tokenizer_init=False, dtype=torch.bfloat16, max_seq_len=20000, download_dir=None, load_format=LoadFormat.AUTO, tensor_parallel_size=1, pipeline_parallel_size=1, disable_custom_all_reduce=False, quantization=None, enforce_eager=False, kv_cache_dtype=auto, quantization_param_path=None, device_config=cuda, seed=0
INFO 11-20 10:02:40 model_runner.py:1077] Loading model weights took 14.9888 GB
INFO 11-20 10:02:42 worker.py:232] Memory profiling results: total_gpu_memory=23.69GiB initial_memory_usage=15.25GiB peak_torch_memory=16.19GiB memory_usage_post_profile=15.27GiB non_torch_memory=0.26GiB kv_cache_size=3.80GiB gpu_memory_utilization=0.85
INFO 11-20 10:02:42 gpu_executor.py:113] # GPU blocks: 1952, # CPU blocks: 2048
INFO 11-20 10:02:42 gpu_executor.py:117] Maximum concurrency for 20000 tokens per request: 1.56x
"""

V0_073_SUMMARY = """\
INFO 02-20 08:00:00 llm_engine.py:232] Initializing an LLM engine (v0.7.3) with config: model='Qwen/Qwen2.5-7B-Instruct', dtype=torch.bfloat16, max_seq_len=8192, tensor_parallel_size=2, pipeline_parallel_size=1, quantization=None, enforce_eager=True, kv_cache_dtype=auto
(VllmWorkerProcess pid=77) INFO 02-20 08:00:30 model_runner.py:1115] Loading model weights took 7.1217 GB
INFO 02-20 08:00:30 model_runner.py:1115] Loading model weights took 7.1250 GB
INFO 02-20 08:00:33 worker.py:267] Memory profiling takes 2.10 seconds
the current vLLM instance can use total_gpu_memory (79.19GiB) x gpu_memory_utilization (0.90) = 71.27GiB
model weights take 7.12GiB; non_torch_memory takes 1.92GiB; PyTorch activation peak memory takes 1.44GiB; the rest of the memory reserved for KV Cache is 60.79GiB.
INFO 02-20 08:00:33 executor_base.py:111] # cuda blocks: 142284, # CPU blocks: 9362
"""

V1_011 = """\
INFO 10-05 12:00:00 [core.py:77] Initializing a V1 LLM engine (v0.11.0) with config: model='Qwen/Qwen3-8B', speculative_config=None, tokenizer='Qwen/Qwen3-8B', dtype=torch.bfloat16, max_seq_len=8192, tensor_parallel_size=1, pipeline_parallel_size=1, data_parallel_size=1, quantization=None, enforce_eager=False, kv_cache_dtype=auto, device_config=cuda
(EngineCore_DP0 pid=12) INFO 10-05 12:00:40 [gpu_model_runner.py:2653] Model loading took 15.2683 GiB and 6.123456 seconds
(EngineCore_DP0 pid=12) INFO 10-05 12:00:52 [gpu_worker.py:298] Available KV cache memory: 57.45 GiB
(EngineCore_DP0 pid=12) INFO 10-05 12:00:52 [kv_cache_utils.py:1087] GPU KV cache size: 418,432 tokens
(EngineCore_DP0 pid=12) INFO 10-05 12:00:52 [kv_cache_utils.py:1091] Maximum concurrency for 8,192 tokens per request: 51.08x
(EngineCore_DP0 pid=12) INFO 10-05 12:01:10 [gpu_model_runner.py:3480] Graph capturing finished in 18 secs, took 0.84 GiB
"""

LLAMA_V1_019 = """\
INFO 04-01 09:00:00 [core.py:90] Initializing a V1 LLM engine (v0.19.0) with config: model='meta-llama/Llama-3.1-8B-Instruct', dtype=torch.bfloat16, max_seq_len=32768, tensor_parallel_size=1, pipeline_parallel_size=1, quantization=None, enforce_eager=False, kv_cache_dtype=auto
(EngineCore pid=9) INFO 04-01 09:00:30 [gpu_model_runner.py:4100] Model loading took 14.99 GiB memory and 5.000000 seconds
(EngineCore pid=9) INFO 04-01 09:00:45 [gpu_worker.py:760] Available KV cache memory: 58.11 GiB
(EngineCore pid=9) INFO 04-01 09:00:45 [kv_cache_utils.py:2329] GPU KV cache size: 476,016 tokens, Maximum concurrency for 32,768 tokens per request: 14.53x
"""

V1_033_SAMPLER_OOM = """\
INFO 11-02 01:00:00 [core.py:134] Initializing a V1 LLM engine (v0.33.0) with config: model='google/gemma-2-9b-it', dtype=torch.bfloat16, max_seq_len=4096, tensor_parallel_size=1, pipeline_parallel_size=1, quantization=None, enforce_eager=False, kv_cache_dtype=auto
(EngineCore pid=5) INFO 11-02 01:00:30 [gpu_model_runner.py:5150] Model loading took 17.22 GiB memory and 9.100000 seconds
(EngineCore pid=5) INFO 11-02 01:00:41 [gpu_worker.py:760] Available KV cache memory: 20.01 GiB
(EngineCore pid=5) ERROR 11-02 01:01:02 [core.py:700] RuntimeError: CUDA out of memory occurred when warming up sampler with 1024 dummy requests. Please try lowering `max_num_seqs` or `gpu_memory_utilization` when initializing the engine.
"""


def test_v0_logs_weights_in_gib_despite_gb_and_kv_as_blocks():
    facts = startup_log.parse(V0_064)
    assert facts.vllm_version == "0.6.4" and facts.v1_engine is False
    assert facts.weights_gib == pytest.approx(14.9888)
    assert facts.kv_tokens == 1952 * 16
    assert facts.available_kv_gib == pytest.approx(3.80)
    assert facts.max_concurrency == pytest.approx(1.56)
    assert facts.config["max_model_len"] == 20000 and facts.config["dtype"] == "bfloat16"
    assert facts.config["quantization"] == "None" and facts.config["enforce_eager"] is False
    assert facts.failure is None


def test_v0_073_profiler_summary_and_cuda_blocks_first_worker_wins():
    facts = startup_log.parse(V0_073_SUMMARY)
    assert facts.vllm_version == "0.7.3"
    assert facts.weights_gib == pytest.approx(7.1217)  # the first line in the log
    assert facts.available_kv_gib == pytest.approx(60.79)
    assert facts.activation_gib == pytest.approx(1.44)
    assert facts.kv_tokens == 142284 * 16
    assert facts.config["tensor_parallel_size"] == 2 and facts.config["enforce_eager"] is True


def test_v1_two_line_kv_size_of_0_11():
    facts = startup_log.parse(V1_011)
    assert facts.vllm_version == "0.11.0" and facts.v1_engine is True
    assert facts.weights_gib == pytest.approx(15.2683)
    assert facts.available_kv_gib == pytest.approx(57.45)
    assert facts.kv_tokens == 418432 and facts.max_concurrency == pytest.approx(51.08)
    assert facts.cudagraph_gib == pytest.approx(0.84)
    assert facts.measured() == {
        "weights_gib": 15.2683,
        "kv_cache_gib": 57.45,
        "kv_tokens": 418432,
        "cudagraph_gib": 0.84,
    }


def test_v1_one_line_kv_size_and_a_sampler_warmup_failure():
    one_line = startup_log.parse(LLAMA_V1_019)
    assert one_line.kv_tokens == 476016 and one_line.max_concurrency == pytest.approx(14.53)
    failed = startup_log.parse(V1_033_SAMPLER_OOM)
    assert failed.failure == "sampler-warmup"  # not the generic "cuda-oom"
    assert startup_log.parse("torch.OutOfMemoryError: CUDA out of memory.").failure == "cuda-oom"
    assert startup_log.parse("nothing here") == startup_log.StartupFacts()


def test_scoring_a_logged_startup_reads_the_setup_from_the_log():
    scored = log_score.score(
        {"id": "llama", "gpu": "H100-80GB", "gpu_memory_utilization": 0.95}, LLAMA_V1_019
    )
    assert scored.unmodelled is None and scored.plan_fits
    assert abs(scored.errors["weights_gib"]) < 0.01
    assert abs(scored.errors["kv_tokens"]) < 0.02


def test_a_model_outside_the_catalog_is_a_counted_miss_not_a_crash():
    text = V1_011.replace("Qwen/Qwen3-8B", "someone/unknown-model")
    scored = log_score.score({"id": "unknown", "gpu": "H100-80GB"}, text)
    assert scored.unmodelled and scored.errors == {}
    assert log_score.summary([scored])["unmodelled"] == 1


def test_summary_median_p90_and_failure_counts():
    rows = [
        log_score.Scored(str(i), {"weights_gib": e, "kv_tokens": -e}, None, True)
        for i, e in enumerate([0.01, 0.02, 0.03, 0.04, 0.05, 0.06, 0.07, 0.08, 0.09, 0.10])
    ]
    rows.append(log_score.Scored("oom", {}, "sampler-warmup", False))
    rows.append(log_score.Scored("alarm", {}, None, False))
    out = log_score.summary(rows)
    assert out["weights_gib"]["median"] == pytest.approx(0.055) and out["weights_gib"][
        "p90"
    ] == pytest.approx(0.09)
    assert out["failures"] == {"logged": 1, "predicted": 1, "false_alarms": 1}


def test_harness_runs_on_a_manifest_of_log_files(tmp_path, capsys):
    (tmp_path / "llama.log").write_text(LLAMA_V1_019, encoding="utf-8")
    (tmp_path / "qwen.log").write_text(V1_011, encoding="utf-8")
    (tmp_path / "m.yaml").write_text(
        "records:\n"
        "  - {id: llama, log: llama.log, gpu: H100-80GB, gpu_memory_utilization: 0.95}\n"
        "  - {id: qwen, log: qwen.log, gpu: H100-80GB}\n",
        encoding="utf-8",
    )
    spec = importlib.util.spec_from_file_location(
        "score_startup_logs", ROOT / "bench" / "score_startup_logs.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.main([str(tmp_path / "m.yaml")]) == 0
    out = capsys.readouterr().out
    assert "| llama |" in out and "| qwen |" in out and '"records": 2' in out


def test_an_unmodelled_record_neither_predicts_its_failure_nor_raises_a_false_alarm():
    failed = log_score.Scored("unknown-oom", {}, "cuda-oom", False, unmodelled="unknown model")
    started = log_score.Scored("unknown-ok", {}, None, False, unmodelled="unknown model")
    assert failed.failure_predicted is False and not started.false_alarm
    assert log_score.summary([failed, started])["failures"] == {"logged": 1, "predicted": 0, "false_alarms": 0}


def test_the_version_of_a_v0_engine_that_names_itself_is_read():
    # vLLM 0.7-0.9 print "a V0 LLM engine" (vllm-project/vllm#15815 quotes 0.7.1).
    facts = startup_log.parse("INFO 03-31 10:00:00 llm_engine.py:232] Initializing a V0 LLM engine (v0.7.1) "
                              "with config: model='Qwen/Qwen2.5-32B-Instruct', tensor_parallel_size=2,")
    assert facts.vllm_version == "0.7.1" and facts.v1_engine is False


def test_the_v0_weights_line_of_0_8_is_read_in_gib():
    # V0 on 0.8.x: "Model loading took 6.2472 GB and 52.3 seconds" (GB printed, 2**30 divided).
    facts = startup_log.parse("INFO 04-01 model_runner.py:1110] Model loading took 6.2472 GB and 52.3 seconds")
    assert facts.weights_gib == pytest.approx(6.2472)
