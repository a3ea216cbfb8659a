"""A small client for the parts of vLLM's HTTP API the reconciler uses (vllm-facts §2).

Failures come back as two kinds, so callers decide without reading English:
- `errors.TemporaryError` (`EngineUnavailable`): nothing answered, the answer timed out, or the
  engine said 502/503/504. Retrying later may succeed (it is still loading, or restarting).
- `errors.PermanentError` (`EngineError`): the engine answered and refused. Its own message is kept
  verbatim in `.engine_message` (rank above max_lora_rank, missing path, name conflicts...).

Loading and unloading are idempotent: an adapter already served under the same name and path is
"already loaded", and unloading a name the engine does not know is "already unloaded". Which case
applies is decided from `/v1/models` and the shape of the reply, never from the wording of a message.

Standard library only (urllib), and no proxies: engines are reached directly.
"""

from __future__ import annotations

import dataclasses
import http.client
import json
import re
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from typing import Protocol

from fleetspec import errors

DEFAULT_TIMEOUT = 10.0
LOAD_TIMEOUT = 120.0  # the engine reads the adapter from disk and copies it to the GPU before answering
RETRYABLE_STATUSES = frozenset({502, 503, 504})

_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class EngineUnavailable(errors.TemporaryError):
    """No usable answer from the engine; it may be starting, restarting or overloaded."""

    def __init__(self, message: str, url: str, status: int | None = None):
        super().__init__(message)
        self.url = url
        self.status = status


class EngineError(errors.PermanentError):
    """The engine refused a request. `engine_message` is its own text, verbatim."""

    def __init__(self, message: str, url: str, status: int, engine_message: str, err_type: str | None = None,
                 hint: str = ""):
        super().__init__(message)
        self.url = url
        self.status = status
        self.engine_message = engine_message
        self.err_type = err_type
        self.hint = hint


class RuntimeLoraDisabled(EngineError):
    """/v1/load_lora_adapter is not served: VLLM_ALLOW_RUNTIME_LORA_UPDATING is off."""


class AdapterNameTaken(EngineError):
    """The name is already served from another path; vLLM would keep serving the old weights."""


@dataclasses.dataclass(frozen=True)
class ModelsView:
    """`/v1/models` split into base models and adapters (adapters are the cards with a parent)."""

    base: tuple[str, ...]  # served base-model names, first = the one metrics and defaults use
    root: str | None  # the `--model` value the engine was started with
    max_model_len: int | None
    adapters: Mapping[str, str]  # served adapter name → its path (the card's root)
    parents: Mapping[str, str]  # adapter name → base name it is attached to

    def serves(self, name: str, path: str | None = None) -> bool:
        """Whether `name` is served as an adapter (from `path`, when given)."""
        return name in self.adapters and (path is None or self.adapters[name] == path)


@dataclasses.dataclass(frozen=True)
class LoraRequestsInfo:
    """`vllm:lora_requests_info` from /metrics: adapters with running and waiting requests."""

    max_lora: int | None
    running: tuple[str, ...]
    waiting: tuple[str, ...]


class Clock(Protocol):
    def monotonic(self) -> float: ...

    def sleep(self, seconds: float) -> None: ...


class SystemClock:
    def monotonic(self) -> float:
        return time.monotonic()

    def sleep(self, seconds: float) -> None:
        time.sleep(seconds)


SYSTEM_CLOCK = SystemClock()


# ---------------------------------------------------------------------------------------------
# Health


def health(base_url: str, timeout: float = 2.0) -> bool:
    """True when `/health` answers 200; False while loading (503), unreachable, or anything else."""
    try:
        status, _ = _request("GET", base_url, "/health", timeout=timeout)
    except errors.FleetspecError:
        return False
    return status == 200


def wait_healthy(base_url: str, deadline: float, clock: Clock = SYSTEM_CLOCK, interval: float = 0.25,
                 check: Callable[[], None] | None = None) -> None:
    """Poll `/health` until it answers 200 or `deadline` (on `clock.monotonic()`) passes.

    `check` runs between polls and may raise to give up early, e.g. when the container exited.
    """
    while True:
        remaining = deadline - clock.monotonic()
        if health(base_url, timeout=max(0.1, min(2.0, remaining))):
            return
        if check is not None:
            check()
        remaining = deadline - clock.monotonic()
        if remaining <= 0:
            raise EngineUnavailable(
                f"The engine at {base_url} did not become healthy in time; it may still be loading the model "
                "(check its logs, or allow a longer start-up).",
                base_url,
            )
        clock.sleep(min(interval, remaining))


