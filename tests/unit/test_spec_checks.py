"""Cross-field checks: each rule that relates parts of the file, with its location and fix."""

from __future__ import annotations

import textwrap

from fleetspec.spec import derived, loading
from fleetspec.validation import checks

BASE = """\
name: demo
base_model:
  id: custom/tiny
  max_model_len: 2048
  architecture: {hidden_size: 64, intermediate_size: 128, num_hidden_layers: 2,
                 num_attention_heads: 4, num_key_value_heads: 2, vocab_size: 1000}
gpus: 4x L4
servers:
  - name: main
    lora: {max_loras: 2, max_lora_rank: 16}
specialists:
  - name: code
    version: "1"
    path: /adapters/code/1
    rank: 16
"""


def run(text: str):
    return checks.check(loading.load_text(textwrap.dedent(text)))


def codes(text: str) -> list[str]:
    return [d.code for d in run(text)]


def test_the_base_fleet_is_clean():
    assert run(BASE) == []


def test_duplicate_server_names():
    found = run(BASE.replace("specialists:", "  - name: main\nspecialists:"))
    assert [(d.code, d.path, d.location.line) for d in found] == [("duplicate-name", "servers[1].name", 11)]


def test_max_cpu_loras_below_max_loras_is_refused_like_vllm():
    (found,) = run(BASE.replace("max_loras: 2,", "max_loras: 4, max_cpu_loras: 2,"))
    assert found.code == "cpu-loras-below-gpu-loras"
    assert found.hint == "set max_cpu_loras to 4 or more"


def test_rank_above_a_hosting_servers_max_lora_rank():
    (found,) = run(BASE.replace("rank: 16\n", "rank: 48\n"))
    assert found.code == "rank-above-max-lora-rank"
    assert found.path == "specialists[0].rank"
    assert found.hint == "raise servers[0].lora.max_lora_rank to 64"


def test_rank_of_a_non_active_version_is_checked_at_its_own_path():
    text = BASE + "    versions:\n      - {version: \"2\", path: /adapters/code/2, rank: 32}\n"
    (found,) = run(text)
    assert found.path == "specialists[0].versions[0].rank"


def test_specialist_on_unknown_or_non_lora_server():
    text = BASE.replace("specialists:", "  - name: plain\nspecialists:") + "    servers: [plain, mian]\n"
    found = run(text)
    assert [(d.code, d.path) for d in found] == [
        ("server-without-lora", "specialists[0].servers[0]"),
        ("unknown-server", "specialists[0].servers[1]"),
    ]
    assert found[1].hint == "did you mean `main`?"


def test_rules_must_target_declared_specialists_and_versions():
    text = BASE + "routing:\n  rules:\n    - {keywords: [py], to: cod}\n    - {regex: x, to: code@9}\n"
    found = run(text)
    assert [(d.path, d.hint) for d in found] == [
        ("routing.rules[0].to", "did you mean `code`?"),
        ("routing.rules[1].to", "declared versions: 1"),
    ]


def test_hash_cluster_targets_are_checked_per_cluster():
    text = BASE + "routing:\n  rules:\n    - hash_clusters: {num_clusters: 100, map: {c17: code, c42: nope}}\n"
    (found,) = run(text)
    assert found.path == "routing.rules[0].hash_clusters.map.c42"


def test_split_weights_must_sum_to_100_over_declared_versions():
    text = BASE + ("    versions:\n      - {version: \"2\", path: /adapters/code/2}\n"
                   "routing:\n  splits:\n    - specialist: code\n      weights: {\"1\": 80, \"2\": 10, \"3\": 5}\n")
    assert sorted(codes(text)) == ["split-weights-sum", "unknown-split-version"]


def test_versions_need_their_own_paths_and_previous_version_must_exist():
    text = BASE + "    previous_version: \"0\"\n    versions:\n      - {version: \"2\", path: /adapters/code/1}\n"
    assert sorted(codes(text)) == ["shared-version-path", "unknown-previous-version"]


def test_heads_not_divisible_by_tensor_parallel_size_suggests_sizes_that_work():
    (found,) = run(BASE.replace("  - name: main\n", "  - name: main\n    tensor_parallel_size: 3\n"))
    assert found.code == "heads-not-divisible-by-tp"
    assert found.hint == "use tensor_parallel_size 2 or 4"


def test_gpu_counts_must_cover_replicas():
    found = run(BASE.replace("  - name: main\n", "  - name: main\n    replicas: 3\n    tensor_parallel_size: 2\n"))
    assert [d.code for d in found] == ["not-enough-gpus"]


def test_replicas_may_share_gpus_when_utilizations_fit():
    text = BASE.replace("gpus: 4x L4", "gpus: 1x L4").replace(
        "  - name: main\n", "  - name: main\n    replicas: 2\n    gpu_memory_utilization: 0.45\n")
    assert run(text) == []


def test_ports_of_replicas_and_router_must_not_collide():
    text = BASE.replace("  - name: main\n", "  - name: main\n    replicas: 2\n    port: 8079\n")
    (found,) = run(text)  # replica 1 takes 8080, the router's default port
    assert (found.code, found.path) == ("port-collision", "runtime.router.port")


def test_literal_secrets_in_env_are_warned_about():
    (found,) = run(BASE.replace("  - name: main\n", "  - name: main\n    env: {HF_TOKEN: hf_abc, LOG: debug}\n"))
    assert (found.code, found.severity.value) == ("inline-secret", "warning")
    assert found.hint == "write it as ${HF_TOKEN} and export HF_TOKEN where fleetspec runs"


def test_replica_ports_skip_explicitly_claimed_ports():
    fleet = loading.load_text(BASE.replace("  - name: main\n", "  - name: other\n    port: 8000\n  - name: main\n    replicas: 2\n"))
    assert derived.replica_ports(fleet.spec) == {("other", 0): 8000, ("main", 0): 8001, ("main", 1): 8002}


def test_pinned_specialists_must_fit_the_gpu_slots_of_their_server():
    text = BASE.replace("    rank: 16\n", "    rank: 16\n    pinned: true\n") + (
        "  - {name: sql, version: '1', path: /adapters/sql/1, rank: 16, pinned: true}\n"
        "  - {name: docs, version: '1', path: /adapters/docs/1, rank: 16, pinned: true}\n")
    (found,) = run(text)  # three pinned, two slots
    assert (found.code, found.path) == ("pinned-above-max-loras", "servers[0].lora.max_loras")
    assert found.hint == "raise max_loras to 3, or unpin some of them"


def test_a_pinned_specialist_must_be_preloaded():
    (found,) = run(BASE.replace("    rank: 16\n", "    rank: 16\n    pinned: true\n    preload: false\n"))
    assert found.code == "pinned-not-preloaded"
