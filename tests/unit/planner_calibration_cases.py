"""Shared by the calibration test and bench/calibration_table.py: plan one logged vLLM startup."""

from __future__ import annotations

import pathlib

import yaml

from fleetspec.planner import report
from fleetspec.spec import models

DATA = pathlib.Path(__file__).resolve().parents[1] / "data" / "calibration.yaml"
GIB = 1 << 30


def load_cases() -> list[dict]:
    return yaml.safe_load(DATA.read_text(encoding="utf-8"))["cases"]


def fleet_for(case: dict) -> models.FleetSpec:
    gpus = case["tensor_parallel_size"] * case["pipeline_parallel_size"]
    group = {"type": case["gpu"], "count": gpus}
    if "gpu_memory_gib" in case:
        group["memory_gib"] = case["gpu_memory_gib"]
    return models.FleetSpec.model_validate({
        "name": "calibration",
        "base_model": {"id": case["model"], "dtype": case["dtype"], "quantization": case["quantization"],
                       "kv_cache_dtype": case["kv_cache_dtype"], "max_model_len": case["max_model_len"]},
        "gpus": [group],
        "servers": [{"name": "calib", "tensor_parallel_size": case["tensor_parallel_size"],
                     "pipeline_parallel_size": case["pipeline_parallel_size"],
                     "gpu_memory_utilization": case["gpu_memory_utilization"]}],
        "runtime": {"vllm_version": case["vllm_version"]},
    })


def predict(case: dict) -> dict:
    """The planner's numbers for the case's first GPU, in the units vLLM logs."""
    plan = report.plan_fleet(fleet_for(case))
    b = plan.servers[0].replicas[0].budget
    return {
        "weights_gib": b.weights / GIB, "activation_gib": b.activation / GIB, "non_torch_gib": b.non_torch / GIB,
        "cudagraph_estimate_gib": b.cudagraph / GIB, "kv_cache_gib": b.kv_cache / GIB, "kv_tokens": b.kv_tokens,
    }


def errors(case: dict) -> dict:
    """(predicted − logged) / logged for every logged quantity."""
    predicted = predict(case)
    return {k: (predicted[k] - v) / v for k, v in case["logged"].items() if k in predicted and v}
