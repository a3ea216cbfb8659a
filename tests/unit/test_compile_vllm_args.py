"""The flag table and one replica's argv/env, checked against hand-written expectations."""

from __future__ import annotations

import pathlib

import pytest

from fleetspec import errors
from fleetspec.catalog import vllm_flags
from fleetspec.compile import slots, targets, vllm_args
from fleetspec.spec import derived, models


def fleet(**changes) -> models.FleetSpec:
    document = {
        "name": "demo",
        "base_model": {"id": "Qwen/Qwen2.5-7B-Instruct", "max_model_len": 8192},
        "gpus": "2x A100-80GB",
        "servers": [{"name": "main", "tensor_parallel_size": 2, "gpu_memory_utilization": 0.85,
                     "lora": {"max_loras": 4, "max_cpu_loras": 8, "max_lora_rank": 32}}],
        "specialists": [
            {"name": "sql", "version": "1.2.0", "path": "/adapters/sql/1.2.0",
             "versions": [{"version": "1.1.0", "path": "/adapters/sql/1.1.0"}]},
            {"name": "lazy", "version": "2", "path": "/adapters/lazy", "preload": False},
        ],
        "routing": {"splits": [{"specialist": "sql", "weights": {"1.2.0": 90, "1.1.0": 10}}]},
    }
    document.update(changes)
    return models.FleetSpec.model_validate(document)


def test_a_lora_server_compiles_to_the_expected_argv_and_env():
    spec = fleet()
    launch = vllm_args.replica_launch(spec, spec.servers[0], 0, host="127.0.0.1", port=8001, gpus=[2, 3])
    assert launch.argv == [
        "vllm", "serve", "Qwen/Qwen2.5-7B-Instruct",
        "--served-model-name", "Qwen/Qwen2.5-7B-Instruct", "--host", "127.0.0.1", "--port", "8001",
        "--tensor-parallel-size", "2", "--gpu-memory-utilization", "0.85", "--max-model-len", "8192",
        "--api-server-count", "1", "--enable-lora", "--max-loras", "4", "--max-cpu-loras", "8",
        "--max-lora-rank", "32",
        "--lora-modules", "sql--1.2.0=/adapters/sql/1.2.0", "sql--1.1.0=/adapters/sql/1.1.0",
    ]
    assert launch.env == {"CUDA_VISIBLE_DEVICES": "2,3", "VLLM_ALLOW_RUNTIME_LORA_UPDATING": "true"}


def test_a_base_only_server_gets_no_lora_flags_and_the_release_default_utilization():
    spec = fleet(servers=[{"name": "base"}], runtime={"vllm_version": "0.11.0"})
    launch = vllm_args.replica_launch(spec, spec.servers[0], 0, host="0.0.0.0", port=8000)
    assert "--enable-lora" not in launch.argv and "--api-server-count" not in launch.argv
    assert launch.argv[launch.argv.index("--gpu-memory-utilization") + 1] == "0.9"
    assert launch.env == {}


def test_the_reconciler_form_leaves_adapters_to_runtime_loading():
    spec = fleet()
    launch = vllm_args.replica_launch(spec, spec.servers[0], 0, host="h", port=1, preload_adapters=False)
    assert "--lora-modules" not in launch.argv
    assert launch.env["VLLM_ALLOW_RUNTIME_LORA_UPDATING"] == "true"


def test_user_env_wins_except_for_the_placed_gpus():
    spec = fleet(servers=[{"name": "main", "lora": {}, "env": {"VLLM_ALLOW_RUNTIME_LORA_UPDATING": "false",
                                                               "CUDA_VISIBLE_DEVICES": "7"}}])
    env = vllm_args.launch_env(spec, spec.servers[0], [1])
    assert env == {"CUDA_VISIBLE_DEVICES": "1", "VLLM_ALLOW_RUNTIME_LORA_UPDATING": "false"}


@pytest.mark.parametrize(("name", "version", "served"), [
    ("python-lora", "1.2.0", "python-lora--1.2.0"),
    ("sql", "1.0.0+build.7", "sql--1.0.0_build.7"),
    ("a.b_c", "v2", "a.b_c--v2"),
])
def test_served_adapter_names_are_versioned_and_url_safe(name, version, served):
    assert derived.served_adapter_name(name, version) == served