# ---------------------------------------------------------------------------------------------
# Models and adapters


def list_models(base_url: str, api_key: str | None = None, timeout: float = DEFAULT_TIMEOUT) -> ModelsView:
    status, body = _request("GET", base_url, "/v1/models", api_key=api_key, timeout=timeout)
    if status != 200:
        raise _refusal(base_url, "/v1/models", status, body, "list the served models")
    document = _json(body)
    cards = document.get("data") if isinstance(document, dict) else None
    if not isinstance(cards, list) or not all(isinstance(c, dict) and "id" in c for c in cards):
        raise EngineError(
            f"The server at {base_url} answered /v1/models with something that is not a vLLM model list.",
            base_url, status, body[:200],
        )
    bases = [c for c in cards if not c.get("parent")]
    loras = [c for c in cards if c.get("parent")]
    return ModelsView(
        base=tuple(str(c["id"]) for c in bases),
        root=str(bases[0].get("root")) if bases and bases[0].get("root") is not None else None,
        max_model_len=bases[0].get("max_model_len") if bases else None,
        adapters={str(c["id"]): str(c.get("root")) for c in loras},
        parents={str(c["id"]): str(c["parent"]) for c in loras},
    )


def load_adapter(base_url: str, name: str, path: str, api_key: str | None = None,
                 timeout: float = LOAD_TIMEOUT) -> bool:
    """Serve adapter `name` from `path`. True if loaded now, False if it was already served so.

    Raises AdapterNameTaken when `name` is served from another path (load new weights under a new
    name: vLLM keys its prefix cache on name and path), RuntimeLoraDisabled, or EngineError.
    """
    view = list_models(base_url, api_key=api_key)
    if view.serves(name, path):
        return False
    if view.serves(name):
        raise _name_taken(base_url, name, path, view.adapters[name])
    payload = {"lora_name": name, "lora_path": path}
    status, body = _request("POST", base_url, "/v1/load_lora_adapter", payload, api_key, timeout)
    if status == 200:
        return True
    if status == 400:
        # Another client may have loaded it between our look and our load.
        view = list_models(base_url, api_key=api_key)
        if view.serves(name, path):
            return False
    raise _refusal(base_url, "/v1/load_lora_adapter", status, body, f"load adapter {name} from {path}")


def unload_adapter(base_url: str, name: str, api_key: str | None = None, timeout: float = DEFAULT_TIMEOUT) -> bool:
    """Stop serving adapter `name`. True if unloaded now, False if the engine did not serve it."""
    status, body = _request("POST", base_url, "/v1/unload_lora_adapter", {"lora_name": name}, api_key, timeout)
    if status == 200:
        return True
    if status == 404 and _error_message(body) is not None:
        return False  # an ErrorResponse 404: the route exists and the name is unknown
    raise _refusal(base_url, "/v1/unload_lora_adapter", status, body, f"unload adapter {name}")


def version(base_url: str, timeout: float = DEFAULT_TIMEOUT) -> str:
    status, body = _request("GET", base_url, "/version", timeout=timeout)
    if status != 200 or not isinstance(_json(body), dict):
        raise _refusal(base_url, "/version", status, body, "read the engine version")
    return str(_json(body).get("version"))


def lora_requests_info(base_url: str, timeout: float = DEFAULT_TIMEOUT) -> LoraRequestsInfo | None:
    """The latest `vllm:lora_requests_info` sample; None when LoRA is off (no such metric)."""
    status, body = _request("GET", base_url, "/metrics", timeout=timeout)
    if status != 200:
        raise _refusal(base_url, "/metrics", status, body, "read metrics")
    return parse_lora_requests_info(body)


def parse_lora_requests_info(text: str) -> LoraRequestsInfo | None:
    """Pure: pick the most recent `vllm:lora_requests_info` sample (its value is a timestamp)."""
    best: tuple[float, dict[str, str]] | None = None
    for line in text.splitlines():
        if not line.startswith("vllm:lora_requests_info{"):
            continue
        labels_text, _, value = line[len("vllm:lora_requests_info{"):].rpartition("}")
        try:
            stamp = float(value.split()[0])
        except (ValueError, IndexError):
            continue
        if best is None or stamp >= best[0]:
            best = (stamp, _parse_labels(labels_text))
    if best is None:
        return None
    labels = best[1]

    def names(key: str) -> tuple[str, ...]:
        return tuple(n for n in labels.get(key, "").split(",") if n)

    max_lora = labels.get("max_lora", "")
    return LoraRequestsInfo(int(max_lora) if max_lora.isdigit() else None,
                            names("running_lora_adapters"), names("waiting_lora_adapters"))


