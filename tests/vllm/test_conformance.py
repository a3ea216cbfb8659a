"""One HTTP conversation, run against real vLLM 0.32 and against the sim following 0.32.

Every test runs twice, `[vllm]` and `[sim]`, with the same assertions: the behaviour measured on
vLLM 0.32 and written down in docs/vllm-behaviour.md. A `[vllm]` failure means the document (and
so fleetspec's idea of vLLM) is wrong; a `[sim]` failure alone means the sim drifted. Compared:
status codes, the ErrorResponse `type` and `param`, and the fields fleetspec reads; message text
only by the prefix the document gives. Where the sim differs on purpose ("What remains different"
in that document) the test says so next to the assertion.

Both engines are keyed (VLLM_API_KEY): every request sends the key unless a test is about leaving
it out. Adapter names are unique per test so the tests do not depend on each other's order.
"""

from __future__ import annotations

import dataclasses
import pathlib
import re
import shutil
import socket
import sys
import time

import engines
import pytest
from engines import call

from fleetspec.engine_api import contract
from fleetspec.engine_api.client import EngineClient

BOTH = pytest.mark.parametrize("engine", ["vllm", "sim"], indirect=True)
ERROR_FIELDS = {"message", "type", "param", "code"}


def adapter(engine: engines.Engine, name: str, version: str = "1.0.0") -> str:
    return str(pathlib.Path(engine.model) / "adapters" / name / version)


def served(engine: engines.Engine) -> list[dict]:
    answer = call(engine, "GET", "/v1/models")
    assert answer.status == 200, answer.text
    return answer.json["data"]


def served_names(engine: engines.Engine) -> list[str]:
    return [card["id"] for card in served(engine)]


def load(engine: engines.Engine, name: str, path: str) -> engines.Answer:
    return call(engine, "POST", "/v1/load_lora_adapter", {"lora_name": name, "lora_path": path})


def unload(engine: engines.Engine, name: str) -> engines.Answer:
    return call(engine, "POST", "/v1/unload_lora_adapter", {"lora_name": name})


def assert_error(answer: engines.Answer, status: int, err_type: str, prefix: str = "", param=...,
                 contains: str = "") -> str:
    """vLLM's ErrorResponse: status, JSON content type, the four fields, `code` = status."""
    assert answer.status == status, f"{answer.status} {answer.text}"
    assert answer.headers.get("content-type") == "application/json", answer.headers
    error = answer.error
    assert set(error) == ERROR_FIELDS, answer.text
    assert (error["type"], error["code"]) == (err_type, status), answer.text
    assert error["message"].startswith(prefix), error["message"]
    assert contains in error["message"], error["message"]
    if param is not ...:
        assert error["param"] == param, answer.text
    return error["message"]


def assert_plain_success(answer: engines.Answer, text: str) -> None:
    """Load/unload successes: a plain string body, no Content-Type header at all."""
    assert (answer.status, answer.text) == (200, text), answer.text
    assert "content-type" not in answer.headers, answer.headers


# -- start-up, health, version, models ---------------------------------------------------------


@BOTH
def test_the_port_refuses_connections_while_loading_then_health_is_200_without_a_body(engine):
    startup = engine.startup
    # Observed from the spawn: connection refused until healthy, never a 503 or any other answer.
    assert startup.answers == [], f"answers before healthy: {startup.answers}"
    assert startup.refused >= 3, startup
    health = call(engine, "GET", "/health", key=False)
    assert (health.status, health.text) == (200, "")
    assert "content-type" not in health.headers, health.headers


@BOTH
def test_version_is_the_followed_release(engine):
    answer = call(engine, "GET", "/version", key=False)
    assert (answer.status, answer.json) == (200, {"version": engines.VERSION})


@BOTH
def test_models_lists_the_base_card_with_the_fields_fleetspec_reads(engine):
    answer = call(engine, "GET", "/v1/models")
    assert answer.status == 200 and answer.json["object"] == "list", answer.text
    base = answer.json["data"][0]
    assert (base["id"], base["root"], base["parent"], base["max_model_len"], base["object"]) == \
        (engine.model, engine.model, None, 512, "model")
    view = contract.models_view(engine.url, answer.status, answer.text)
    assert (view.base, view.root, view.max_model_len) == ((engine.model,), engine.model, 512)


