"""Compiled argv checked by vLLM 0.33.0's own `vllm serve` parser (scripts/vllm_parser_oracle.py).

The parser lives in its own virtualenv (`scripts/setup-oracles`); it is built once per test session in
a child process and answers one JSON line per argv. Without that venv the tests skip with the
reason, unless FLEETSPEC_REQUIRE_ORACLES=1 (CI), where they fail.
"""

from __future__ import annotations

import json
import os
import pathlib
import queue
import subprocess
import threading

import pytest
import require

from fleetspec import errors
from fleetspec.cli import plan_cmd
from fleetspec.compile import slots, targets, vllm_args
from fleetspec.spec import derived, loading, models

ROOT = pathlib.Path(__file__).resolve().parents[2]
FLEETS = sorted(ROOT.glob("examples/*.yaml")) + [ROOT / "fleet.yaml"]
VENV = pathlib.Path(os.environ.get("FLEETSPEC_VLLM_ORACLE_VENV", ROOT / ".cache" / "oracles" / "vllm-venv"))
START_DEADLINE_S = 120
ANSWER_DEADLINE_S = 60


def _missing(reason: str):
    require.unavailable("ORACLES", f"{reason}; run scripts/setup-oracles to enable this oracle")


class Oracle:
    def __init__(self, python: pathlib.Path):
        env = dict(os.environ, VLLM_TARGET_DEVICE="cpu", VLLM_LOGGING_LEVEL="ERROR")
        self.process = subprocess.Popen(
            [str(python), str(ROOT / "scripts" / "vllm_parser_oracle.py")], stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)
        self.lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._pump, daemon=True).start()
        ready = self._next(START_DEADLINE_S)
        assert json.loads(ready) == {"ready": True}

    def _pump(self) -> None:
        for line in self.process.stdout:
            self.lines.put(line)
        self.lines.put("")

    def _next(self, deadline: float) -> str:
        try:
            line = self.lines.get(timeout=deadline)
        except queue.Empty:
            raise AssertionError(f"the vLLM parser oracle gave no answer within {deadline} s") from None
        assert line, "the vLLM parser oracle exited"
        return line

    def ask(self, argv: list[str], env: dict | None = None, config_yaml: str | None = None,
            config_extra: list[str] | None = None) -> dict:
        request = {"argv": argv, "env": env or {}, "config_yaml": config_yaml, "config_extra": config_extra or []}
        self.process.stdin.write(json.dumps(request) + "\n")
        self.process.stdin.flush()
        return json.loads(self._next(ANSWER_DEADLINE_S))

    def close(self) -> None:
        self.process.stdin.close()
        self.process.wait(timeout=30)


@pytest.fixture(scope="session")
def oracle():
    python = VENV / "bin" / "python"
    if not python.exists():
        _missing(f"the vLLM parser venv {VENV} does not exist")
    instance = Oracle(python)
    yield instance
    instance.close()


def _launches(fleet: pathlib.Path) -> tuple[models.FleetSpec, list[vllm_args.ReplicaLaunch]]:
    loaded, plan = plan_cmd.build_plan(str(fleet))
    assert plan.fits, [d.render() for d in plan.errors]
    return loaded.spec, targets.launches(loaded.spec, slots.from_plan(plan), loaded.base_dir)


@pytest.mark.parametrize("fleet", FLEETS, ids=[f.name for f in FLEETS])
def test_every_compiled_argv_parses_in_vllm_with_the_values_fleetspec_meant(oracle, fleet):
    spec, found = _launches(fleet)
    assert found, "the fleet compiled to no replica"
    for launch in found:
        answer = oracle.ask(launch.argv, launch.env, vllm_args.to_config_yaml(launch), launch.extra_args)
        assert answer["ok"], f"{launch.server}-{launch.replica}: {answer.get('error')}"
        args, settings = answer["args"], launch.settings
        # A local checkpoint path is resolved against the fleet file, as vllm serve needs it.
        assert args["model"] == vllm_args.resolve_path(spec.base_model.id, loading.load_path(fleet).base_dir)
        assert args["served_model_name"] == [derived.served_base_name(spec)]
        assert args["port"] == settings["port"] and args["host"] == settings["host"]
        assert args["tensor_parallel_size"] == settings["tensor_parallel_size"]
        assert args["gpu_memory_utilization"] == settings["gpu_memory_utilization"]
        assert args["max_model_len"] == settings["max_model_len"]
        server = spec.server(launch.server)
        assert args["pipeline_parallel_size"] == server.pipeline_parallel_size
        assert args["data_parallel_size"] == server.data_parallel_size
        assert args["enable_expert_parallel"] is server.expert_parallel
        if server.lora is None:
            assert args["enable_lora"] is not True
            continue
        assert args["enable_lora"] is True and args["api_server_count"] == 1
        assert args["max_lora_rank"] == server.lora.max_lora_rank
        assert args["max_loras"] == server.lora.max_loras
        wanted = [{"name": a.served_name, "path": a.path}
                  for a in vllm_args.served_adapters(spec, server, loading.load_path(fleet).base_dir)]
        got = [{"name": m["name"], "path": m["path"]} for m in args["lora_modules"] or []]
        assert got == wanted