@pytest.mark.parametrize(("model_id", "served"), [("Qwen/Qwen2.5-7B", "Qwen/Qwen2.5-7B"), ("/models/llama", "demo"),
                                                  ("./weights", "demo")])
def test_the_base_is_served_under_its_hub_id_or_the_fleet_name(model_id, served):
    assert derived.served_base_name(fleet(base_model={"id": model_id})) == served


@pytest.mark.parametrize(("path", "item"), [
    ("/a/b", "n=/a/b"),
    ("/a=b/c", "n=/a=b/c"),
    ("/a,b", '{"name":"n","path":"/a,b"}'),
])
def test_lora_module_items_use_json_only_when_a_comma_forces_it(path, item):
    assert vllm_args.lora_module_arg("n", path) == item


def test_relative_adapter_paths_are_relative_to_the_fleet_file():
    assert vllm_args.resolve_path("./adapters/x", pathlib.Path("/srv/f")) == "/srv/f/adapters/x"
    assert vllm_args.resolve_path("../x", pathlib.Path("/srv/f")) == "/srv/x"
    assert vllm_args.resolve_path("org/adapter", pathlib.Path("/srv/f")) == "org/adapter"


@pytest.mark.parametrize(("version", "rank", "codes"), [
    ("0.33.0", 1, []),
    ("0.11.0", 1, ["max-lora-rank-not-in-release"]),
    ("0.11.0", 8, []),
])
def test_max_lora_rank_is_checked_against_the_named_release(version, rank, codes):
    spec = fleet(servers=[{"name": "main", "lora": {"max_lora_rank": rank}}], runtime={"vllm_version": version})
    assert [p.code for p in vllm_args.check_server(spec, spec.servers[0])] == codes


def test_lora_target_modules_need_a_release_that_has_the_flag():
    spec = fleet(servers=[{"name": "main", "lora": {"target_modules": ["o_proj"]}}], runtime={"vllm_version": "0.16.0"})
    problems = vllm_args.check_server(spec, spec.servers[0])
    assert [(p.code, p.path) for p in problems] == [("flag-not-in-release", "servers[0].lora.target_modules")]
    assert "0.17" in problems[0].hint


@pytest.mark.parametrize(("extra", "version", "codes"), [
    (["--enable-prefix-caching"], "0.33.0", []),
    (["--max_lora_rank=8"], "0.33.0", ["flag-set-by-fleetspec"]),
    (["--no-enforce-eager"], "0.33.0", ["flag-set-by-fleetspec"]),
    (["--lora-extra-vocab-size", "256"], "0.33.0", ["removed-vllm-flag"]),
    (["--lora-extra-vocab-size", "256"], "0.11.0", []),
    # Checked against each release's own parser (catalog/data/vllm_serve_flags.json):
    (["--disable-log-requests"], "0.33.0", []),
    (["--disable-log-requests"], "0.32.0", ["unknown-vllm-flag"]),  # 0.33's --enable-x/--disable-x pairs
    (["--no-enable-log-requests"], "0.32.0", []),
    (["--enable-prefix-cachin"], "0.33.0", ["unknown-vllm-flag"]),
    (["--bogus"], "0.20.0", []),  # no dump of 0.20's parser: nothing to say
])
def test_extra_args_cannot_override_the_table_or_use_removed_flags(extra, version, codes):
    spec = fleet(servers=[{"name": "main", "lora": {}, "extra_args": extra}], runtime={"vllm_version": version})
    assert [p.code for p in vllm_args.check_server(spec, spec.servers[0])] == codes


def test_the_flag_table_knows_release_facts():
    assert vllm_flags.facts("0.33.0").allowed_max_lora_ranks[0] == 1
    assert vllm_flags.facts("0.11.0").allowed_max_lora_ranks[0] == 8
    assert vllm_flags.facts("0.33.0").gpu_memory_utilization_default == 0.92
    assert vllm_flags.facts("0.11.0").gpu_memory_utilization_default == 0.9
    assert vllm_flags.facts("0.16.2").has_flag("--lora-target-modules") is False
    assert vllm_flags.facts("0.17.0").has_flag("--lora-target-modules") is True