@BOTH
def test_unknown_route_and_wrong_method(engine):
    assert (call(engine, "GET", "/nope", key=False).status, call(engine, "GET", "/nope", key=False).json) == \
        (404, {"detail": "Not Found"})
    wrong = call(engine, "GET", "/v1/load_lora_adapter")
    assert (wrong.status, wrong.json) == (405, {"detail": "Method Not Allowed"})


# -- adapters: load, list, unload --------------------------------------------------------------


@BOTH
def test_load_lists_adapters_in_load_order_and_unload_forgets_them(engine):
    alpha, beta = adapter(engine, "alpha"), adapter(engine, "beta")
    assert_plain_success(load(engine, "order-a", alpha), "Success: LoRA adapter 'order-a' added successfully.")
    assert_plain_success(load(engine, "order-b", beta), "Success: LoRA adapter 'order-b' added successfully.")
    cards = {card["id"]: card for card in served(engine)}
    assert served_names(engine)[-2:] == ["order-a", "order-b"]
    assert (cards["order-a"]["root"], cards["order-a"]["parent"], cards["order-a"]["max_model_len"]) == \
        (alpha, engine.model, None)
    view = contract.models_view(engine.url, 200, call(engine, "GET", "/v1/models").text)
    assert view.adapters["order-b"] == beta and view.parents["order-b"] == engine.model

    assert_plain_success(unload(engine, "order-a"), "Success: LoRA adapter 'order-a' removed successfully.")
    assert "order-a" not in served_names(engine)
    # A reload under the same name after unload goes to the end.
    assert load(engine, "order-a", alpha).status == 200
    assert served_names(engine)[-2:] == ["order-b", "order-a"]
    for name in ("order-a", "order-b"):
        assert unload(engine, name).status == 200
    assert_error(unload(engine, "order-a"), 404, "NotFoundError", "The lora adapter 'order-a' cannot be found.")


@dataclasses.dataclass(frozen=True)
class Refusal:
    id: str
    body: object  # JSON body, or bytes sent as is
    status: int
    err_type: str
    prefix: str = ""
    param: object = ...  # ... : not compared
    contains: str = ""
    content_type: str = "application/json"
    route: str = "/v1/load_lora_adapter"


def _refusals(model: str) -> list[Refusal]:
    adapters = pathlib.Path(model) / "adapters"
    return [
        Refusal("missing-path", {"lora_name": "r-missing", "lora_path": str(adapters / "nope/1.0.0")}, 404,
                "NotFoundError", "Loading lora r-missing failed: No adapter found for ", None),
        Refusal("relative-missing-path", {"lora_name": "r-rel", "lora_path": "relative/nothing"}, 404,
                "NotFoundError", "Loading lora r-rel failed: No adapter found for relative/nothing", None),
        # The engine's own words after the prefix (vLLM: "Worker failed with error '...'" from its worker
        # process) may differ in the sim: "What remains different", engine messages.
        Refusal("rank-above-max", {"lora_name": "r-wide", "lora_path": str(adapters / "too-wide/1.0.0")}, 500,
                "InternalServerError", "Call to add_lora method failed: ", None,
                contains="LoRA rank 32 is greater than max_lora_rank 16."),
        Refusal("truncated-safetensors", {"lora_name": "r-broken", "lora_path": str(adapters / "broken/1.0.0")}, 500,
                "InternalServerError", "Call to add_lora method failed: ", None),
        Refusal("name-is-the-base-model", {"lora_name": model, "lora_path": str(adapters / "alpha/1.0.0")}, 400,
                "InvalidUserInput", "The lora adapter '", None, contains="conflicts with a served base model."),
        Refusal("empty-name", {"lora_name": "", "lora_path": str(adapters / "alpha/1.0.0")}, 400,
                "InvalidUserInput", "Both 'lora_name' and 'lora_path' must be provided.", None),
        Refusal("empty-path", {"lora_name": "r-empty", "lora_path": ""}, 400,
                "InvalidUserInput", "Both 'lora_name' and 'lora_path' must be provided.", None),
        Refusal("path-field-missing", {"lora_name": "r-nopath"}, 400, "Bad Request", "1 validation error:",
                "body.lora_path", contains="'missing'"),
        Refusal("both-fields-missing", {}, 400, "Bad Request", "2 validation errors:", "body.lora_name"),
        # `param` is "body.<where the JSON decoder stopped>" (FastAPI's loc), not always body.0.
        Refusal("body-not-json", b"not json", 400, "Bad Request", "1 validation error:", "body.0",
                contains="json_invalid"),
        Refusal("body-json-broken-later", b"{not json", 400, "Bad Request", "1 validation error:", "body.1",
                contains="Expecting property name enclosed in double quotes"),
        Refusal("body-a-list", [], 400, "Bad Request", "1 validation error:", "body"),
        Refusal("body-empty", b"", 400, "Bad Request", "1 validation error:", "body", contains="'missing'"),
        Refusal("name-not-a-string", {"lora_name": 5, "lora_path": str(adapters / "alpha/1.0.0")}, 400,
                "Bad Request", "1 validation error:", "body.lora_name", contains="'string_type'"),
        Refusal("not-application-json", b'{"lora_name": "r-ct", "lora_path": "x"}', 400, "Bad Request", "",
                None, contains="Unsupported Media Type: Only 'application/json' is allowed",
                content_type="text/plain"),
        Refusal("unload-empty-name", {"lora_name": ""}, 400, "InvalidUserInput",
                "'lora_name' needs to be provided to unload a LoRA adapter.", None, route="/v1/unload_lora_adapter"),
        Refusal("unload-field-missing", {}, 400, "Bad Request", "1 validation error:", "body.lora_name",
                route="/v1/unload_lora_adapter"),
        Refusal("unload-unknown-name", {"lora_name": "r-never"}, 404, "NotFoundError",
                "The lora adapter 'r-never' cannot be found.", None, route="/v1/unload_lora_adapter"),
    ]


