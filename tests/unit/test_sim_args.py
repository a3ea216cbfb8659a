"""The sim parses the argv fleetspec compiles for `vllm serve` exactly as vLLM 0.33 does."""

from __future__ import annotations

import pathlib

import pytest

from fleetspec.sim import args as sim_args

MODEL = "Qwen/Qwen2.5-7B-Instruct"


def parse(*argv: str, env: dict | None = None) -> sim_args.ServeArgs:
    return sim_args.parse(["serve", *argv], env or {})


def usage_error(*argv: str, env: dict | None = None) -> str:
    with pytest.raises(sim_args.UsageError) as caught:
        parse(*argv, env=env)
    return str(caught.value)


def config_error(*argv: str, env: dict | None = None) -> str:
    with pytest.raises(sim_args.ConfigError) as caught:
        parse(*argv, env=env)
    return str(caught.value)


def test_compiled_argv_is_read_field_by_field():
    served = parse(
        MODEL, "--served-model-name", "main", "alias", "--host", "0.0.0.0", "--port", "8001",
        "--tensor-parallel-size", "2", "--pipeline-parallel-size", "1", "--gpu-memory-utilization", "0.85",
        "--max-model-len", "8192", "--max-num-seqs", "64", "--max-num-batched-tokens", "4096",
        "--dtype", "bfloat16", "--quantization", "awq", "--kv-cache-dtype", "fp8", "--enforce-eager",
        "--enable-lora", "--max-loras", "4", "--max-cpu-loras", "8", "--max-lora-rank", "64",
        "--lora-dtype", "bfloat16", "--lora-target-modules", "qkv_proj", "o_proj", "--fully-sharded-loras",
        "--lora-modules", "sql=/adapters/sql/1.0.0", "--api-server-count", "1", "--api-key", "s3cret",
    )
    assert served.model == MODEL
    assert served.served_model_names == ("main", "alias")
    assert served.served_model_name == "main"
    assert (served.host, served.port) == ("0.0.0.0", 8001)
    assert (served.tensor_parallel_size, served.pipeline_parallel_size) == (2, 1)
    assert served.gpu_memory_utilization == 0.85
    assert (served.max_model_len, served.max_num_seqs, served.max_num_batched_tokens) == (8192, 64, 4096)
    assert (served.dtype, served.quantization, served.kv_cache_dtype) == ("bfloat16", "awq", "fp8")
    assert served.enforce_eager and served.enable_lora and served.fully_sharded_loras
    assert (served.max_loras, served.max_cpu_loras, served.max_lora_rank) == (4, 8, 64)
    assert served.lora_dtype == "bfloat16"
    assert served.lora_target_modules == ("qkv_proj", "o_proj")
    assert served.lora_modules == (sim_args.LoraModule("sql", "/adapters/sql/1.0.0"),)
    assert served.api_server_count == 1
    assert served.api_keys == ("s3cret",)
    assert served.ignored == ()


def test_defaults_follow_vllm_033():
    served = parse(MODEL)
    assert served.served_model_names == (MODEL,)
    assert (served.host, served.port) == (None, 8000)
    assert served.gpu_memory_utilization == 0.92
    assert (served.max_loras, served.max_cpu_loras, served.max_lora_rank) == (1, 1, 16)
    assert not served.enable_lora and not served.allow_runtime_lora_updating
    assert served.max_model_len is None


@pytest.mark.parametrize("rank", ["4", "24", "48", "1024"])
def test_max_lora_rank_outside_vllms_choices_is_an_argparse_error(rank):
    assert usage_error(MODEL, "--max-lora-rank", rank) == (
        f"argument --max-lora-rank: invalid choice: {rank} (choose from 1, 8, 16, 32, 64, 128, 256, 320, 512)"
    )


@pytest.mark.parametrize("rank", [1, 8, 16, 32, 64, 128, 256, 320, 512])
def test_every_allowed_max_lora_rank_parses(rank):
    assert parse(MODEL, "--max-lora-rank", str(rank)).max_lora_rank == rank


