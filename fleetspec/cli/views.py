"""Rendering shared by several commands: diagnostics as text (no rich needed) or JSON."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterable, Sequence

import click

from fleetspec.errors import Diagnostic, Severity
from fleetspec.planner.findings import SIZE_UNITS

_COLOURS = {Severity.ERROR: "red", Severity.WARNING: "yellow", Severity.INFO: "blue"}


def render_diagnostic(diagnostic: Diagnostic, colour: bool) -> str:
    text = diagnostic.render()
    if not colour:
        return text
    first, _, rest = text.partition("\n")
    label = f"{diagnostic.severity.value}:"
    first = first.replace(label, click.style(label, fg=_COLOURS[diagnostic.severity], bold=True), 1)
    return first + ("\n" + click.style(rest, dim=True) if rest else "")


def print_diagnostics(diagnostics: Sequence[Diagnostic], err: bool = True) -> None:
    stream = sys.stderr if err else sys.stdout
    colour = stream.isatty() and not os.environ.get("NO_COLOR")
    for diagnostic in diagnostics:
        click.echo(render_diagnostic(diagnostic, colour), err=err)


def diagnostics_json(diagnostics: Sequence[Diagnostic]) -> list[dict]:
    return [d.to_json() for d in diagnostics]


def dump_json(data) -> str:
    return json.dumps(data, indent=2, ensure_ascii=False)


def count_words(diagnostics: Sequence[Diagnostic]) -> str:
    errors = sum(d.severity is Severity.ERROR for d in diagnostics)
    warnings = sum(d.severity is Severity.WARNING for d in diagnostics)
    parts = [f"{errors} error{'s' * (errors != 1)}"] if errors else []
    if warnings:
        parts.append(f"{warnings} warning{'s' * (warnings != 1)}")
    return " and ".join(parts) or "no problems"


def size_unit(values: Iterable[float]) -> tuple[str, int]:
    """(name, bytes) of the largest unit in which every nonzero figure shows at two decimals, so a
    table or a sum of figures shares one unit and none reads 0.00: GiB for real models, MiB for
    the demo's tiny one. Sizes in bytes."""
    nonzero = [abs(v) for v in values if v]
    for unit in SIZE_UNITS:
        if all(v / unit[1] >= 0.005 for v in nonzero):
            return unit
    return SIZE_UNITS[-1]


def in_unit(value: float, unit: tuple[str, int]) -> str:
    """A size in bytes as a figure in `unit` (from size_unit), two decimals, no unit name."""
    return f"{value / unit[1]:.2f}"
