"""The shipped fleets: every example and the default fleet.yaml is valid, plans as fitting, and
says what its seed document says."""

from __future__ import annotations

import pathlib

import pytest

from fleetspec.adapters import inspect as adapter_inspect
from fleetspec.planner import report
from fleetspec.spec import loading, models
from fleetspec.validation import checks

ROOT = pathlib.Path(__file__).resolve().parents[2]
EXAMPLES = sorted((ROOT / "examples").glob("*.yaml"))
FLEETS = [*EXAMPLES, ROOT / "fleet.yaml"]
GIB = 1 << 30


def load(name: str) -> loading.LoadedFleet:
    return loading.load_path(ROOT / name)


def plan_of(name: str) -> report.FleetPlan:
    fleet = load(name)
    return report.plan_fleet(fleet.spec, locate=fleet.locate)


def test_every_seed_has_an_example():
    names = {p.name for p in EXAMPLES}
    for seed in ("000-", "001-", "002-", "003-", "004-"):
        assert any(n.startswith(seed) for n in names), f"no example for seed {seed}"
    assert {"001-hi-moe-awq.yaml", "001-hi-moe-bf16-tp2.yaml", "large-mixed-gpus.yaml"} <= names


@pytest.mark.parametrize("path", FLEETS, ids=lambda p: p.name)
def test_fleet_points_editors_at_the_schema(path: pathlib.Path):
    first = path.read_text(encoding="utf-8").splitlines()[0]
    prefix = "# yaml-language-server: $schema="
    assert first.startswith(prefix)
    assert (path.parent / first[len(prefix):]).resolve() == ROOT / "schemas" / "fleet.schema.json"


@pytest.mark.parametrize("path", FLEETS, ids=lambda p: p.name)
def test_fleet_validates_without_any_diagnostic(path: pathlib.Path):
    fleet = loading.load_path(path)
    assert [d.render() for d in checks.check(fleet)] == []


@pytest.mark.parametrize("path", FLEETS, ids=lambda p: p.name)
def test_fleet_plans_as_fitting(path: pathlib.Path):
    plan = plan_of(path.relative_to(ROOT).as_posix())
    assert [f.render() for f in plan.errors] == []
    assert plan.fits
    assert all(r.placed for s in plan.servers for r in s.replicas)


def test_seed_000_hash_clusters_and_cache():
    spec = load("examples/000-ensemble-hash-clusters.yaml").spec
    assert spec.base_model.id == "TinyLlama/TinyLlama-1.1B-Chat-v1.0"
    (rule,) = spec.routing.rules
    assert isinstance(rule, models.HashClusterRule)
    assert rule.hash_clusters.algorithm == "sha1"
    assert rule.hash_clusters.map == {
        "c10": "2025-06-06", "c17": "2025-06-06", "c25": "2025-06-07",
        "c42": "code-specialist-v2", "c88": "code-specialist-v2",
    }
    assert spec.routing.fallback == "base"
    assert spec.servers[0].lora.max_loras == 3
    assert {s.name: s.rank for s in spec.specialists} == {
        "2025-06-06": 64, "2025-06-07": 64, "code-specialist-v2": 64}


def test_seed_001_awq_specialists_and_limits():
    spec = load("examples/001-hi-moe-awq.yaml").spec
    assert (spec.base_model.id, spec.base_model.quantization) == ("Qwen/QwQ-32B-Preview-AWQ", "awq")
    assert [(g.type, g.count) for g in spec.gpus] == [("A100-40GB", 1)]
    lora = spec.servers[0].lora
    assert (lora.max_loras, lora.max_cpu_loras, lora.max_lora_rank) == (16, 32, 64)
    # The seed's "Initial Specialists" table.
    assert {s.name: s.rank for s in spec.specialists} == {
        "python-lora": 32, "cuda-lora": 32, "math-lora": 64, "systems-lora": 32,
        "web-lora": 32, "data-lora": 32, "devops-lora": 16, "docs-lora": 16,
    }
    python = spec.specialist("python-lora")
    assert (python.version, python.previous_version) == ("1.2.0", "1.1.0")
    assert python.path == "/adapters/python-specialist/v1.2.0"
    assert python.keywords == ["python", "pip", "pytest", "django", "flask"]
    assert python.extensions == [".py", ".pyx"]
    assert isinstance(spec.routing.rules[0], models.SpecialistSignalsRule)
    assert spec.routing.splits[0].weights == {"1.2.0": 90, "1.1.0": 10}