REFUSAL_IDS = [r.id for r in _refusals("/m")]


@BOTH
@pytest.mark.parametrize("case", REFUSAL_IDS)
def test_refused_loads_and_unloads(engine, case):
    refusal = next(r for r in _refusals(engine.model) if r.id == case)
    before = served_names(engine)
    if isinstance(refusal.body, bytes):
        answer = call(engine, "POST", refusal.route, raw=refusal.body, headers={"Content-Type": refusal.content_type})
    else:
        answer = call(engine, "POST", refusal.route, refusal.body)
    assert_error(answer, refusal.status, refusal.err_type, refusal.prefix, refusal.param, refusal.contains)
    assert served_names(engine) == before  # a refused load registers nothing
    assert call(engine, "GET", "/health").status == 200  # and the engine survives it


@BOTH
def test_a_body_that_is_not_utf8_is_fastapis_plain_400_not_an_error_response(engine):
    answer = call(engine, "POST", "/v1/load_lora_adapter", raw=b"\xff\xfe{", headers={"Content-Type": "application/json"})
    assert (answer.status, answer.json) == (400, {"detail": "There was an error parsing the body"}), answer.text


@BOTH
def test_a_header_that_is_not_safetensors_is_refused_with_a_500(engine, tmp_path):
    bad = tmp_path / "garbage"
    bad.mkdir()
    shutil.copy(pathlib.Path(adapter(engine, "alpha")) / "adapter_config.json", bad)
    (bad / "adapter_model.safetensors").write_bytes(b"\xff" * 8 + b"not a header at all")
    answer = load(engine, "r-garbage", str(bad))
    assert_error(answer, 500, "InternalServerError", "Call to add_lora method failed: ", None)
    assert "r-garbage" not in served_names(engine)


@BOTH
def test_a_name_already_loaded_is_refused_from_the_same_or_another_path(engine):
    assert load(engine, "dup", adapter(engine, "alpha")).status == 200
    try:
        for path in (adapter(engine, "alpha"), adapter(engine, "alpha", "1.1.0")):
            again = load(engine, "dup", path)
            assert_error(again, 400, "InvalidUserInput",
                         "The lora adapter 'dup' has already been loaded.", None, contains="load_inplace")
            assert contract.already_loaded(again.status, again.text)  # what the router's on-demand loader reads
        card = next(c for c in served(engine) if c["id"] == "dup")
        assert card["root"] == adapter(engine, "alpha")  # still the first path
    finally:
        unload(engine, "dup")


