"""Diagnostics and the few exception types that cross stage boundaries.

Every problem a user can cause ends up as a `Diagnostic`: where (file:line:col and the dotted field
path), what (one sentence), and how to fix it (a hint). Stages collect diagnostics and raise them
together, so a user sees every mistake of a file at once instead of fixing them one run at a time.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Iterable, Sequence


class Severity(enum.StrEnum):
    ERROR = "error"
    WARNING = "warning"
    INFO = "info"


@dataclasses.dataclass(frozen=True, order=True)
class Location:
    file: str
    line: int  # 1-based
    column: int  # 1-based

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.column}"


@dataclasses.dataclass(frozen=True)
class Diagnostic:
    severity: Severity
    code: str  # stable, machine-readable: "unknown-key", "rank-above-max-lora-rank", ...
    path: str  # dotted field path: "servers[0].lora.max_lora_rank"; "" for the whole document
    message: str  # one sentence, no trailing location
    hint: str = ""
    location: Location | None = None

    @property
    def is_error(self) -> bool:
        return self.severity is Severity.ERROR

    def render(self) -> str:
        """`fleet.yaml:12:5: servers[0].lora: message` plus an indented hint line."""
        where = f"{self.location}: " if self.location else ""
        field = f"{self.path}: " if self.path else ""
        text = f"{where}{self.severity.value}: {field}{self.message}"
        if self.hint:
            text += f"\n    hint: {self.hint}"
        return text

    def to_json(self) -> dict:
        out: dict = {
            "severity": self.severity.value,
            "code": self.code,
            "path": self.path,
            "message": self.message,
            "hint": self.hint,
        }
        if self.location:
            out["file"] = self.location.file
            out["line"] = self.location.line
            out["column"] = self.location.column
        return out


def sort_key(diagnostic: Diagnostic) -> tuple:
    loc = diagnostic.location
    return (loc.file, loc.line, loc.column) if loc else ("", 0, 0), diagnostic.path, diagnostic.code


def errors_only(diagnostics: Iterable[Diagnostic]) -> list[Diagnostic]:
    return [d for d in diagnostics if d.is_error]


class FleetspecError(Exception):
    """Base of every error fleetspec raises on purpose; the CLI renders these without a traceback."""


class SpecError(FleetspecError):
    """A fleet file is invalid; carries every diagnostic found, sorted by position."""

    def __init__(self, diagnostics: Sequence[Diagnostic]):
        self.diagnostics = sorted(diagnostics, key=sort_key)
        count = len(errors_only(self.diagnostics))
        super().__init__(f"{count} error(s) in the fleet file")


class TemporaryError(FleetspecError):
    """Retrying later may succeed (engine still starting, connection refused, lock held)."""


class PermanentError(FleetspecError):
    """Retrying will not help until the user changes something (bad adapter, missing path)."""
