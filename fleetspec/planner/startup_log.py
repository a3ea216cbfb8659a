"""Read what a vLLM startup log says about memory, for any release from 0.6 (V0 engine) to 0.33.

Pure text in, facts out: the scoring harness (bench/score_startup_logs.py) compares these facts
with the planner's numbers for the same setup. Each pattern cites the log call that prints it;
formats changed across releases, so every pattern accepts each spelling vLLM has used:

- engine config, "Initializing an LLM engine (v0.6.4) with config: model='...', ..." (V0,
  vllm/engine/llm_engine.py) and "Initializing a V1 LLM engine (v0.11.0) with config: ..."
  (vllm/v1/engine/core.py, the string from VllmConfig.__str__ in vllm/config/vllm.py);
- weights: V0 "Loading model weights took 14.9595 GB" (vllm/worker/model_runner.py), V1
  "Model loading took 14.9889 GiB and 4.2 seconds" (≤ 0.11) and "Model loading took 14.99 GiB
  memory and 4.2 seconds" (0.33, vllm/v1/worker/gpu_model_runner.py); with LoRA on, V1's line and
  V0's from 0.8.0 ("Model loading took 6.2472 GB and 2.4 seconds") include the LoRA buffers, built
  inside the same DeviceMemoryProfiler block (overheads.yaml lora; the planner's weights_line);
- KV cache: V0 "# GPU blocks: 27153, # CPU blocks: 2048" (0.6; "# cuda blocks" from 0.7,
  vllm/executor/), V0 0.6.4+ profiler summary "... the rest of the memory reserved for KV Cache is
  54.90GiB" (vllm/worker/worker.py), V1 "Available KV cache memory: 55.64 GiB"
  (vllm/v1/worker/gpu_worker.py), "GPU KV cache size: 455,776 tokens" and "Maximum concurrency
  for 8,192 tokens per request: 55.64x", on one line since 0.2x (vllm/v1/core/kv_cache_utils.py);
- CUDA graphs: "Graph capturing finished in 12 secs, took 0.84 GiB";
- failures, by the step that raised them (see FAILURES).

Multi-GPU logs repeat lines per worker ("(VllmWorker rank=1 pid=…)"); the first occurrence of each
fact is kept, which is rank 0 on the first GPU, as the planner reports.
"""

from __future__ import annotations

import dataclasses
import re

GIB = 1 << 30

_NUMBER = r"([0-9][0-9,]*(?:\.[0-9]+)?)"