def test_seed_001_awq_fits_one_a100_40gb_with_attention_only_lora_slots():
    (server,) = plan_of("examples/001-hi-moe-awq.yaml").servers
    (replica,) = server.replicas
    assert replica.gpus == (0,)
    # 16 slots × rank 64 × 2 bytes × 64 layers × (qkv 3·5120 + 5120 + 2·1024 + o 5120 + 5120).
    assert replica.budget.lora == 16 * 64 * 2 * 64 * 32768 == 4 * GIB
    assert replica.budget.kv_tokens >= 4 * 4096  # room for several full 4K-context requests


def test_seed_001_bf16_variant_uses_two_a100_80gb_with_tensor_parallel():
    spec = load("examples/001-hi-moe-bf16-tp2.yaml").spec
    assert spec.base_model.id == "Qwen/QwQ-32B-Preview"
    assert [(g.type, g.count) for g in spec.gpus] == [("A100-80GB", 2)]
    assert spec.servers[0].tensor_parallel_size == 2
    (replica,) = plan_of("examples/001-hi-moe-bf16-tp2.yaml").servers[0].replicas
    assert replica.gpus == (0, 1)


def test_seed_002_hot_swap_versions():
    spec = load("examples/002-peft-hot-swap.yaml").spec
    medical = spec.specialist("medical")
    assert (medical.version, medical.previous_version, medical.all_versions) == ("v2", "v1", ["v2", "v1"])
    assert medical.version_entry("v1").path == "./adapters/medical_v1"
    assert spec.specialist("general").path == "./adapters/general"
    assert spec.servers[0].lora.max_cpu_loras == 5  # the seed's max_cache_size=5


def test_seed_003_two_servers_on_two_20gb_gpus_for_kubernetes():
    spec = load("examples/003-llama3-multi-adapter.yaml").spec
    assert (spec.runtime.target, spec.runtime.namespace) == ("k8s", "llama3-multi-adapter")
    assert [(g.memory_gib, g.count) for g in spec.gpus] == [(19.5, 2)]
    assert {s.name: s.servers for s in spec.specialists} == {
        "chatbot": ["chat"], "code": ["tasks"], "summarization": ["tasks"]}
    # Seed replicas × OLLAMA_NUM_PARALLEL: chatbot 3×4 + base 1×2 on GPU 0; code 2×3 + summarization 1×2.
    assert [s.max_num_seqs for s in spec.servers] == [14, 8]
    plan = plan_of("examples/003-llama3-multi-adapter.yaml")
    assert sorted(r.gpus for s in plan.servers for r in s.replicas) == [(0,), (1,)]


def test_seed_004_qwen_on_a6000_at_three_quarters():
    spec = load("examples/004-qwen-adapter-swap.yaml").spec
    assert spec.base_model.id == "Qwen/Qwen2.5-14B-Instruct"
    assert spec.gpus[0].type == "A6000"
    assert (spec.servers[0].gpu_memory_utilization, spec.servers[0].tensor_parallel_size) == (0.75, 1)
    assert [s.name for s in spec.specialists] == ["concept", "naming"]


def test_default_fleet_runs_on_the_embedded_default():
    spec = load("fleet.yaml").spec
    assert (spec.runtime.target, spec.runtime.engine) == ("local", "sim")
    assert [g.type for g in spec.gpus] == ["sim"]
    assert spec.runtime.adapter_roots == ["./adapters"]


@pytest.mark.parametrize("name", ["python", "sql", "shell"])
def test_default_fleet_adapters_are_real_and_match_the_spec(name: str):
    fleet = load("fleet.yaml")
    specialist = fleet.spec.specialist(name)
    directory = fleet.resolve_path(specialist.path)
    assert directory.is_relative_to(ROOT / "adapters")
    info = adapter_inspect.inspect(directory)
    assert (info.config_problem, info.weights_problem) == (None, None)
    assert info.config.peft_type == "LORA"
    assert info.config.base_model_name_or_path == fleet.spec.base_model.id
    assert info.max_rank == specialist.rank
    assert (directory / "adapter_model.safetensors").stat().st_size < 100 * 1024
