"""What vLLM really holds in its adapter caches (issue #18 item 7) and the plan's per-term sources.

vLLM 0.32 and 0.33, vllm/entrypoints/openai/models/serving.py (OpenAIServingModels):
unload_lora_adapter deletes the name from `lora_requests` and never calls the engine's remove_lora
(the adapter stays cached until LRU eviction, vllm-project/vllm#54839); load_lora_adapter reuses the
name's lora_int_id only while the name is registered, so a name loaded after an unload, or a new
version loaded before the old one is unloaded, takes another id and another slot."""

from __future__ import annotations

import json
import textwrap

from fleetspec.cli import app
from fleetspec.planner import findings, report
from fleetspec.spec import loading

FLEET = """\
name: demo
base_model: {id: meta-llama/Llama-3.1-8B-Instruct, max_model_len: 8192}
gpus: 1x H100-80GB
servers:
  - name: main
    lora: {max_loras: 2, max_lora_rank: 16%s}
specialists:
  - name: code
    version: "2"
    path: /adapters/code/2
    rank: 16
    pinned: true
    versions:
      - {version: "1", path: /adapters/code/1}
  - name: sql
    version: "1"
    path: /adapters/sql/1
    rank: 16
    pinned: %s
"""


def fleet(cpu: str = "", sql_pinned: str = "false"):
    return loading.load_text(textwrap.dedent(FLEET % (cpu, sql_pinned))).spec


def codes(spec) -> dict[str, object]:
    return {f.code: f for f in findings.lora_residency_findings(spec)}


def test_versions_beyond_the_cpu_cache_are_said():
    found = codes(fleet())  # 3 versions, max_cpu_loras defaults to max_loras 2
    f = found["lora-cache-holds-unloaded"]
    assert f.path == "servers[0].lora.max_cpu_loras" and "3 adapter versions" in f.message and "54839" in f.message
    assert "max_cpu_loras to 3" in f.hint
    assert "lora-cache-holds-unloaded" not in codes(fleet(", max_cpu_loras: 3"))


def test_a_pinned_switch_needs_one_slot_more():
    # code (pinned, two versions) and sql pinned: 2 pinned in 2 slots; a switch of code needs 3.
    f = codes(fleet(sql_pinned="true"))["pinned-switch-needs-a-slot"]
    assert f.path == "servers[0].lora.max_loras" and "needs 3 slots" in f.message
    assert "pinned-switch-needs-a-slot" not in codes(fleet())  # 1 pinned + 1 fits 2 slots


def test_the_plan_carries_them():
    plan = report.plan_fleet(fleet(sql_pinned="true"))
    assert {"lora-cache-holds-unloaded", "pinned-switch-needs-a-slot"} <= {f.code for f in plan.findings}


def test_every_term_has_a_source_and_a_confidence(tmp_path):
    plan = report.plan_fleet(fleet(", max_cpu_loras: 3"))
    terms = plan.to_json()["servers"][0]["replicas"][0]["per_gpu"]["terms"]
    names = [t["term"] for t in terms]
    assert names == ["weights", "lora", "activation", "non_torch", "cudagraph", "cuda_context", "sampler_warmup",
                     "kv_cache"]
    assert all(t["source"] and t["confidence"] in ("computed", "measured", "estimated", "extrapolated",
                                                   "not modelled") for t in terms)
    activation = next(t for t in terms if t["term"] == "activation")
    assert activation["confidence"] == "extrapolated" and "measured on vLLM 0.19, extrapolated for 0.33" in \
        activation["source"]


def test_plan_explain_prints_one_line_per_term(tmp_path, capsys):
    path = tmp_path / "fleet.yaml"
    path.write_text(textwrap.dedent(FLEET % (", max_cpu_loras: 3", "false")))
    assert app.main(["plan", str(path), "--memory-only", "--explain"]) == 0
    out = capsys.readouterr().out
    assert "Where each figure comes from" in out
    assert "activation: extrapolated; activation base for dense models" in out
    assert app.main(["plan", str(path), "--memory-only", "--format", "json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["servers"][0]["replicas"][0]["per_gpu"]["terms"]