# 0.7-0.9 name the engine in the line ("Initializing a V0 LLM engine (v0.7.1)"), as V1 does.
_VERSION = re.compile(r"Initializing an? (?:V[01] )?LLM engine \(v?([0-9]+\.[0-9]+(?:\.[0-9]+)?)[^)]*\)")
_V1_ENGINE = re.compile(r"Initializing a V1 LLM engine|\bV1 LLM engine\b|vllm\.v1\.|\(EngineCore")
_CONFIG = {
    "model": re.compile(r"with config: model='([^']+)'"),
    "dtype": re.compile(r"\bdtype=(?:torch\.)?([a-z0-9_]+)"),
    "max_model_len": re.compile(r"\bmax_seq_len=([0-9]+)"),
    "tensor_parallel_size": re.compile(r"\btensor_parallel_size=([0-9]+)"),
    "pipeline_parallel_size": re.compile(r"\bpipeline_parallel_size=([0-9]+)"),
    "quantization": re.compile(r"\bquantization=([A-Za-z0-9_\-]+)"),
    "enforce_eager": re.compile(r"\benforce_eager=(True|False)"),
    "kv_cache_dtype": re.compile(r"\bkv_cache_dtype=([A-Za-z0-9_]+)"),
}
_WEIGHTS = (
    (re.compile(r"Model loading took " + _NUMBER + r" ?GiB"), GIB),
    # V0 printed GB but divided by 2**30 (model_runner.py: "/ float(2**30)"): it is GiB; from 0.7 its
    # line reads "Model loading took 6.2472 GB and 3.1 seconds".
    (re.compile(r"Loading model weights took " + _NUMBER + r" ?GB"), GIB),
    (re.compile(r"Model loading took " + _NUMBER + r" ?GB\b"), GIB),
)
_AVAILABLE_KV = (
    re.compile(r"Available KV cache memory: " + _NUMBER + r" ?GiB"),
    re.compile(r"the rest of the memory reserved for KV Cache is " + _NUMBER + r" ?GiB"),
    re.compile(r"Memory profiling results: .*?\bkv_cache_size=" + _NUMBER + r" ?GiB"),  # V0 0.6.4
)
# What V1's TopKTopPSampler says at start (v1/sample/ops/topk_topp_sampler.py): whether FlashInfer is
# installed, and whether the sampler was told not to use it.
_FLASHINFER = (
    (re.compile(r"Using FlashInfer for top-p & top-k sampling"), True, None),
    (re.compile(r"FlashInfer is available, but it is not enabled"), True, "0"),
    (re.compile(r"FlashInfer top-p/top-k sampling is available but disabled by default"), True, None),
    (re.compile(r"FlashInfer is not available"), False, None),
)
# Custom all-reduce's start lines name the link between the GPUs (distributed/device_communicators/
# custom_all_reduce.py): no P2P at all, or more than two GPUs that only share PCIe.
_PCIE_ONLY = re.compile(r"Custom allreduce is disabled because\s+(?:your\s+platform\s+lacks\s+GPU\s+P2P\s+capability|"
                        r"it's\s+not\s+supported\s+on\s+more\s+than\s+two\s+PCIe-only\s+GPUs)")  # logs wrap lines
# custom_all_reduce.py (0.10.1): `if not all(in_the_same_node_as(group, source_rank=0))` the group's
# ranks are on different hosts (e.g. Ray over pods), so NCCL talks over the network.
_SPANS_NODES = re.compile(r"Custom\s+allreduce\s+is\s+disabled\s+because\s+this\s+process\s+group\s+spans"
                          r"\s+across\s+nodes")  # logs wrap lines
_KV_TOKENS = re.compile(r"(?:GPU|CUDA|CPU|XPU) KV cache size: " + _NUMBER + r" tokens")
_BLOCKS = re.compile(r"# (?:GPU|cuda|CUDA|gpu) blocks: " + _NUMBER)
_BLOCK_SIZE = re.compile(r"\bblock_size=([0-9]+)")
_CONCURRENCY = re.compile(r"Maximum concurrency for " + _NUMBER + r" tokens per request: " + _NUMBER + r"x")
_GRAPHS = re.compile(r"Graph capturing finished in [0-9.]+ secs?, took " + _NUMBER + r" ?GiB")
_ACTIVATION = re.compile(r"PyTorch activation peak memory takes " + _NUMBER + r" ?GiB")

# (what failed, a phrase vLLM prints there), checked in this order: the specific ones first.
FAILURES = (
    ("sampler-warmup", "CUDA out of memory occurred when warming up sampler"),
    ("no-kv-memory", "No available memory for the cache blocks"),
    ("kv-too-small", "larger than the available KV cache memory"),
    ("kv-too-small", "larger than the maximum number of tokens that can be stored in KV cache"),
    ("startup-free-memory", "is less than desired GPU memory utilization"),
    ("weights-oom", "Failed to load model - not enough GPU memory"),
    ("cuda-oom", "CUDA out of memory"),
    ("cuda-oom", "OutOfMemoryError"),
)