# -- requests ----------------------------------------------------------------------------------


@BOTH
def test_a_completion_on_a_loaded_adapter_then_metrics(engine):
    assert load(engine, "gen", adapter(engine, "gamma")).status == 200
    try:
        answer = call(engine, "POST", "/v1/completions", {"model": "gen", "prompt": "hello", "max_tokens": 5})
        assert answer.status == 200, answer.text
        body = answer.json
        assert body["model"] == "gen" and body["object"] == "text_completion", body
        assert isinstance(body["choices"][0]["text"], str)
        assert body["choices"][0]["finish_reason"] in ("stop", "length")
        assert 1 <= body["usage"]["completion_tokens"] <= 5
        metrics = call(engine, "GET", "/metrics", key=False)
    finally:
        unload(engine, "gen")
    assert metrics.status == 200
    assert metrics.headers["content-type"] == "text/plain; version=1.0.0; charset=utf-8"
    samples = [line for line in metrics.text.splitlines() if line and not line.startswith("#")]
    model_labels = f'engine="0",model_name="{engine.model}"'
    for name in ("vllm:num_requests_running", "vllm:num_requests_waiting"):
        assert any(line.startswith(f"{name}{{{model_labels}}} ") for line in samples), name
    reasons = set(re.findall(r'^vllm:request_success_total\{[^}]*finished_reason="(\w+)"', metrics.text, re.M))
    assert reasons == {"stop", "length", "abort", "error", "repetition"}, reasons
    info = [line for line in samples if line.startswith("vllm:lora_requests_info{")]
    # One series per label set ever seen; the one of the request stays after it ended. Both labels name
    # every adapter with a waiting or running request (vLLM fills both with the same keys).
    assert any('running_lora_adapters="gen"' in line and 'waiting_lora_adapters="gen"' in line
               and 'max_lora="2"' in line for line in info), info
    parsed = contract.lora_requests_info(metrics.text)
    assert parsed == contract.LoraRequestsInfo(2, (), ())  # the newest series: nothing in flight


@BOTH
def test_max_tokens_above_max_model_len_is_a_400(engine):
    answer = call(engine, "POST", "/v1/completions", {"model": engine.model, "prompt": "hi", "max_tokens": 600})
    assert_error(answer, 400, "BadRequestError", "max_tokens=600 cannot be greater than max_model_len=512.",
                 "max_tokens")


@BOTH
def test_an_unknown_model_or_an_unloaded_adapter_is_a_404(engine):
    for model in ("zzz", "order-never-loaded"):
        answer = call(engine, "POST", "/v1/completions", {"model": model, "prompt": "hi", "max_tokens": 2})
        message = assert_error(answer, 404, "NotFoundError", f"The model `{model}` does not exist.", "model")
        # Only base names are listed as aliases, never adapters.
        assert message == f"The model `{model}` does not exist. Valid aliases: {engine.model}."
        assert contract.model_missing(answer.status, answer.text)  # the router retries elsewhere on this


# -- API key -----------------------------------------------------------------------------------


@BOTH
def test_the_api_key_guards_v1_and_leaves_health_metrics_version_open(engine):
    for path in ("/v1/models", "/v1/nothing-here"):
        refused = call(engine, "GET", path, key=False)
        assert (refused.status, refused.json) == (401, {"error": "Unauthorized"}), refused.text
        assert "www-authenticate" not in refused.headers
    refused = call(engine, "POST", "/v1/load_lora_adapter", {"lora_name": "k", "lora_path": adapter(engine, "alpha")},
                   key=False)
    assert refused.status == 401
    assert "k" not in served_names(engine)
    key = engine.api_key
    for header, status in ((f"Bearer {key}", 200), (f"bearer {key}", 200), (f"Bearer  {key}", 401),
                           (key, 401), ("Bearer wrong", 401)):
        answer = call(engine, "GET", "/v1/models", key=False, headers={"Authorization": header})
        assert answer.status == status, (header, answer.status)
    assert call(engine, "GET", "/v1/models", key=False, headers={"X-API-Key": key}).status == 401
    for path in ("/health", "/metrics", "/version", "/ping"):
        assert call(engine, "GET", path, key=False).status == 200, path


