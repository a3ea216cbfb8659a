"""Deterministic fake generations in the OpenAI shapes vLLM returns.

The text names the served model, the adapter and the base it ran on, so a test (or an operator
poking a sim fleet with curl) can see where a request was routed:

    model=python-lora@1.2.0 adapter=python-lora@1.2.0 base=Qwen/Qwen2.5-7B prompt=3f2a9c1e mango ...

Pure functions of the request: no clocks except the `created` stamp, no randomness except ids.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
import uuid
from collections.abc import Iterator
from http import HTTPStatus

from fleetspec.sim import engine

DEFAULT_COMPLETION_MAX_TOKENS = 16  # vLLM's CompletionRequest default
FILLER = (
    "alpha", "bravo", "cedar", "delta", "ember", "fjord", "glade", "harbor", "indigo", "juniper",
    "kelp", "lumen", "mango", "nectar", "onyx", "pollen", "quartz", "raven", "sorrel", "tundra",
)
FILLER_WORDS = 8


@dataclasses.dataclass(frozen=True)
class Ask:
    """One parsed /v1/completions or /v1/chat/completions request."""

    chat: bool
    model: str | None
    prompt: str
    max_tokens: int | None
    stream: bool
    include_usage: bool
    n: int


def parse(body: object, chat: bool, max_model_len: int | None = None) -> Ask | engine.Reply:
    if not isinstance(body, dict):
        return _bad_request("The request body must be a JSON object.")
    if chat:
        messages = body.get("messages")
        if not isinstance(messages, list):
            return _bad_request("1 validation error for ChatCompletionRequest\nmessages\n  Field required")
        prompt = "\n".join(_message_text(m) for m in messages)
    else:
        raw = body.get("prompt")
        if raw in (None, "", []):
            return _bad_request("Either prompt or prompt_embeds must be provided and non-empty.")
        prompt = raw if isinstance(raw, str) else json.dumps(raw)
    param = "max_completion_tokens" if chat and body.get("max_completion_tokens") is not None else "max_tokens"
    max_tokens = body.get(param)
    if max_tokens is None and not chat:
        max_tokens = DEFAULT_COMPLETION_MAX_TOKENS
    if max_tokens is not None and (not isinstance(max_tokens, int) or max_tokens < 1):
        return _bad_request(f"max_tokens must be at least 1, got {max_tokens}.")
    if max_tokens is not None and max_model_len is not None and max_tokens > max_model_len:
        # vllm/renderers/params.py TokenizeParams.__post_init__ (0.32 and 0.33): a VLLMValidationError,
        # whose str() appends "(parameter=..., value=...)".
        return engine.error(HTTPStatus.BAD_REQUEST, "BadRequestError",
                            f"{param}={max_tokens} cannot be greater than max_model_len={max_model_len}. Please "
                            f"request fewer output tokens. (parameter={param}, value={max_tokens})", param)
    n = body.get("n") or 1
    if not isinstance(n, int) or n < 1:
        return _bad_request(f"n must be at least 1, got {n}.")
    options = body.get("stream_options") if isinstance(body.get("stream_options"), dict) else {}
    return Ask(
        chat=chat, model=body.get("model"), prompt=prompt, max_tokens=max_tokens,
        stream=bool(body.get("stream")), include_usage=bool(options.get("include_usage")),
        n=n,
    )


def _message_text(message: object) -> str:
    content = message.get("content") if isinstance(message, dict) else None
    if isinstance(content, list):
        return " ".join(str(part.get("text", "")) for part in content if isinstance(part, dict))
    return str(content or "")


def _bad_request(message: str) -> engine.Reply:
    return engine.error(HTTPStatus.BAD_REQUEST, "BadRequestError", message)


@dataclasses.dataclass(frozen=True)
class Generation:
    model: str  # what the response's `model` field says: the adapter name, or the served name
    tokens: tuple[str, ...]
    finish_reason: str
    prompt_tokens: int

    @property
    def text(self) -> str:
        return "".join(self.pieces())

    def pieces(self) -> list[str]:
        return [t if i == 0 else " " + t for i, t in enumerate(self.tokens)]


def generate(ask: Ask, served_name: str, base: str, lora: engine.LoraRequest | None) -> Generation:
    model = lora.name if lora else served_name
    digest = hashlib.sha256(f"{model}\0{ask.prompt}".encode()).digest()
    words = [
        f"model={model}", f"adapter={lora.name if lora else 'none'}", f"base={base}",
        f"prompt={hashlib.sha256(ask.prompt.encode()).hexdigest()[:8]}",
        *(FILLER[b % len(FILLER)] for b in digest[:FILLER_WORDS]),
    ]
    limit = ask.max_tokens if ask.max_tokens is not None else len(words)
    return Generation(
        model=model, tokens=tuple(words[:limit]), finish_reason="length" if limit < len(words) else "stop",
        prompt_tokens=max(1, len(ask.prompt.split())),
    )


def _usage(gen: Generation, n: int) -> dict:
    completion = len(gen.tokens) * n
    return {"prompt_tokens": gen.prompt_tokens, "total_tokens": gen.prompt_tokens + completion,
            "completion_tokens": completion, "prompt_tokens_details": None}


def response(ask: Ask, gen: Generation) -> dict:
    created = int(time.time())
    if ask.chat:
        choices = [{
            "index": i, "message": {"role": "assistant", "content": gen.text, "refusal": None,
                                    "tool_calls": [], "reasoning_content": None},
            "logprobs": None, "finish_reason": gen.finish_reason, "stop_reason": None,
        } for i in range(ask.n)]
        return {"id": f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion", "created": created,
                "model": gen.model, "choices": choices, "usage": _usage(gen, ask.n)}
    choices = [{"index": i, "text": gen.text, "logprobs": None, "finish_reason": gen.finish_reason,
                "stop_reason": None, "prompt_logprobs": None} for i in range(ask.n)]
    return {"id": f"cmpl-{uuid.uuid4().hex}", "object": "text_completion", "created": created,
            "model": gen.model, "choices": choices, "usage": _usage(gen, ask.n)}


def stream_events(ask: Ask, gen: Generation) -> Iterator[dict]:
    """The JSON objects of an SSE stream, in order; the caller adds `data: ` framing and [DONE]."""
    created = int(time.time())
    ident = f"chatcmpl-{uuid.uuid4().hex}" if ask.chat else f"cmpl-{uuid.uuid4().hex}"
    kind = "chat.completion.chunk" if ask.chat else "text_completion"

    def chunk(choices: list[dict], usage: dict | None = None) -> dict:
        out = {"id": ident, "object": kind, "created": created, "model": gen.model, "choices": choices}
        if usage is not None:
            out["usage"] = usage
        return out

    if ask.chat:
        yield chunk([{"index": 0, "delta": {"role": "assistant", "content": ""}, "logprobs": None,
                      "finish_reason": None}])
    last = len(gen.tokens) - 1
    for i, piece in enumerate(gen.pieces()):
        finish = gen.finish_reason if i == last else None
        if ask.chat:
            choice = {"index": 0, "delta": {"content": piece}, "logprobs": None, "finish_reason": finish}
        else:
            choice = {"index": 0, "text": piece, "logprobs": None, "finish_reason": finish, "stop_reason": None}
        yield chunk([choice])
    if ask.include_usage:
        yield chunk([], _usage(gen, 1))