def test_max_cpu_loras_below_max_loras_is_vllms_value_error():
    assert config_error(MODEL, "--enable-lora", "--max-loras", "4", "--max-cpu-loras", "2") == (
        "max_cpu_loras (2) must be >= max_loras (4)."
    )


@pytest.mark.parametrize("value", ["0", "-1"])
def test_non_positive_max_cpu_loras_means_unset(value):
    served = parse(MODEL, "--enable-lora", "--max-loras", "3", "--max-cpu-loras", value)
    assert served.max_cpu_loras == 3


def test_max_cpu_loras_is_not_checked_without_lora():
    # LoRAConfig only exists with --enable-lora, so its validation never runs otherwise.
    assert parse(MODEL, "--max-loras", "4", "--max-cpu-loras", "2").max_cpu_loras == 2


def test_zero_max_loras_is_refused_by_loraconfig():
    message = config_error(MODEL, "--enable-lora", "--max-loras", "0")
    assert message.startswith("1 validation error for LoRAConfig\nmax_loras\n  Input should be greater than or equal to 1")


@pytest.mark.parametrize("value, rule", [("1.5", "less than or equal to 1"), ("0", "greater than 0")])
def test_gpu_memory_utilization_outside_0_1(value, rule):
    message = config_error(MODEL, "--gpu-memory-utilization", value)
    assert message.startswith(f"1 validation error for CacheConfig\ngpu_memory_utilization\n  Input should be {rule}")


# -- runtime LoRA updating ------------------------------------------------------------------------


@pytest.mark.parametrize("value, enabled", [("1", True), ("true", True), ("TRUE", True), ("0", False),
                                            ("yes", False), ("", False)])
def test_runtime_updating_env_accepts_1_and_true_only(value, enabled):
    served = parse(MODEL, env={"VLLM_ALLOW_RUNTIME_LORA_UPDATING": value})
    assert served.allow_runtime_lora_updating is enabled


def test_runtime_updating_with_several_api_servers_is_refused():
    env = {"VLLM_ALLOW_RUNTIME_LORA_UPDATING": "true"}
    expected = "VLLM_ALLOW_RUNTIME_LORA_UPDATING cannot be used with api_server_count > 1"
    assert config_error(MODEL, "--api-server-count", "2", env=env) == expected
    # api_server_count defaults to data_parallel_size
    assert config_error(MODEL, "--data-parallel-size", "2", env=env) == expected
    assert parse(MODEL, "-dp", "2", "--api-server-count", "1", env=env).api_server_count == 1
    assert parse(MODEL, "--api-server-count", "2").api_server_count == 2  # fine without runtime updating


# -- --lora-modules (vllm-facts §1.3) ---------------------------------------------------------------


def test_lora_modules_name_equals_path_items():
    served = parse(MODEL, "--lora-modules", "sql=/a/b", "chat=/c/d")
    assert served.lora_modules == (sim_args.LoraModule("sql", "/a/b"), sim_args.LoraModule("chat", "/c/d"))


def test_lora_modules_single_json_object_keeps_base_model_name():
    served = parse(MODEL, "--lora-modules", '{"name":"sql","path":"/a/b","base_model_name":"llama"}')
    assert served.lora_modules == (sim_args.LoraModule("sql", "/a/b", "llama"),)


def test_lora_modules_comma_in_path_forces_json_and_fails():
    assert usage_error(MODEL, "--lora-modules", "weird=/a,b") == "Invalid JSON format for --lora-modules: weird=/a,b"


def test_lora_modules_json_list_is_refused_despite_the_help_text():
    item = '[{"name":"sql","path":"/a/b"}]'
    assert usage_error(MODEL, "--lora-modules", item) == (
        f"Invalid fields for --lora-modules: {item} - LoRAModulePath() argument after ** must be a mapping, not list"
    )


def test_lora_modules_unknown_json_key_is_refused():
    item = '{"name":"sql","path":"/a/b","rank":8}'
    assert usage_error(MODEL, "--lora-modules", item).startswith(f"Invalid fields for --lora-modules: {item} - ")


def test_lora_modules_item_without_equals_or_json():
    assert usage_error(MODEL, "--lora-modules", "sql") == "Invalid JSON format for --lora-modules: sql"


