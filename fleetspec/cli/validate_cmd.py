"""`fleetspec validate` and `fleetspec schema`."""

from __future__ import annotations

import pathlib

import click

from fleetspec import errors
from fleetspec.cli import views


def load_and_check(path: str):
    """(LoadedFleet or None, diagnostics): the file parsed, validated and cross-checked."""
    from fleetspec.spec import loading
    from fleetspec.validation import checks

    try:
        fleet = loading.load_path(path)
    except errors.SpecError as exc:
        return None, exc.diagnostics
    found = checks.check(fleet)
    return fleet, sorted(found, key=errors.sort_key)


@click.command()
@click.argument("files", nargs=-1, required=True, type=click.Path(dir_okay=False))
@click.option("--format", "output", type=click.Choice(["human", "json"]), default="human", show_default=True)
def validate(files: tuple[str, ...], output: str) -> int:
    """Check fleet files: YAML, fields, and how the parts fit together. Exit 1 on any error."""
    report, failed = [], False
    for path in files:
        _, diagnostics = load_and_check(path)
        has_errors = any(d.is_error for d in diagnostics)
        failed |= has_errors
        if output == "json":
            report.append({"file": path, "valid": not has_errors,
                           "diagnostics": views.diagnostics_json(diagnostics)})
            continue
        views.print_diagnostics(diagnostics)
        verdict = "is invalid" if has_errors else "is valid"
        summary = f"{path} {verdict}" + (f" ({views.count_words(diagnostics)})" if diagnostics else ".")
        click.echo(summary if summary.endswith(".") else summary + ".", err=has_errors)
    if output == "json":
        click.echo(views.dump_json(report))
    return 1 if failed else 0


@click.command()
@click.option("-o", "--output", type=click.Path(dir_okay=False), help="Write to this file instead of stdout.")
@click.option("--check", "check_file", type=click.Path(dir_okay=False),
              help="Exit 1 if this file differs from the schema the models generate.")
def schema(output: str | None, check_file: str | None) -> int:
    """Print the JSON Schema of fleet.yaml (for editors: yaml-language-server)."""
    from fleetspec.spec import schema as spec_schema

    text = spec_schema.fleet_schema_text()
    if check_file:
        current = pathlib.Path(check_file).read_text(encoding="utf-8") if pathlib.Path(check_file).exists() else ""
        if current != text:
            raise errors.FleetspecError(
                f"{check_file} is out of date with the spec models; regenerate it with "
                f"`fleetspec schema -o {check_file}`"
            )
        click.echo(f"{check_file} is up to date.")
        return 0
    if output:
        pathlib.Path(output).write_text(text, encoding="utf-8")
        click.echo(f"Wrote {output}.", err=True)
    else:
        click.echo(text, nl=False)
    return 0
