"""Prometheus text for the sim's /metrics: vLLM's metric names, plus two sim-only families.

`vllm:lora_requests_info` follows vllm/v1/metrics/loggers.py: a gauge whose value is the current
time and whose labels carry `max_lora` and the comma-joined names of adapters with waiting and
running requests (only present when LoRA is enabled). As in vLLM, every label set ever seen stays a
series with the time it was last current, so readers take the series with the largest value.
The `fleetspec_sim_*` families expose what real vLLM hides (which adapter ids sit in the CPU cache
and GPU slots) so tests can watch the LRU.
"""

from __future__ import annotations

from fleetspec.sim import engine

# vllm:request_success_total has a series for each of these from the start (v1/metrics/loggers.py).
FINISHED_REASONS = ("stop", "length", "abort", "error", "repetition")


def _labels(pairs: dict[str, str]) -> str:
    def escape(value: str) -> str:
        return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')

    return "{" + ",".join(f'{k}="{escape(str(v))}"' for k, v in pairs.items()) + "}"


def _family(lines: list[str], name: str, kind: str, doc: str, samples: list[tuple[dict, float]]) -> None:
    lines.append(f"# HELP {name} {doc}")
    lines.append(f"# TYPE {name} {kind}")
    sample_name = f"{name}_total" if kind == "counter" else name
    lines.extend(f"{sample_name}{_labels(labels)} {float(value)!r}" for labels, value in samples)


def render(snap: engine.Snapshot, model_name: str, max_loras: int, lora_enabled: bool) -> str:
    base = {"engine": "0", "model_name": model_name}
    stats = snap.stats
    lines: list[str] = []
    _family(lines, "vllm:num_requests_running", "gauge", "Number of requests in model execution batches.",
            [(base, snap.running_requests)])
    _family(lines, "vllm:num_requests_waiting", "gauge", "Number of requests waiting to be processed.",
            [(base, snap.waiting_requests)])
    if lora_enabled:
        series = [({"max_lora": str(max_loras), "running_lora_adapters": running, "waiting_lora_adapters": waiting},
                   stamp) for (running, waiting), stamp in snap.lora_info.items()]
        _family(lines, "vllm:lora_requests_info", "gauge", "Running stats on lora requests.", series)
    _family(lines, "vllm:request_success", "counter", "Count of successfully processed requests.",
            [({**base, "finished_reason": reason}, stats.finished[reason]) for reason in FINISHED_REASONS])
    _family(lines, "vllm:prompt_tokens", "counter", "Number of prefill tokens processed.",
            [(base, stats.prompt_tokens)])
    _family(lines, "vllm:generation_tokens", "counter", "Number of generation tokens processed.",
            [(base, stats.generation_tokens)])
    _family(lines, "fleetspec_sim_lora_requests", "counter", "Requests served per adapter (sim only).",
            [({"lora_name": name}, count) for name, count in sorted(stats.lora_requests.items())])
    resident = [({"lora_name": r.name, "lora_int_id": str(r.int_id), "tier": "cpu"}, 1) for r in snap.cpu]
    resident += [({"lora_name": r.name, "lora_int_id": str(r.int_id), "tier": "gpu"}, 1) for r in snap.gpu]
    _family(lines, "fleetspec_sim_lora_resident", "gauge",
            "Adapter ids held in the CPU cache and in GPU slots, least recently used first (sim only).", resident)
    return "\n".join(lines) + "\n"