# -- fleetspec's own client ----------------------------------------------------------------------


@BOTH
def test_fleetspecs_engine_client_against_the_engine(engine):
    client = EngineClient(engine.url, api_key=engine.api_key)
    alpha, alpha_new = adapter(engine, "alpha"), adapter(engine, "alpha", "1.1.0")
    assert client.healthy() is True
    assert client.version() == engines.VERSION
    view = client.models()
    assert (view.base, view.root, view.max_model_len) == ((engine.model,), engine.model, 512)
    try:
        assert client.load_adapter("client-a", alpha) is True
        assert client.load_adapter("client-a", alpha) is False  # already served so: idempotent
        assert client.models().adapters["client-a"] == alpha
        with pytest.raises(contract.AdapterNameTaken):
            client.load_adapter("client-a", alpha_new)
        with pytest.raises(contract.EngineError) as missing:
            client.load_adapter("client-missing", adapter(engine, "nope"))
        assert (missing.value.status, missing.value.err_type) == (404, "NotFoundError")
        assert type(missing.value) is contract.EngineError
        with pytest.raises(contract.EngineError) as wide:
            client.load_adapter("client-wide", adapter(engine, "too-wide"))
        assert (wide.value.status, wide.value.err_type) == (500, "InternalServerError")
        assert "LoRA rank 32 is greater than max_lora_rank 16." in wide.value.engine_message
        with pytest.raises(contract.EngineError) as base:
            client.load_adapter(engine.model, alpha)
        assert (base.value.status, base.value.err_type) == (400, "InvalidUserInput")
        assert "client-missing" not in client.models().adapters
        assert client.unload_adapter("client-a") is True
        assert client.unload_adapter("client-a") is False  # not served: already unloaded
    finally:
        client.unload_adapter("client-a")
    info = client.lora_requests_info()
    assert info is not None and info.max_lora == 2

    keyless = EngineClient(engine.url)
    assert keyless.healthy() is True  # /health is open
    for refused in (keyless.models, lambda: keyless.load_adapter("client-k", alpha),
                    lambda: keyless.unload_adapter("client-k"),
                    lambda: EngineClient(engine.url, api_key="wrong").models()):
        with pytest.raises(contract.Unauthorized) as caught:
            refused()
        assert caught.value.status == 401
    assert "client-k" not in client.models().adapters


# -- connections -------------------------------------------------------------------------------


@BOTH
def test_an_idle_keep_alive_connection_is_closed_after_about_five_seconds(engine):
    sock = socket.create_connection(("127.0.0.1", engine.port), timeout=10)
    try:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: localhost\r\n\r\n")
        received = b""
        while b"\r\n\r\n" not in received:
            chunk = sock.recv(4096)
            assert chunk, f"closed before answering: {received!r}"
            received += chunk
        answered = time.monotonic()
        assert received.startswith(b"HTTP/1.1 200"), received
        assert b"content-length: 0" in received.lower()  # nothing else to read
        sock.settimeout(4.0)
        with pytest.raises(TimeoutError):  # still open at 4 s
            sock.recv(1)
        sock.settimeout(4.0)  # closed well before 8 s
        assert sock.recv(1) == b""
        closed_after = time.monotonic() - answered
    finally:
        sock.close()
    assert 4.0 <= closed_after <= 6.5, closed_after


# -- start-up failures -------------------------------------------------------------------------


def test_an_unknown_flag_exits_2_on_vllm(vllm_installation):
    code, output, seconds = engines.run_to_exit("vllm", str(vllm_installation.python), str(vllm_installation.model),
                                                ("--bogus-flag",), timeout_s=120)
    assert code == 2, output[-3000:]
    assert "error: unrecognized arguments: --bogus-flag" in output, output[-3000:]


def test_an_unknown_flag_exits_2_on_the_sim(tiny_model):
    code, output, _ = engines.run_to_exit("sim", sys.executable, str(tiny_model), ("--bogus-flag",), timeout_s=30)
    assert code == 2, output
    assert "error: unrecognized arguments: --bogus-flag" in output, output
    assert re.search(r"^usage: ", output, re.M), output
