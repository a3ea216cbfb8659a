"""Huge and boundary numbers in every numeric field: each pure stage (load, validate, plan, compile)
returns a result or a diagnostic, never an internal error and never a hang (issue 15).

Each stage runs under a generous deadline (an alarm): it is there to catch hangs and runaway memory,
not to measure speed (bench/bench_hostile.py does that).
"""

from __future__ import annotations

import contextlib
import copy
import math
import signal

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fleetspec import errors
from fleetspec.compile import slots, targets
from fleetspec.spec import loading, models
from fleetspec.validation import checks

STAGE_DEADLINE_S = 30

CATALOG_FLEET = {
    "name": "n",
    "base_model": {
        "id": "TinyLlama/TinyLlama-1.1B-Chat-v1.0",
        "max_model_len": 2048,
        "quantization_group_size": 128,
    },
    "gpus": [{"type": "L4", "count": 2}],
    "servers": [
        {
            "name": "main",
            "replicas": 1,
            "tensor_parallel_size": 1,
            "pipeline_parallel_size": 1,
            "gpu_memory_utilization": 0.9,
            "max_model_len": 2048,
            "max_num_seqs": 16,
            "max_num_batched_tokens": 4096,
            "startup_timeout_s": 600,
            "port": 9000,
            "lora": {"max_loras": 2, "max_cpu_loras": 4, "max_lora_rank": 16},
        }
    ],
    "specialists": [
        {
            "name": "a",
            "version": "1",
            "path": "/adapters/a",
            "rank": 8,
            "alpha": 16,
            "priority": 1,
            "versions": [{"version": "2", "path": "/adapters/a2", "rank": 8, "alpha": 8}],
        }
    ],
    "routing": {
        "rules": [{"hash_clusters": {"num_clusters": 4, "map": {"c0": "a"}}}, {"specialist_signals": True}],
        "splits": [{"specialist": "a", "weights": {"1": 50, "2": 50}}],
        "embedding": {"threshold": 0.3},
    },
    "runtime": {"engine": "vllm", "base_port": 8000, "router": {"port": 8080}},
}
CUSTOM_FLEET = {
    **CATALOG_FLEET,
    "gpus": [{"memory_gib": 80, "count": 2}],
    "base_model": {
        "id": "org/custom",
        "architecture": {
            "hidden_size": 2048,
            "intermediate_size": 5632,
            "num_hidden_layers": 22,
            "num_attention_heads": 32,
            "num_key_value_heads": 4,
            "head_dim": 64,
            "vocab_size": 32000,
            "num_parameters": 1_100_000_000,
            "sliding_window": 4096,
            "max_position_embeddings": 2048,
            "num_local_experts": 8,
            "num_experts_per_tok": 2,
            "moe_intermediate_size": 1024,
            "kv_lora_rank": 512,
            "q_lora_rank": 1536,
            "qk_rope_head_dim": 64,
            "qk_nope_head_dim": 128,
            "v_head_dim": 128,
        },
    },
}


def numeric_paths(document, path=()):
    """Every path of the document holding a number (bools aside)."""
    if isinstance(document, dict):
        for key, value in document.items():
            yield from numeric_paths(value, (*path, key))
    elif isinstance(document, list):
        for index, value in enumerate(document):
            yield from numeric_paths(value, (*path, index))
    elif isinstance(document, int | float) and not isinstance(document, bool):
        yield path


PATHS = sorted(
    {
        (name, p)
        for name, fleet in (("catalog", CATALOG_FLEET), ("custom", CUSTOM_FLEET))
        for p in numeric_paths(fleet)
    },
    key=str,
)
LIMITS = sorted(
    {models.MAX_REPLICAS, models.MAX_GPUS_PER_GROUP, models.MAX_TOKENS, 65_535, 1_000_000_000, 1_024}
)
VALUES = st.one_of(
    st.sampled_from(
        [
            0,
            -1,
            1,
            2,
            True,
            False,
            0.5,
            2**31,
            2**63,
            10**12,
            10**100,
            -(10**12),
            1e308,
            -1e308,
            math.inf,
            -math.inf,
            math.nan,
        ]
    ),
    st.sampled_from(LIMITS).flatmap(lambda n: st.sampled_from([n - 1, n, n + 1])),
    st.integers(min_value=-(2**70), max_value=2**70),
)


@contextlib.contextmanager
def deadline(stage: str):
    def expired(signum, frame):
        raise AssertionError(f"{stage} ran past {STAGE_DEADLINE_S} s")

    previous = signal.signal(signal.SIGALRM, expired)
    signal.alarm(STAGE_DEADLINE_S)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def set_path(document, path, value) -> None:
    for part in path[:-1]:
        document = document[part]
    document[path[-1]] = value


def diagnostics_are_sentences(exc: errors.SpecError) -> None:
    assert exc.diagnostics and all(isinstance(d, errors.Diagnostic) and d.message for d in exc.diagnostics)


def run_stages(text: str) -> None:
    try:
        with deadline("load"):
            fleet = loading.load_text(text, "fuzz.yaml")
    except errors.SpecError as exc:
        diagnostics_are_sentences(exc)
        return
    with deadline("validate"):
        found = checks.check(fleet)
    assert all(isinstance(d, errors.Diagnostic) for d in found)
    with deadline("plan"):
        plan = checks.plan_loaded(fleet)
    if not plan.fits:
        return
    placed = slots.from_plan(plan)
    for target in ("vllm", "compose", "k8s"):
        try:
            with deadline(f"compile {target}"):
                targets.compile_target(fleet.spec, placed, target, locate=fleet.locate)
        except errors.SpecError as exc:
            diagnostics_are_sentences(exc)


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.sampled_from(PATHS), VALUES), min_size=1, max_size=3))
def test_huge_and_boundary_numbers_in_every_numeric_field(changes):
    base = {"catalog": CATALOG_FLEET, "custom": CUSTOM_FLEET}[changes[0][0][0]]
    document = copy.deepcopy(base)
    for (name, path), value in changes:
        if name == changes[0][0][0]:
            set_path(document, path, value)
    run_stages(yaml.safe_dump(document, sort_keys=False))


def test_the_fleets_the_property_starts_from_are_valid_and_plan():
    for document in (CATALOG_FLEET, CUSTOM_FLEET):
        fleet = loading.load_text(yaml.safe_dump(document, sort_keys=False))
        assert not [d for d in checks.check(fleet) if d.is_error]
        assert checks.plan_loaded(fleet).fits
    assert len(PATHS) > 40  # every numeric field of both fleets is a target
