"""The engines' API key and the router's client key: references only, never values, in everything
fleetspec compiles; the key reaches vLLM through VLLM_API_KEY, never argv."""

from __future__ import annotations

import json

import pytest

from fleetspec import errors
from fleetspec.compile import slots, targets, vllm_args
from fleetspec.engine_api import contract
from fleetspec.reconcile import session
from fleetspec.spec import loading, models

SECRET_VALUE = "sk-do-not-leak-4242"


def fleet(runtime: dict | None = None, **server) -> models.FleetSpec:
    return models.FleetSpec.model_validate({
        "name": "keys",
        "base_model": {"id": "Qwen/Qwen2.5-7B-Instruct", "max_model_len": 4096},
        "gpus": "1x A100-80GB",
        "servers": [{"name": "main", "lora": {"max_loras": 2, "max_lora_rank": 16}, **server}],
        "specialists": [{"name": "sql", "version": "1", "path": "/adapters/sql/1"}],
        "runtime": {"engine_api_key": "${FLEET_ENGINE_KEY}", "router": {"api_key": "${FLEET_CLIENT_KEY}"},
                    **(runtime or {})},
    })


@pytest.mark.parametrize("field", ["engine_api_key", "router"])
def test_a_literal_key_is_refused_with_the_way_to_write_it(field):
    runtime = {"engine_api_key": SECRET_VALUE} if field == "engine_api_key" else {"router": {"api_key": SECRET_VALUE}}
    text = json.dumps({"name": "keys", "base_model": {"id": "m"}, "gpus": "1x A100-80GB",
                       "servers": [{"name": "main"}], "runtime": runtime})
    with pytest.raises(errors.SpecError) as caught:
        loading.load_text(text, "fleet.yaml")
    message = str(caught.value.diagnostics[0].message) + caught.value.diagnostics[0].hint
    assert "reference to an environment variable" in message and "${" in message
    assert SECRET_VALUE not in message  # the complaint must not echo the key into CI logs


def test_the_engine_gets_the_key_by_environment_reference_not_argv():
    spec = fleet()
    launch = vllm_args.replica_launch(spec, spec.servers[0], 0, host="127.0.0.1", port=8000)
    assert launch.env[vllm_args.API_KEY_ENV] == "${FLEET_ENGINE_KEY}"
    assert not any("api-key" in word or "FLEET_ENGINE_KEY" in word for word in launch.argv)


def test_api_key_in_extra_args_is_refused_with_a_location():
    spec = fleet(extra_args=["--api-key", "x"])
    problems = vllm_args.check_server(spec, spec.servers[0])
    assert [p.code for p in problems] == ["api-key-in-argv"]
    assert problems[0].path == "servers[0].extra_args[0]"


@pytest.mark.parametrize("target", ["vllm", "compose", "k8s", "router"])
def test_no_compiled_file_holds_a_key_value(target, monkeypatch):
    monkeypatch.setenv("FLEET_ENGINE_KEY", SECRET_VALUE)
    monkeypatch.setenv("FLEET_CLIENT_KEY", SECRET_VALUE)
    spec = fleet()
    output = targets.compile_target(spec, slots.sequential(spec), target)
    text = output.stdout + "\n".join(output.files.values())
    assert SECRET_VALUE not in text
    if target in ("compose", "k8s"):
        assert "FLEET_ENGINE_KEY" in text  # the reference travels; compose/k8s resolve it


def test_the_reconciler_reads_the_key_from_its_environment(monkeypatch):
    spec = fleet()
    monkeypatch.delenv("FLEET_ENGINE_KEY", raising=False)
    with pytest.raises(errors.PermanentError, match=r"FLEET_ENGINE_KEY is not set in this shell"):
        session.engine_api_key(spec)
    monkeypatch.setenv("FLEET_ENGINE_KEY", SECRET_VALUE)
    assert session.engine_api_key(spec) == SECRET_VALUE


def test_the_key_is_sent_as_vllm_expects_and_kept_out_of_repr():
    from fleetspec.engine_api import client

    assert contract.auth_headers("k") == [("Authorization", "Bearer k")]
    assert contract.auth_headers(None) == []
    assert SECRET_VALUE not in repr(client.EngineClient("http://h:1", SECRET_VALUE))


@pytest.mark.parametrize(("status", "body", "kind"), [
    (401, '{"error": "Unauthorized"}', contract.Unauthorized),
    (404, '{"detail": "Not Found"}', contract.RuntimeLoraDisabled),
    (400, '{"error": {"message": "bad rank", "type": "BadRequestError", "code": 400}}', contract.EngineError),
])
def test_refusals_are_typed_by_status_and_shape(status, body, kind):
    refused = contract.refusal("http://h:1", contract.LOAD, status, body, "load adapter a")
    assert type(refused) is kind


def test_unload_of_an_unknown_name_is_already_done_but_a_missing_route_is_not():
    unknown = '{"error": {"message": "The lora adapter \'a\' cannot be found.", "type": "NotFoundError"}}'
    assert contract.unload_outcome("http://h:1", "a", 404, unknown) is False
    assert contract.unload_outcome("http://h:1", "a", 200, "Success") is True
    with pytest.raises(contract.RuntimeLoraDisabled):
        contract.unload_outcome("http://h:1", "a", 404, '{"detail": "Not Found"}')