# -- flags vLLM does not know / no longer knows ------------------------------------------------------


def test_unmodelled_flags_are_ignored_and_recorded():
    served = parse(MODEL, "--enable-prefix-caching", "--block-size", "32", "--port", "9000", "--seed=7")
    assert served.port == 9000
    assert served.ignored == ("--enable-prefix-caching", "--block-size", "32", "--seed=7")


@pytest.mark.parametrize("argv, shown", [
    (["--lora-extra-vocab-size", "256"], "--lora-extra-vocab-size 256"),
    (["--enable-lora-bias"], "--enable-lora-bias"),
    (["--long-lora-scaling-factors", "4.0"], "--long-lora-scaling-factors 4.0"),
])
def test_removed_flags_are_unrecognized_as_in_vllm(argv, shown):
    assert usage_error(MODEL, "--enable-lora", *argv) == f"unrecognized arguments: {shown}"


def test_underscored_flags_are_normalised():
    served = parse(MODEL, "--max_loras", "3", "--enable_lora", "--max_lora_rank=32")
    assert (served.max_loras, served.enable_lora, served.max_lora_rank) == (3, True, 32)


def test_model_option_is_moved_to_the_positional():
    assert parse("--port", "9001", "--model", MODEL).model == MODEL
    assert parse(f"--model={MODEL}").model == MODEL


def test_served_model_name_without_positional_model_is_refused():
    assert config_error("--served-model-name", "x").startswith("`model` should be provided as the first positional")


# -- value types ------------------------------------------------------------------------------------


@pytest.mark.parametrize("text, value", [("8192", 8192), ("1k", 1000), ("1K", 1024), ("25.6k", 25600),
                                         ("32K", 32768), ("auto", -1), ("-1", -1)])
def test_max_model_len_human_readable(text, value):
    assert parse(MODEL, "--max-model-len", text).max_model_len == value


def test_binary_suffix_with_decimals_is_refused():
    assert usage_error(MODEL, "--max-model-len", "1.5K") == (
        "argument --max-model-len: Decimals are not allowed with binary suffixes like K. "
        "Did you mean to use 1.5k instead?"
    )


def test_api_key_from_environment():
    assert parse(MODEL, env={"VLLM_API_KEY": "k1"}).api_keys == ("k1",)
    assert parse(MODEL, "--api-key", "k2", env={"VLLM_API_KEY": "k1"}).api_keys == ("k2",)


def test_only_serve_is_implemented():
    with pytest.raises(sim_args.UsageError):
        sim_args.parse(["chat", MODEL], {})


# -- --config file.yaml (vllm-facts §1.4) -----------------------------------------------------------


def test_config_file_flags_with_cli_precedence(tmp_path):
    config = tmp_path / "engine.yaml"
    config.write_text(
        "port: 9100\nmax-loras: 2\nmax_cpu_loras: 6\nenable-lora: true\nenforce-eager: false\n"
        "lora-modules:\n  - sql=/adapters/sql\n  - '{\"name\": \"chat\", \"path\": \"/adapters/chat\"}'\n"
        "lora-target-modules: [qkv_proj, o_proj]\n"
    )
    served = parse(MODEL, "--config", str(config), "--max-loras", "3")
    assert served.port == 9100
    assert served.max_loras == 3  # the command line wins
    assert served.max_cpu_loras == 6
    assert served.enable_lora and not served.enforce_eager
    assert served.lora_modules == (sim_args.LoraModule("sql", "/adapters/sql"), sim_args.LoraModule("chat", "/adapters/chat"))
    assert served.lora_target_modules == ("qkv_proj", "o_proj")


def test_config_file_may_name_the_model(tmp_path):
    config = tmp_path / "engine.yml"
    config.write_text(f"model: {MODEL}\nport: 9200\n")
    served = sim_args.parse(["serve", "--config", str(config)], {})
    assert (served.model, served.port) == (MODEL, 9200)