@dataclasses.dataclass(frozen=True)
class StartupFacts:
    vllm_version: str | None = None
    v1_engine: bool | None = None  # None: the log does not say
    config: dict = dataclasses.field(default_factory=dict)  # what the engine config line states
    weights_gib: float | None = None
    available_kv_gib: float | None = None
    kv_tokens: int | None = None
    max_concurrency: float | None = None
    cudagraph_gib: float | None = None
    activation_gib: float | None = None
    failure: str | None = None  # a FAILURES code, None when the log shows none
    flashinfer: bool | None = None  # FlashInfer installed, when the sampler's start line says
    flashinfer_sampler_env: str | None = None  # VLLM_USE_FLASHINFER_SAMPLER as the log implies it
    interconnect: str | None = None  # "pcie" when custom all-reduce says the GPUs only share PCIe,
    # "network" when it says the process group spans nodes
    # The bitsandbytes quantization_config the engine was given, where the log prints it (Unsloth's
    # "vLLM Bitsandbytes config using kwargs = {...}" line before it starts vLLM): its
    # llm_int8_skip_modules and bnb_4bit_use_double_quant size the weights (planner/bnb.py).
    bnb_config: dict | None = None

    def measured(self) -> dict[str, float]:
        """The logged numbers the harness scores, by the names the planner uses."""
        found = {
            "weights_gib": self.weights_gib,
            "kv_cache_gib": self.available_kv_gib,
            "kv_tokens": self.kv_tokens,
            "cudagraph_gib": self.cudagraph_gib,
        }
        return {k: v for k, v in found.items() if v is not None}


def _number(text: str) -> float:
    return float(text.replace(",", ""))


def _first(pattern: re.Pattern, text: str) -> re.Match | None:
    return pattern.search(text)


def parse(text: str) -> StartupFacts:
    """Facts of one startup log; a fact the log does not show stays None."""
    version = _first(_VERSION, text)
    config = {}
    for key, pattern in _CONFIG.items():
        m = _first(pattern, text)
        if m:
            value = m.group(1)
            config[key] = (
                int(value) if value.isdigit() else (value == "True" if value in ("True", "False") else value)
            )
    weights = next((_number(m.group(1)) for p, _ in _WEIGHTS if (m := p.search(text))), None)
    available = next((_number(m.group(1)) for p in _AVAILABLE_KV if (m := p.search(text))), None)
    tokens = _first(_KV_TOKENS, text)
    kv_tokens = int(_number(tokens.group(1))) if tokens else None
    if kv_tokens is None and (blocks := _first(_BLOCKS, text)):
        # V0 logged blocks, not tokens; the config line carries the block size (16 unless set).
        size = _first(_BLOCK_SIZE, text)
        kv_tokens = int(_number(blocks.group(1))) * (int(size.group(1)) if size else 16)
    concurrency = _first(_CONCURRENCY, text)
    graphs = _first(_GRAPHS, text)
    activation = _first(_ACTIVATION, text)
    failure = next((code for code, phrase in FAILURES if phrase in text), None)
    flashinfer = next(((installed, env) for pattern, installed, env in _FLASHINFER if pattern.search(text)),
                      (None, None))
    v1 = True if _V1_ENGINE.search(text) else (False if version else None)
    return StartupFacts(
        vllm_version=version.group(1) if version else None,
        v1_engine=v1,
        config=config,
        weights_gib=weights,
        available_kv_gib=available,
        kv_tokens=kv_tokens,
        max_concurrency=_number(concurrency.group(2)) if concurrency else None,
        cudagraph_gib=_number(graphs.group(1)) if graphs else None,
        activation_gib=_number(activation.group(1)) if activation else None,
        failure=failure,
        flashinfer=flashinfer[0],
        flashinfer_sampler_env=flashinfer[1],
        interconnect="network" if _SPANS_NODES.search(text) else "pcie" if _PCIE_ONLY.search(text) else None,
        bnb_config=bnb_config(text),
    )


_BNB_KWARGS = re.compile(r"Bitsandbytes config using kwargs = (\{[^\n]*\})")


def bnb_config(text: str) -> dict | None:
    """The bitsandbytes config dict a log prints (a Python literal), or None."""
    import ast

    m = _BNB_KWARGS.search(text)
    if not m:
        return None
    try:
        value = ast.literal_eval(m.group(1))
    except (ValueError, SyntaxError):
        return None
    return value if isinstance(value, dict) else None
