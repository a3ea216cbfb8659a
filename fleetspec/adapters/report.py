"""What every adapter check shares: the target it checks against, the collector, the wording."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Sequence

from fleetspec.adapters import inspect as adapter_inspect
from fleetspec.errors import Diagnostic, Location, Severity
from fleetspec.spec import models, paths

Locate = Callable[[tuple], Location | None]


@dataclasses.dataclass(frozen=True)
class Target:
    """Where an adapter is going: the base model and the servers (index, server) that host it."""

    base_model_id: str | None = None
    architecture: models.Architecture | None = None
    embedding_lora: bool = False
    servers: tuple[tuple[int, models.Server], ...] = ()
    trained_on: str | None = None  # Specialist.base_model: the user says it was trained elsewhere
    declared_rank: int | None = None  # rank written in fleet.yaml


class Report:
    """Diagnostics about one adapter, all at its field path."""

    def __init__(self, info: adapter_inspect.AdapterInfo, where: tuple, locate: Locate | None):
        self.info, self.items = info, []
        self.path, self.location = paths.format_path(where), locate(where) if locate else None

    def add(self, severity: Severity, code: str, message: str, hint: str = "") -> None:
        self.items.append(Diagnostic(severity, code, self.path, message, hint, self.location))

    def error(self, code: str, message: str, hint: str = "") -> None:
        self.add(Severity.ERROR, code, message, hint)

    def warning(self, code: str, message: str, hint: str = "") -> None:
        self.add(Severity.WARNING, code, message, hint)


_QUANT_SUFFIX = re.compile(r"[-_.](awq|gptq[\w-]*|fp8[\w-]*|int[48][\w-]*|bnb[\w-]*|[48]bit|gguf|mlx[\w-]*)$")


def same_model(a: str, b: str) -> bool:
    """Same model up to org prefix, local directory and quantization suffix (QwQ-32B vs QwQ-32B-AWQ)."""
    def stem(name: str) -> str:
        name = name.rstrip("/").rsplit("/", 1)[-1].lower()
        while (stripped := _QUANT_SUFFIX.sub("", name)) != name:
            name = stripped
        return name

    return stem(a) == stem(b)


def same_as_fleet(name: str, target: Target) -> bool:
    return bool(target.base_model_id and same_model(name, target.base_model_id))


def few(names: Sequence[str]) -> str:
    return names[0] + (f" (and {len(names) - 1} more)" if len(names) > 1 else "")


def more(items: Sequence) -> str:
    return f" ({len(items) - 1} more module(s) disagree)" if len(items) > 1 else ""


def arch_name(target: Target) -> str:
    arch = target.architecture
    if arch is None:
        return "this"
    return (arch.architectures or [None])[0] or arch.model_type or "this"