_LABEL = re.compile(r'([A-Za-z_][A-Za-z0-9_]*)="((?:[^"\\]|\\.)*)"')


def _parse_labels(text: str) -> dict[str, str]:
    def unescape(value: str) -> str:
        return re.sub(r"\\(.)", lambda m: "\n" if m.group(1) == "n" else m.group(1), value)

    return {match.group(1): unescape(match.group(2)) for match in _LABEL.finditer(text)}


# ---------------------------------------------------------------------------------------------
# Transport


def _request(method: str, base_url: str, path: str, payload: dict | None = None, api_key: str | None = None,
             timeout: float = DEFAULT_TIMEOUT) -> tuple[int, str]:
    """(status, body text) for any HTTP answer; EngineUnavailable when there is none."""
    url = base_url.rstrip("/") + path
    data = json.dumps(payload).encode() if payload is not None else None
    request = urllib.request.Request(url, data=data, method=method)
    if data is not None:
        request.add_header("Content-Type", "application/json")
    if api_key:
        request.add_header("Authorization", f"Bearer {api_key}")
    try:
        with _OPENER.open(request, timeout=timeout) as response:
            status, body = response.status, response.read()
    except urllib.error.HTTPError as exc:
        status, body = exc.code, _read_quietly(exc)
    except (urllib.error.URLError, http.client.HTTPException, OSError) as exc:  # OSError covers timeouts
        reason = getattr(exc, "reason", exc)
        raise EngineUnavailable(f"Could not reach the engine at {url}: {reason}.", base_url) from exc
    text = body.decode("utf-8", errors="replace")
    if status in RETRYABLE_STATUSES:
        detail = _error_message(text) or f"HTTP {status}"
        raise EngineUnavailable(f"The engine at {base_url} is not ready ({detail}); try again shortly.", base_url, status)
    return status, text


def _read_quietly(exc: urllib.error.HTTPError) -> bytes:
    try:
        return exc.read()
    except (OSError, http.client.HTTPException):
        return b""


def _json(text: str):
    try:
        return json.loads(text)
    except ValueError:
        return None


def _error_message(text: str) -> str | None:
    """The message of vLLM's ErrorResponse `{"error": {"message": ...}}`; None for other shapes."""
    body = _json(text)
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        message = body["error"].get("message")
        return str(message) if message is not None else None
    return None


def _refusal(base_url: str, path: str, status: int, text: str, action: str) -> EngineError:
    body = _json(text)
    if status == 404 and isinstance(body, dict) and body.get("detail") == "Not Found" and "lora_adapter" in path:
        return RuntimeLoraDisabled(
            f"The engine at {base_url} does not allow loading adapters at runtime, so fleetspec could not {action}.",
            base_url, status, text, hint="Start the engine with VLLM_ALLOW_RUNTIME_LORA_UPDATING=true "
            "(and one API server process).",
        )
    if status == 401:
        return EngineError(
            f"The engine at {base_url} refused the API key, so fleetspec could not {action}.",
            base_url, status, text, hint="Give fleetspec the same API key the engine was started with (--api-key).",
        )
    message = _error_message(text)
    err_type = body["error"].get("type") if message is not None else None
    if message is None:
        message = str(body.get("detail")) if isinstance(body, dict) and "detail" in body else text.strip()
    return EngineError(f"The engine at {base_url} could not {action}: {message}", base_url, status, message, err_type)


def _name_taken(base_url: str, name: str, path: str, served_path: str) -> AdapterNameTaken:
    # Decided from /v1/models without asking the engine, so there is no engine message to keep;
    # status is what vLLM would answer (400, already loaded).
    return AdapterNameTaken(
        f"The engine at {base_url} already serves adapter {name} from {served_path}, not from {path}.",
        base_url, 400, "", None,
        hint="Load new weights under a new name (a new version) and unload the old one; vLLM keys its prefix "
        "cache on name and path.",
    )
