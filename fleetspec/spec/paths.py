"""Field paths: tuples of keys and list indices, printed the way users read them."""

from __future__ import annotations


def format_path(path: tuple) -> str:
    """`("servers", 0, "lora", "max_lora_rank")` → `servers[0].lora.max_lora_rank`."""
    text = ""
    for part in path:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            text += f".{part}" if text else str(part)
    return text
