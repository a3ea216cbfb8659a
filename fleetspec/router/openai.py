"""The OpenAI API's request and response shapes the router reads and writes."""

from __future__ import annotations


def prompt_text(body: dict, chat: bool) -> str:
    """The text rules look at: the user turns of a chat (all turns when none is from the user), or
    the completion prompt. Token-id prompts have no text and route as an empty prompt."""
    if not chat:
        prompt = body.get("prompt")
        if isinstance(prompt, str):
            return prompt
        if isinstance(prompt, list) and all(isinstance(p, str) for p in prompt):
            return "\n".join(prompt)
        return ""
    messages = [m for m in body.get("messages") or [] if isinstance(m, dict)]
    turns = [m for m in messages if m.get("role") == "user"] or messages
    return "\n".join(filter(None, (_content_text(m.get("content")) for m in turns)))


def _content_text(content) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(p["text"] for p in content if isinstance(p, dict) and isinstance(p.get("text"), str))
    return ""


def error(status: int, message: str, param: str | None = None) -> dict:
    kinds = {400: "BadRequestError", 404: "NotFoundError", 503: "ServiceUnavailableError"}
    return {"error": {"message": message, "type": kinds.get(status, "InternalServerError"), "param": param,
                      "code": status}}
