"""The sim engine as a real process on a real port, driven through `engine_api.client` (the one client for vLLM's API).

Every test starts `python -m fleetspec.sim serve ...` with the argv fleetspec compiles for vLLM,
talks HTTP to it, and kills it in teardown. Adapters are real directories from
tests/adapter_factory.py, shaped for the catalog's `fleetspec/tiny-test-llama` (hidden 64, 4 heads
of 16, 2 KV heads, intermediate 256, 2 layers, vocab 1024).
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

import adapter_factory
import pytest
from netkit import free_port

from fleetspec import errors
from fleetspec.catalog import models as catalog
from fleetspec.engine_api import client as engine_client
from fleetspec.engine_api import contract
from fleetspec.sim.engine import sanitize_message as sanitized
from fleetspec.spec import models

MODEL = "fleetspec/tiny-test-llama"
TINY = catalog.resolve(models.BaseModelSpec(id=MODEL)).architecture
RUNTIME = {"VLLM_ALLOW_RUNTIME_LORA_UPDATING": "true"}
START_TIMEOUT = 20.0


# ---------------------------------------------------------------------------------------------
# Adapters on disk, shaped for the catalog's tiny model


def write_adapter(directory: pathlib.Path, r: int = 8, arch: models.Architecture | None = None, **kwargs) -> str:
    kwargs.setdefault("targets", ("q_proj", "v_proj"))
    return str(adapter_factory.write_adapter(directory, arch or TINY, rank=r, base_model=MODEL, **kwargs))


# ---------------------------------------------------------------------------------------------
# The sim process


@dataclasses.dataclass
class Sim:
    process: subprocess.Popen
    port: int
    log_path: pathlib.Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log(self) -> str:
        return self.log_path.read_text()

    def wait_healthy(self, timeout: float = START_TIMEOUT) -> Sim:
        engine_client.EngineClient(self.url).wait_healthy(time.monotonic() + timeout, check=self._still_running)
        return self

    def _still_running(self) -> None:
        if self.process.poll() is not None:
            raise AssertionError(f"the sim exited with {self.process.returncode}:\n{self.log()}")

    def wait_exit(self, timeout: float = START_TIMEOUT) -> int:
        return self.process.wait(timeout)




@pytest.fixture
def start_sim(tmp_path):
    started: list[Sim] = []

    def start(*flags: str, env: dict | None = None, startup: float = 0.0, model: str = MODEL,
              module: str = "fleetspec.sim") -> Sim:
        port = free_port()
        log_path = tmp_path / f"sim-{port}.log"
        full_env = {**os.environ, "FLEETSPEC_SIM_STARTUP_SECONDS": str(startup), **(env or {})}
        full_env.pop("VLLM_API_KEY", None)
        with open(log_path, "wb") as log_file:
            process = subprocess.Popen(
                [sys.executable, "-m", module, "serve", model, "--host", "127.0.0.1", "--port", str(port), *flags],
                env=full_env, stdout=log_file, stderr=subprocess.STDOUT,
            )
        sim = Sim(process, port, log_path)
        started.append(sim)
        return sim

    yield start
    for sim in started:
        if sim.process.poll() is None:
            sim.process.kill()
        sim.process.wait(10)


def lora_server(start_sim, *flags: str, env: dict | None = None) -> Sim:
    return start_sim("--enable-lora", "--max-loras", "2", "--max-lora-rank", "16", *flags,
                     env={**RUNTIME, **(env or {})}).wait_healthy()


def http(method: str, url: str, body: dict | None = None, headers: dict | None = None) -> tuple[int, str, dict]:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, method=method, headers=headers or {})
    if data is not None:
        request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read().decode(), dict(response.headers)
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode(), dict(exc.headers)


def refusal(call) -> contract.EngineError:
    with pytest.raises(contract.EngineError) as caught:
        call()
    assert isinstance(caught.value, errors.PermanentError)
    return caught.value


# ---------------------------------------------------------------------------------------------
# Start-up, health, shutdown


def test_the_port_refuses_connections_while_loading_then_health_is_200(start_sim):
    # Real vLLM binds its port early but listens only once the engine is up (docs/vllm-behaviour.md).
    sim = start_sim(startup=1.5)
    time.sleep(0.5)
    assert sim.process.poll() is None
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", sim.port), timeout=2).close()
    assert engine_client.EngineClient(sim.url).healthy() is False
    sim.wait_healthy()
    assert http("GET", sim.url + "/health")[:2] == (200, "")
    assert "Starting vLLM API server on http://127.0.0.1:" in sim.log()


def test_sigterm_exits_cleanly(start_sim):
    sim = start_sim().wait_healthy()
    sim.process.send_signal(signal.SIGTERM)
    assert sim.wait_exit() == 0
    assert "Shutting down FastAPI HTTP server." in sim.log()
    with pytest.raises(errors.TemporaryError):
        engine_client.EngineClient(sim.url).models()


def test_version_and_models_of_a_base_only_server(start_sim):
    sim = start_sim("--served-model-name", "main", "--max-model-len", "1K").wait_healthy()
    assert engine_client.EngineClient(sim.url).version() == "0.33.0"
    view = engine_client.EngineClient(sim.url).models()
    assert view == contract.ModelsView(base=("main",), root=MODEL, max_model_len=1024, adapters={}, parents={})
    card = json.loads(http("GET", sim.url + "/v1/models")[1])["data"][0]
    assert (card["id"], card["object"], card["owned_by"], card["root"], card["parent"]) == (
        "main", "model", "vllm", MODEL, None)


def test_max_model_len_defaults_to_the_models_own_limit(start_sim):
    sim = start_sim().wait_healthy()
    assert engine_client.EngineClient(sim.url).models().max_model_len == 2048


@pytest.mark.parametrize("flags, env, code, last_line", [
    (["--max-lora-rank", "24"], {}, 2,
     "vllm serve: error: argument --max-lora-rank: invalid choice: 24 (choose from 1, 8, 16, 32, 64, 128, 256, 320, 512)"),
    (["--enable-lora", "--max-loras", "4", "--max-cpu-loras", "2"], {}, 1,
     "ValueError: max_cpu_loras (2) must be >= max_loras (4)."),
    (["--api-server-count", "2"], RUNTIME, 1,
     "ValueError: VLLM_ALLOW_RUNTIME_LORA_UPDATING cannot be used with api_server_count > 1"),
    (["--lora-extra-vocab-size", "256"], {}, 2, "vllm serve: error: unrecognized arguments: --lora-extra-vocab-size 256"),
    (["--tensor-parallel-size", "3"], {}, 1,
     "ValueError: Total number of attention heads (4) must be divisible by tensor parallel size (3)."),
])
def test_refused_argv_exits_like_vllm(start_sim, flags, env, code, last_line):
    sim = start_sim(*flags, env=env)
    assert sim.wait_exit() == code
    assert sim.log().strip().splitlines()[-1] == last_line


def test_unmodelled_flags_are_ignored_with_a_warning(start_sim):
    sim = start_sim("--enable-prefix-caching", "--block-size", "32").wait_healthy()
    assert "The sim ignores flags it does not model: --enable-prefix-caching --block-size 32" in sim.log()


@pytest.mark.parametrize("version, code", [("0.32", 2), ("0.33", 0)])
def test_the_flag_set_follows_the_vllm_version(start_sim, version, code):
    # --disable-log-requests exists only in 0.33 (EnableDisableAction); 0.32's argparse exits 2.
    sim = start_sim("--disable-log-requests", env={"FLEETSPEC_SIM_VLLM_VERSION": version})
    if code:
        assert sim.wait_exit() == 2
        assert sim.log().strip().splitlines()[-1] == "vllm serve: error: unrecognized arguments: --disable-log-requests"
    else:
        sim.wait_healthy()
        assert engine_client.EngineClient(sim.url).version() == "0.33.0"


def test_an_unknown_flag_exits_2(start_sim):
    sim = start_sim("--bogus-flag")
    assert sim.wait_exit() == 2
    assert sim.log().strip().splitlines()[-1] == "vllm serve: error: unrecognized arguments: --bogus-flag"


def test_vllm_shim_runs_the_same_argv(start_sim):
    sim = start_sim("--enable-lora", module="fleetspec.sim.vllm_shim").wait_healthy()
    assert engine_client.EngineClient(sim.url).models().base == (MODEL,)
    version = subprocess.run([sys.executable, "-m", "fleetspec.sim.vllm_shim", "--version"],
                             capture_output=True, text=True, timeout=30)
    assert (version.returncode, version.stdout.strip()) == (0, "0.33.0")


# ---------------------------------------------------------------------------------------------
# Static adapters


def test_static_lora_modules_load_at_startup(start_sim, tmp_path):
    sql = write_adapter(tmp_path / "sql")
    chat = write_adapter(tmp_path / "chat")
    item = json.dumps({"name": "chat", "path": chat, "base_model_name": "main"})
    sim = start_sim("--served-model-name", "main", "--enable-lora", "--lora-modules", f"sql={sql}", item).wait_healthy()
    view = engine_client.EngineClient(sim.url).models()
    assert view.adapters == {"sql": sql, "chat": chat}
    assert view.parents == {"sql": "main", "chat": "main"}
    assert f"Loaded new LoRA adapter: name 'sql', path '{sql}'" in sim.log()


def test_a_bad_static_adapter_aborts_startup(start_sim, tmp_path):
    big = write_adapter(tmp_path / "big", r=32)
    sim = start_sim("--enable-lora", "--lora-modules", f"big={big}")
    assert sim.wait_exit() == 1
    assert sim.log().strip().splitlines()[-1] == (
        "ValueError: Call to add_lora method failed: LoRA rank 32 is greater than max_lora_rank 16.")


def test_a_missing_static_adapter_aborts_startup(start_sim, tmp_path):
    sim = start_sim("--enable-lora", "--lora-modules", f"gone={tmp_path / 'gone'}")
    assert sim.wait_exit() == 1
    assert sim.log().strip().splitlines()[-1] == (
        f"ValueError: Loading lora gone failed: No adapter found for {sanitized(str(tmp_path / 'gone'))}")


# ---------------------------------------------------------------------------------------------
# Runtime loading and unloading


def test_load_and_unload_are_idempotent(start_sim, tmp_path):
    sim = lora_server(start_sim)
    path = write_adapter(tmp_path / "sql" / "1.0.0")
    assert engine_client.EngineClient(sim.url).load_adapter("sql@1.0.0", path) is True
    assert engine_client.EngineClient(sim.url).load_adapter("sql@1.0.0", path) is False
    view = engine_client.EngineClient(sim.url).models()
    assert (view.base, view.adapters, view.parents) == ((MODEL,), {"sql@1.0.0": path}, {"sql@1.0.0": MODEL})
    assert view.serves("sql@1.0.0", path) and not view.serves("sql@1.0.0", "/elsewhere")
    assert engine_client.EngineClient(sim.url).unload_adapter("sql@1.0.0") is True
    assert engine_client.EngineClient(sim.url).unload_adapter("sql@1.0.0") is False
    assert engine_client.EngineClient(sim.url).models().adapters == {}


def test_raw_load_and_unload_bodies_are_vllms(start_sim, tmp_path):
    sim = lora_server(start_sim)
    path = write_adapter(tmp_path / "sql")
    load = {"lora_name": "sql", "lora_path": path}
    assert http("POST", sim.url + "/v1/load_lora_adapter", load)[:2] == (
        200, "Success: LoRA adapter 'sql' added successfully.")
    status, body, _ = http("POST", sim.url + "/v1/load_lora_adapter", load)
    assert (status, json.loads(body)) == (400, {"error": {
        "message": "The lora adapter 'sql' has already been loaded. If you want to load the adapter in place, "
                   "set 'load_inplace' to True.",
        "type": "InvalidUserInput", "param": None, "code": 400}})
    assert http("POST", sim.url + "/v1/unload_lora_adapter", {"lora_name": "sql"})[:2] == (
        200, "Success: LoRA adapter 'sql' removed successfully.")
    status, body, _ = http("POST", sim.url + "/v1/unload_lora_adapter", {"lora_name": "sql"})
    assert (status, json.loads(body)["error"]["message"]) == (404, "The lora adapter 'sql' cannot be found.")
    assert http("POST", sim.url + "/v1/load_lora_adapter", {"lora_name": "x"})[0] == 400  # no lora_path


def test_loading_a_served_name_from_another_path_is_refused(start_sim, tmp_path):
    sim = lora_server(start_sim)
    engine_client.EngineClient(sim.url).load_adapter("sql", write_adapter(tmp_path / "v1"))
    refused = refusal(lambda: engine_client.EngineClient(sim.url).load_adapter("sql", write_adapter(tmp_path / "v2")))
    assert isinstance(refused, contract.AdapterNameTaken)
    assert refused.hint.startswith("Load new weights under a new name")


@pytest.mark.parametrize("make, status, message", [
    (lambda d: write_adapter(d, r=32), 500,
     "Call to add_lora method failed: LoRA rank 32 is greater than max_lora_rank 16."),
    (lambda d: write_adapter(d, config={"use_dora": True}), 500,
     "Call to add_lora method failed: vLLM does not yet support DoRA."),
    (lambda d: write_adapter(d, config={"bias": "all"}), 500,
     "Call to add_lora method failed: Adapter bias is not supported."),
    (lambda d: write_adapter(d, weights="none"), 500, "Call to add_lora method failed: {path} doesn't contain tensors"),
    (lambda d: str(d / "missing"), 404, "Loading lora bad failed: No adapter found for {path}"),
])
def test_engine_refusals_keep_vllms_status_and_text(start_sim, tmp_path, make, status, message):
    sim = lora_server(start_sim)
    path = make(tmp_path / "bad")
    refused = refusal(lambda: engine_client.EngineClient(sim.url).load_adapter("bad", path))
    # vLLM sanitises paths in every error message (sanitize_message): /tmp/... becomes <path>.
    assert (refused.status, refused.engine_message) == (status, sanitized(message.format(path=path)))
    assert engine_client.EngineClient(sim.url).models().adapters == {}


def test_adapter_for_another_model_is_refused_by_shape_or_module(start_sim, tmp_path):
    sim = lora_server(start_sim)
    wide = write_adapter(tmp_path / "wide", arch=TINY.model_copy(update={"hidden_size": 128}))
    refused = refusal(lambda: engine_client.EngineClient(sim.url).load_adapter("wide", wide))
    assert (refused.status, refused.engine_message) == (500, "Call to add_lora method failed: The size of tensor a "
                                                             "(64) must match the size of tensor b (128) at non-singleton dimension 1")
    gpt2_style = {"base_model.model.model.layers.0.self_attn.c_attn.lora_A.weight": ("BF16", [8, 64]),
                  "base_model.model.model.layers.0.self_attn.c_attn.lora_B.weight": ("BF16", [192, 8])}
    odd = write_adapter(tmp_path / "odd", tensors=gpt2_style)
    refused = refusal(lambda: engine_client.EngineClient(sim.url).load_adapter("odd", odd))
    assert refused.engine_message.startswith(
        f"Call to add_lora method failed: While loading {sanitized(odd)}, expected target modules in")
    assert "'model.layers.0.self_attn.c_attn'" in refused.engine_message


def test_adapter_named_like_the_base_model_conflicts(start_sim, tmp_path):
    sim = lora_server(start_sim, "--served-model-name", "main")
    refused = refusal(lambda: engine_client.EngineClient(sim.url).load_adapter("main", write_adapter(tmp_path / "a")))
    assert (refused.status, refused.engine_message) == (400, "The lora adapter 'main' conflicts with a served base model.")


def test_runtime_loading_is_404_unless_enabled(start_sim, tmp_path):
    sim = start_sim("--enable-lora").wait_healthy()
    status, body, _ = http("POST", sim.url + "/v1/load_lora_adapter", {"lora_name": "a", "lora_path": "/x"})
    assert (status, json.loads(body)) == (404, {"detail": "Not Found"})
    refused = refusal(lambda: engine_client.EngineClient(sim.url).load_adapter("a", write_adapter(tmp_path / "a")))
    assert isinstance(refused, contract.RuntimeLoraDisabled)
    assert "VLLM_ALLOW_RUNTIME_LORA_UPDATING=true" in refused.hint
    assert isinstance(refusal(lambda: engine_client.EngineClient(sim.url).unload_adapter("a")), contract.RuntimeLoraDisabled)


def test_api_key_guards_v1_but_not_health(start_sim, tmp_path):
    sim = lora_server(start_sim, "--api-key", "s3cret")
    assert engine_client.EngineClient(sim.url).healthy() is True
    refused = refusal(lambda: engine_client.EngineClient(sim.url).models())
    assert refused.status == 401 and "API key" in str(refused)
    assert http("GET", sim.url + "/v1/models")[:2] == (401, '{"error": "Unauthorized"}')
    path = write_adapter(tmp_path / "a")
    assert engine_client.EngineClient(sim.url, "s3cret").load_adapter("a", path) is True
    assert engine_client.EngineClient(sim.url, "s3cret").models().adapters == {"a": path}


# ---------------------------------------------------------------------------------------------
# Requests


def complete(sim: Sim, model: str | None, chat: bool = False, **extra) -> tuple[int, dict]:
    if chat:
        body = {"messages": [{"role": "user", "content": "write a python function"}], **extra}
        path = "/v1/chat/completions"
    else:
        body = {"prompt": "write a python function", **extra}
        path = "/v1/completions"
    if model is not None:
        body["model"] = model
    status, text, _ = http("POST", sim.url + path, body)
    return status, json.loads(text)


def test_completions_name_the_adapter_that_answered(start_sim, tmp_path):
    sim = lora_server(start_sim)
    engine_client.EngineClient(sim.url).load_adapter("py", write_adapter(tmp_path / "py"))
    status, body = complete(sim, "py")
    assert status == 200 and body["object"] == "text_completion" and body["model"] == "py"
    text = body["choices"][0]["text"]
    assert text.startswith(f"model=py adapter=py base={MODEL} prompt=")
    assert complete(sim, "py")[1]["choices"][0]["text"] == text  # deterministic
    base = complete(sim, None)[1]
    assert base["model"] == MODEL and base["choices"][0]["text"].startswith(f"model={MODEL} adapter=none ")
    assert body["usage"] == {"prompt_tokens": 4, "completion_tokens": 12, "total_tokens": 16, "prompt_tokens_details": None}


def test_chat_completion_and_max_tokens(start_sim, tmp_path):
    sim = lora_server(start_sim)
    engine_client.EngineClient(sim.url).load_adapter("py", write_adapter(tmp_path / "py"))
    status, body = complete(sim, "py", chat=True, max_tokens=2)
    assert status == 200 and body["object"] == "chat.completion"
    choice = body["choices"][0]
    assert choice["message"]["role"] == "assistant"
    assert (choice["message"]["content"], choice["finish_reason"]) == ("model=py adapter=py", "length")


def test_unknown_model_is_404(start_sim):
    sim = lora_server(start_sim)
    for chat in (False, True):
        status, body = complete(sim, "nope", chat=chat)
        assert (status, body) == (404, {"error": {
            "message": f"The model `nope` does not exist. Valid aliases: {MODEL}.", "type": "NotFoundError",
            "param": "model", "code": 404}})


def sse_events(sim: Sim, path: str, body: dict) -> list:
    request = urllib.request.Request(sim.url + path, data=json.dumps(body).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.headers["Content-Type"].startswith("text/event-stream")
        lines = response.read().decode().split("\n\n")
    events = [line.removeprefix("data: ") for line in lines if line]
    assert events[-1] == "[DONE]"
    return [json.loads(e) for e in events[:-1]]


def test_streams_carry_the_same_text(start_sim, tmp_path):
    sim = lora_server(start_sim)
    engine_client.EngineClient(sim.url).load_adapter("py", write_adapter(tmp_path / "py"))
    whole = complete(sim, "py")[1]["choices"][0]["text"]
    chunks = sse_events(sim, "/v1/completions", {"model": "py", "prompt": "write a python function", "stream": True})
    assert "".join(c["choices"][0]["text"] for c in chunks) == whole
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"
    chat = sse_events(sim, "/v1/chat/completions", {
        "model": "py", "messages": [{"role": "user", "content": "hi"}], "stream": True,
        "stream_options": {"include_usage": True}})
    assert chat[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert "".join(c["choices"][0]["delta"]["content"] for c in chat[1:-1]).startswith("model=py adapter=py ")
    assert chat[-1]["choices"] == [] and chat[-1]["usage"]["completion_tokens"] == 12


def resident(sim: Sim) -> dict[str, list[str]]:
    text = http("GET", sim.url + "/metrics")[1]
    tiers: dict[str, list[str]] = {"cpu": [], "gpu": []}
    for line in text.splitlines():
        if line.startswith("fleetspec_sim_lora_resident{"):
            labels = contract._parse_labels(line)
            tiers[labels["tier"]].append(labels["lora_name"])
    return tiers


def test_requests_move_adapters_through_cpu_and_gpu_lru(start_sim, tmp_path):
    sim = lora_server(start_sim, "--max-loras", "1", "--max-cpu-loras", "2")
    for name in ("a", "b", "c"):
        engine_client.EngineClient(sim.url).load_adapter(name, write_adapter(tmp_path / name))
    assert resident(sim) == {"cpu": ["b", "c"], "gpu": ["c"]}
    assert complete(sim, "a")[0] == 200  # evicted: re-read from disk
    assert resident(sim) == {"cpu": ["c", "a"], "gpu": ["a"]}
    assert sorted(engine_client.EngineClient(sim.url).models().adapters) == ["a", "b", "c"]  # still listed


def test_lora_requests_info_shows_running_adapters(start_sim, tmp_path):
    sim = lora_server(start_sim, env={"FLEETSPEC_SIM_TOKEN_SECONDS": "0.1"})
    engine_client.EngineClient(sim.url).load_adapter("slow", write_adapter(tmp_path / "slow"))
    idle = engine_client.EngineClient(sim.url).lora_requests_info()
    assert idle == contract.LoraRequestsInfo(max_lora=2, running=(), waiting=())
    worker = threading.Thread(target=complete, args=(sim, "slow"))
    worker.start()
    try:
        deadline = time.monotonic() + 10
        while engine_client.EngineClient(sim.url).lora_requests_info().running != ("slow",):
            assert time.monotonic() < deadline, "the running adapter never showed in /metrics"
    finally:
        worker.join(20)
    metrics = http("GET", sim.url + "/metrics")[1]
    assert f'vllm:request_success_total{{engine="0",model_name="{MODEL}",finished_reason="stop"}} 1.0' in metrics
    assert 'fleetspec_sim_lora_requests_total{lora_name="slow"} 1.0' in metrics


def test_no_lora_metric_without_enable_lora(start_sim):
    sim = start_sim().wait_healthy()
    assert engine_client.EngineClient(sim.url).lora_requests_info() is None


# ---------------------------------------------------------------------------------------------
# Unreachable engines


class FakeClock:
    def __init__(self):
        self.now = 1000.0
        self.slept: list[float] = []

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


def test_nothing_listening_is_temporary():
    url = f"http://127.0.0.1:{free_port()}"
    assert engine_client.EngineClient(url).healthy() is False
    with pytest.raises(contract.EngineUnavailable) as caught:
        engine_client.EngineClient(url).models()
    assert isinstance(caught.value, errors.TemporaryError)
    with pytest.raises(errors.TemporaryError):
        engine_client.EngineClient(url).load_adapter("a", "/a")
    clock = FakeClock()
    with pytest.raises(contract.EngineUnavailable):
        engine_client.EngineClient(url).wait_healthy(deadline=clock.now + 1.0, clock=clock, interval=0.25)
    assert clock.slept == [0.25, 0.25, 0.25, 0.25]


def test_routes_methods_and_bodies_fail_like_fastapi(start_sim):
    sim = lora_server(start_sim)
    assert http("GET", sim.url + "/v1/nothing-here")[:2] == (404, '{"detail": "Not Found"}')
    assert http("GET", sim.url + "/v1/completions")[:2] == (405, '{"detail": "Method Not Allowed"}')
    request = urllib.request.Request(sim.url + "/v1/load_lora_adapter", data=b"lora_name=a", method="POST",
                                     headers={"Content-Type": "application/x-www-form-urlencoded"})
    with pytest.raises(urllib.error.HTTPError) as caught:
        urllib.request.urlopen(request, timeout=10)
    assert caught.value.code == 400
    assert json.loads(caught.value.read())["error"]["type"] == "Bad Request"  # vLLM's validation handler
    status, body = complete(sim, None, max_tokens=0)
    assert (status, body["error"]["message"]) == (400, "max_tokens must be at least 1, got 0.")