def test_config_file_lora_modules_as_mappings_fail_like_vllm(tmp_path):
    config = tmp_path / "engine.yaml"
    config.write_text("lora-modules:\n  - {name: sql, path: /adapters/sql}\n")
    # YAML mappings become str(dict): single quotes, not JSON.
    assert usage_error(MODEL, "--config", str(config)) == (
        "Invalid JSON format for --lora-modules: {'name': 'sql', 'path': '/adapters/sql'}"
    )


def test_config_file_must_be_yaml(tmp_path):
    config = tmp_path / "engine.json"
    config.write_text("{}")
    assert config_error(MODEL, "--config", str(config)) == "Config file must be of a yaml/yml type. json supplied"


# -- the compiler's output is the sim's input ---------------------------------------------------------

ROOT = pathlib.Path(__file__).resolve().parents[2]
FLEETS = sorted((ROOT / "examples").glob("*.yaml")) + [ROOT / "fleet.yaml"]


@pytest.mark.parametrize("fleet_file", FLEETS, ids=lambda p: p.name)
def test_compiled_argv_of_every_example_parses_and_its_config_form_means_the_same(fleet_file, tmp_path):
    from fleetspec.compile import vllm_args
    from fleetspec.spec import loading

    fleet = loading.load_path(fleet_file)
    for server in fleet.spec.servers:
        launch = vllm_args.replica_launch(fleet.spec, server, 0, host="0.0.0.0", port=8000, base_dir=fleet.base_dir)
        assert launch.argv[:2] == ["vllm", "serve"]
        served = sim_args.parse(launch.argv[1:], launch.env)
        assert served.model == vllm_args.resolve_path(fleet.spec.base_model.id, fleet.base_dir)
        assert served.port == 8000 and served.enable_lora is (server.lora is not None)
        if server.lora is not None:
            assert (served.max_loras, served.max_lora_rank) == (server.lora.max_loras, server.lora.max_lora_rank)
            assert served.allow_runtime_lora_updating and served.api_server_count == 1
        config = tmp_path / f"{server.name}.yaml"
        config.write_text(vllm_args.to_config_yaml(launch))
        assert sim_args.parse(vllm_args.config_argv(launch, str(config))[1:], launch.env) == served


# -- the flag set follows the vLLM version (FLEETSPEC_SIM_VLLM_VERSION) ---------------------------------


def test_unknown_flags_are_unrecognized_as_in_vllm():
    assert usage_error(MODEL, "--bogus-flag", "3") == "unrecognized arguments: --bogus-flag 3"


@pytest.mark.parametrize("version, expected", [
    ("0.32", "0.32.0"), ("0.32.0", "0.32.0"), ("v0.33.0", "0.33.0"), ("0.31.1", "0.32.0"), ("0.40", "0.33.0"),
])
def test_the_version_maps_onto_a_known_release(version, expected):
    assert parse(MODEL, env={sim_args.VERSION_ENV: version}).vllm_version == expected


def test_the_default_version_is_033():
    assert parse(MODEL).vllm_version == "0.33.0"


def test_enable_disable_pairs_exist_only_in_033():
    # 0.33's EnableDisableAction adds --disable-x for every --enable-x (vllm/utils/argparse_utils.py:120-145).
    assert parse(MODEL, "--enable-lora", "--disable-lora").enable_lora is False
    assert parse(MODEL, "--disable-log-requests").ignored == ("--disable-log-requests",)
    v032 = {sim_args.VERSION_ENV: "0.32"}
    with pytest.raises(sim_args.UsageError, match="unrecognized arguments: --disable-log-requests"):
        parse(MODEL, "--disable-log-requests", env=v032)
    assert parse(MODEL, "--enable-lora", "--no-enable-lora", env=v032).enable_lora is False


def test_unmodelled_flags_take_the_values_their_table_says():
    served = parse(MODEL, "--seed", "7", "--enable-prefix-caching", "--compilation-config.mode", "3")
    assert served.ignored == ("--seed", "7", "--enable-prefix-caching", "--compilation-config.mode", "3")
    with pytest.raises(sim_args.UsageError, match="unrecognized arguments: stray"):
        parse(MODEL, "--enable-prefix-caching", "stray")