@pytest.mark.parametrize(("weights_gib", "seconds"), [(None, 360), (2.0, 240), (18.0, 360), (140.0, 1620)])
def test_startup_budget_grows_with_the_weights(weights_gib, seconds):
    # 180 s + 10 s per GiB, rounded up to whole minutes; 16 GiB assumed when unknown.
    assert vllm_flags.startup_budget_seconds(weights_gib) == seconds


def test_config_yaml_keeps_lora_modules_as_strings_and_extra_args_on_the_command_line():
    spec = fleet(servers=[{"name": "main", "lora": {}, "extra_args": ["--enable-prefix-caching"]}])
    launch = vllm_args.replica_launch(spec, spec.servers[0], 0, host="h", port=1)
    text = vllm_args.to_config_yaml(launch)
    assert "lora-modules:\n- sql--1.2.0=/adapters/sql/1.2.0\n- sql--1.1.0=/adapters/sql/1.1.0\n" in text
    assert vllm_args.config_argv(launch, "c.yaml") == ["vllm", "serve", "--config", "c.yaml", "--enable-prefix-caching"]


def test_json_format_has_the_documented_keys():
    spec = fleet()
    out = targets.compile_target(spec, slots.sequential(spec), "vllm", fmt="json")
    import json

    (entry,) = json.loads(out.stdout)
    assert sorted(entry) == ["argv", "env", "replica", "server"]
    assert entry["argv"][:2] == ["vllm", "serve"] and entry["env"]["CUDA_VISIBLE_DEVICES"] == "0,1"


def test_two_versions_that_share_a_served_name_are_refused():
    spec = fleet(specialists=[{"name": "sql", "version": "1.0+a", "path": "/a",
                               "versions": [{"version": "1.0_a", "path": "/b"}]}], routing={})
    problems = vllm_args.check_fleet(spec)
    assert [(p.code, p.path) for p in problems] == [("served-name-collision", "specialists[0].version")]
    assert "1.0+a and 1.0_a" in problems[0].message
    with pytest.raises(errors.SpecError):
        targets.compile_target(spec, slots.sequential(spec), "router")


def test_an_unknown_flag_names_the_release_that_has_it():
    spec = fleet(servers=[{"name": "main", "lora": {}, "extra_args": ["--disable-log-requests"]}],
                 runtime={"vllm_version": "0.32.0"})
    [problem] = vllm_args.check_server(spec, spec.servers[0])
    assert problem.message == ('vLLM 0.32 has no --disable-log-requests; it would exit at start with '
                               '"unrecognized arguments: --disable-log-requests".')
    assert problem.hint.startswith("--disable-log-requests exists in vLLM 0.33;")


@pytest.mark.parametrize(("extra", "version", "lora", "codes"), [
    # LoRAConfig.verify_with_kernel_config (vllm/config/lora.py, 0.33) refuses the MegaMoE backends.
    (["--moe-backend", "deep_gemm_mega_moe"], "0.33.0", True, ["lora-refused-by-moe-backend"]),
    (["--moe-backend=FlashInfer-MoE-EP-CuteDSL"], "0.33.0", True, ["lora-refused-by-moe-backend"]),
    (["--moe-backend", "aiter_mega_moe"], "0.34.0", True, ["lora-refused-by-moe-backend"]),
    (["--moe-backend", "triton"], "0.33.0", True, []),
    (["--moe-backend", "deep_gemm_mega_moe"], "0.33.0", False, []),  # no adapters: nothing to refuse
    (["--moe-backend", "deep_gemm_mega_moe"], "0.32.0", True, []),  # 0.32 has no such check
])
def test_lora_with_a_mega_moe_backend_is_refused_where_vllm_refuses_it(extra, version, lora, codes):
    server = {"name": "main", "extra_args": extra, **({"lora": {}} if lora else {})}
    spec = fleet(servers=[server], runtime={"vllm_version": version})
    problems = vllm_args.check_server(spec, spec.servers[0])
    assert [p.code for p in problems if p.code != "unknown-vllm-flag"] == codes
    if codes:
        assert problems[-1].path.startswith("servers[0].extra_args[")