def _settings_argv(**changes) -> list[str]:
    settings = {"model": "Qwen/Qwen2.5-7B-Instruct", "served_model_name": ["Qwen/Qwen2.5-7B-Instruct"],
                "tensor_parallel_size": 1, "gpu_memory_utilization": 0.9, "api_server_count": 1,
                "enable_lora": True, "max_loras": 4, "max_lora_rank": 64}
    settings.update(changes)
    return ["vllm", "serve", settings["model"], *vllm_args.render_flags(settings)]


def test_max_lora_rank_48_is_refused_by_fleetspec_and_by_vllm(oracle):
    text = """name: f
base_model: {id: Qwen/Qwen2.5-7B-Instruct}
gpus: "1x L4"
servers: [{name: main, lora: {max_loras: 4, max_lora_rank: 48}}]
"""
    with pytest.raises(errors.SpecError) as refused:
        loading.load_text(text)
    assert [d.path for d in refused.value.diagnostics] == ["servers[0].lora.max_lora_rank"]
    answer = oracle.ask(_settings_argv(max_lora_rank=48))
    assert not answer["ok"] and "argument --max-lora-rank: invalid choice: 48" in answer["error"]
    assert oracle.ask(_settings_argv(max_lora_rank=64))["ok"]


def test_max_cpu_loras_below_max_loras_is_refused_by_vllm(oracle):
    answer = oracle.ask(_settings_argv(max_loras=4, max_cpu_loras=2))
    assert not answer["ok"] and "max_cpu_loras (2) must be >= max_loras (4)" in answer["error"]


def test_runtime_lora_updating_needs_one_api_server_in_vllm_too(oracle):
    env = {"VLLM_ALLOW_RUNTIME_LORA_UPDATING": "true"}
    assert oracle.ask(_settings_argv(api_server_count=1), env)["ok"]
    answer = oracle.ask(_settings_argv(api_server_count=2), env)
    assert not answer["ok"] and "api_server_count > 1" in answer["error"]


def test_a_flag_vllm_removed_is_refused_by_fleetspec_and_by_vllm(oracle):
    spec = models.FleetSpec.model_validate({
        "name": "f", "base_model": {"id": "m/m"}, "gpus": "1x L4",
        "servers": [{"name": "main", "lora": {}, "extra_args": ["--enable-lora-bias"]}]})
    problems = vllm_args.check_server(spec, spec.servers[0])
    assert [(p.code, p.path) for p in problems] == [("removed-vllm-flag", "servers[0].extra_args[0]")]
    answer = oracle.ask([*_settings_argv(), "--enable-lora-bias"])
    assert not answer["ok"] and "unrecognized arguments: --enable-lora-bias" in answer["error"]


NASTY_PATHS = [
    "/adapters/with space/v1",
    "/adapters/comma,in/path",
    "/adapters/equals=sign/v1",
    '/adapters/"quoted" \'single\'/v1',
    "/adapters/colon: yes/#not-a-comment",
    "/adapters/{{ jinja }}/${NOT_A_VAR_HERE}",
    "/adapters/!!python/object/apply:os.system",
    "/adapters/new\nline/v1",
    "/adapters/ünïcödé/✓",
]


def test_adapter_paths_arrive_in_vllm_byte_for_byte(oracle):
    modules = [vllm_args.lora_module_arg(f"a{i}--1", p) for i, p in enumerate(NASTY_PATHS)]
    argv = _settings_argv(lora_modules=modules)
    launch = vllm_args.ReplicaLaunch("s", 0, argv, {}, {"model": argv[2], **_as_settings(modules)}, [])
    answer = oracle.ask(argv, config_yaml=vllm_args.to_config_yaml(launch))
    assert answer["ok"], answer.get("error")
    assert [(m["name"], m["path"]) for m in answer["args"]["lora_modules"]] == \
        [(f"a{i}--1", p) for i, p in enumerate(NASTY_PATHS)]


def _as_settings(modules: list[str]) -> dict:
    return {"served_model_name": ["Qwen/Qwen2.5-7B-Instruct"], "tensor_parallel_size": 1,
            "gpu_memory_utilization": 0.9, "api_server_count": 1, "enable_lora": True, "max_loras": 4,
            "max_lora_rank": 64, "lora_modules": modules}
