"""The parts of vLLM's HTTP API fleetspec relies on, as pure functions (vllm-facts §2, docs/vllm-behaviour.md).

Requests are described (path, headers, body) and answers are interpreted (status + body → facts or a
typed error) here; moving bytes is the transport's job (`engine_api.client`, or the router's asyncio
pool). Failures come back as two kinds, so callers decide without reading English:
- `EngineUnavailable` (a `TemporaryError`): nothing answered, the answer timed out, or the engine said
  502/503/504. Retrying later may succeed: it is still loading, or restarting. Real vLLM refuses
  connections for the whole model load, so "connection refused" is the normal state of a new engine.
- `EngineError` (a `PermanentError`): the engine answered and refused. Its own message is kept verbatim
  in `.engine_message` (rank above max_lora_rank, missing path, name conflicts...).

The API key: with `--api-key` (or `VLLM_API_KEY`), vLLM wants `Authorization: Bearer <key>` on every
path under /v1 (load, unload and models included); /health and /metrics stay open.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Mapping

from fleetspec import errors

HEALTH = "/health"
MODELS = "/v1/models"
LOAD = "/v1/load_lora_adapter"
UNLOAD = "/v1/unload_lora_adapter"
METRICS = "/metrics"
VERSION = "/version"

RETRYABLE_STATUSES = frozenset({502, 503, 504})
JSON = ("Content-Type", "application/json")


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


class Unauthorized(EngineError):
    """The engine wants an API key fleetspec did not send, or sent wrong."""


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

    @property
    def names(self) -> frozenset[str]:
        """Every name a request's `model` may carry on this engine."""
        return frozenset(self.base) | frozenset(self.adapters)


@dataclasses.dataclass(frozen=True)
class LoraRequestsInfo:
    """`vllm:lora_requests_info` from /metrics: adapters with running and waiting requests."""

    max_lora: int | None
    running: tuple[str, ...]
    waiting: tuple[str, ...]


# ---------------------------------------------------------------------------------------------
# Requests


def auth_headers(api_key: str | None) -> list[tuple[str, str]]:
    """What vLLM's authentication middleware checks; nothing when the engine has no key."""
    return [("Authorization", f"Bearer {api_key}")] if api_key else []


def load_body(name: str, path: str) -> bytes:
    return json.dumps({"lora_name": name, "lora_path": path}).encode()


def unload_body(name: str) -> bytes:
    return json.dumps({"lora_name": name}).encode()


# ---------------------------------------------------------------------------------------------
# Answers


def unavailable(url: str, status: int, text: str) -> EngineUnavailable:
    detail = error_message(text) or f"HTTP {status}"
    return EngineUnavailable(f"The engine at {url} is not ready ({detail}); try again shortly.", url, status)


def unreachable(url: str, reason: object) -> EngineUnavailable:
    return EngineUnavailable(f"Could not reach the engine at {url}: {reason}.", url)


def models_view(url: str, status: int, text: str) -> ModelsView:
    """The answer to GET /v1/models, or the EngineError it amounts to."""
    if status != 200:
        raise refusal(url, MODELS, status, text, "list the served models")
    document = _json(text)
    cards = document.get("data") if isinstance(document, dict) else None
    if not isinstance(cards, list) or not all(isinstance(c, dict) and "id" in c for c in cards):
        raise EngineError(f"The server at {url} answered /v1/models with something that is not a vLLM model list.",
                          url, status, text[:200])
    bases = [c for c in cards if not c.get("parent")]
    loras = [c for c in cards if c.get("parent")]
    return ModelsView(
        base=tuple(str(c["id"]) for c in bases),
        root=str(bases[0].get("root")) if bases and bases[0].get("root") is not None else None,
        max_model_len=bases[0].get("max_model_len") if bases else None,
        adapters={str(c["id"]): str(c.get("root")) for c in loras},
        parents={str(c["id"]): str(c["parent"]) for c in loras},
    )


def model_missing(status: int, text: str) -> bool:
    """Whether a completion was refused because the engine serves no such model (vLLM answers
    404 NotFoundError "The model `x` does not exist." before it queues anything, so the request
    may go to another replica)."""
    if status != 404:
        return False
    body = _json(text)
    error = body.get("error") if isinstance(body, dict) else None
    return isinstance(error, dict) and (error.get("type") == "NotFoundError" or error.get("param") == "model")


def already_loaded(status: int, text: str) -> bool:
    """vLLM's 400 for loading a name it already serves: for a loader that wants it served, success."""
    message = error_message(text) if status == 400 else None
    return message is not None and "already been loaded" in message


def unload_outcome(url: str, name: str, status: int, text: str) -> bool:
    """True: unloaded now; False: the engine did not serve that name (vLLM's ErrorResponse 404)."""
    if status == 200:
        return True
    if status == 404 and error_message(text) is not None:
        return False  # the route exists and the name is unknown
    raise refusal(url, UNLOAD, status, text, f"unload adapter {name}")


def version_of(url: str, status: int, text: str) -> str:
    document = _json(text)
    if status != 200 or not isinstance(document, dict):
        raise refusal(url, VERSION, status, text, "read the engine version")
    return str(document.get("version"))


def error_message(text: str) -> str | None:
    """The message of vLLM's ErrorResponse `{"error": {"message": ...}}`; None for other shapes."""
    body = _json(text)
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        message = body["error"].get("message")
        return str(message) if message is not None else None
    return None


def refusal(url: str, path: str, status: int, text: str, action: str) -> EngineError:
    """The typed error for a refused request, with a sentence naming what fleetspec tried."""
    body = _json(text)
    if status == 404 and isinstance(body, dict) and body.get("detail") == "Not Found" and "lora_adapter" in path:
        return RuntimeLoraDisabled(
            f"The engine at {url} does not allow loading adapters at runtime, so fleetspec could not {action}.",
            url, status, text, hint="Start the engine with VLLM_ALLOW_RUNTIME_LORA_UPDATING=true "
            "(and one API server process).",
        )
    if status == 401:
        return Unauthorized(
            f"The engine at {url} refused fleetspec's API key (or wanted one), so fleetspec could not {action}.",
            url, status, text, hint="Set runtime.engine_api_key to the ${VAR} holding the key the engines were "
            "started with, and export that variable where fleetspec runs.",
        )
    message = error_message(text)
    err_type = body["error"].get("type") if message is not None else None
    if message is None:
        message = str(body.get("detail")) if isinstance(body, dict) and "detail" in body else text.strip()
    return EngineError(f"The engine at {url} could not {action}: {message}", url, status, message, err_type)


def name_taken(url: str, name: str, path: str, served_path: str) -> AdapterNameTaken:
    # Decided from /v1/models without asking the engine, so there is no engine message to keep;
    # status is what vLLM would answer (400, already loaded).
    return AdapterNameTaken(
        f"The engine at {url} already serves adapter {name} from {served_path}, not from {path}.",
        url, 400, "", None,
        hint="Load new weights under a new name (a new version) and unload the old one; vLLM keys its prefix "
        "cache on name and path.",
    )


def lora_requests_info(text: str) -> LoraRequestsInfo | None:
    """The most recent `vllm:lora_requests_info` sample (its value is a timestamp); None when LoRA is off."""
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


def _json(text: str):
    try:
        return json.loads(text)
    except ValueError:
        return None
