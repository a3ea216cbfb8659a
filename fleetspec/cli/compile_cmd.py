"""`fleetspec compile FILE --target vllm|compose|k8s|router`: what each deployment style runs."""

from __future__ import annotations

import os
import pathlib

import click

EXIT_OK, EXIT_ERROR = 0, 1


@click.command("compile")
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("--target", "-t", type=click.Choice(["vllm", "compose", "k8s", "router"]), required=True,
              help="vllm: `vllm serve` lines; compose: a docker-compose project; k8s: manifests; router: its table.")
@click.option("--output", "-o", "output_dir", type=click.Path(file_okay=False),
              help="Write the files into this directory instead of printing them.")
@click.option("--format", "fmt", type=click.Choice(["shell", "json", "config"]), default=None,
              help="For --target vllm: a shell line per replica (default), a JSON list, or `vllm serve --config` YAML.")
@click.option("--templates", "templates", type=click.Path(file_okay=False, exists=True),
              help="Directory whose templates (same relative names as the shipped ones) replace the shipped ones.")
def compile_(file: str, target: str, output_dir: str | None, fmt: str | None, templates: str | None) -> int:
    """Compile a fleet that plans into deployable artifacts; byte-identical for the same input.

    A fleet that does not plan (does not fit, or has errors) is refused with the plan's findings.
    """
    from fleetspec.cli import plan_cmd, views
    from fleetspec.compile import slots, targets

    if fmt is not None and target != "vllm":
        raise click.UsageError("--format applies to --target vllm only; the other targets have one format each.")
    loaded, plan = plan_cmd.build_plan(file)
    if not plan.fits:
        views.print_diagnostics(plan.findings)
        click.echo("error: fleetspec compiles only fleets that plan; fix the errors above "
                   f"(`fleetspec plan {file}` shows every GPU's budget).", err=True)
        return EXIT_ERROR
    from fleetspec.routing import config as router_config

    out = targets.compile_target(loaded.spec, slots.from_plan(plan), target, fmt=fmt or "shell",
                                 base_dir=loaded.base_dir, templates=templates, locate=loaded.locate,
                                 cluster_maps=router_config.load_cluster_maps(loaded))
    if output_dir is None:
        click.echo(out.stdout, nl=False)
        return EXIT_OK
    for name in write_files(pathlib.Path(output_dir), out.files):
        click.echo(f"wrote {name}", err=True)
    return EXIT_OK


def write_files(directory: pathlib.Path, files: dict[str, str]) -> list[pathlib.Path]:
    """Each file written whole (temporary name, then rename), so a reader never sees half a file."""
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for name, text in files.items():
        path = directory / name
        partial = path.with_name(f".{path.name}.partial")
        partial.write_text(text, encoding="utf-8")
        if name.endswith(".sh"):
            partial.chmod(0o755)
        os.replace(partial, path)
        written.append(path)
    return written
