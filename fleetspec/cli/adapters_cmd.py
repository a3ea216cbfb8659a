"""`fleetspec adapters inspect PATH` and `fleetspec adapters check FILE`."""

from __future__ import annotations

import click

from fleetspec import errors
from fleetspec.cli import overrides_opt, views


@click.group()
def adapters() -> None:
    """Read PEFT adapters without loading them, and check them against a fleet."""


@adapters.command("inspect")
@click.argument("path", type=click.Path(file_okay=False))
@click.option("--format", "output", type=click.Choice(["human", "json"]), default="human", show_default=True)
def inspect_command(path: str, output: str) -> int:
    """Show what an adapter directory holds: ranks, modules, shapes, dtypes, sizes. Exit 1 if vLLM would refuse it."""
    from fleetspec.adapters import checks
    from fleetspec.adapters import inspect as adapter_inspect

    info = adapter_inspect.inspect(path)
    diagnostics = checks.check_adapter(info)
    if output == "json":
        click.echo(views.dump_json({"adapter": info.to_json(), "diagnostics": views.diagnostics_json(diagnostics)}))
    else:
        click.echo("\n".join(describe(info)))
        views.print_diagnostics(diagnostics)
    return 1 if errors.errors_only(diagnostics) else 0


@adapters.command("check")
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("--format", "output", type=click.Choice(["human", "json"]), default="human", show_default=True)
@overrides_opt.options
def check_command(file: str, output: str, **override) -> int:
    """Check every adapter of a fleet file against its base model and servers. Exit 1 on any error."""
    from fleetspec.adapters import survey

    loaded = overrides_opt.load(file, overrides_opt.make(**override))
    found = survey.review(loaded)
    diagnostics = found.diagnostics
    if output == "json":
        click.echo(views.dump_json({
            "file": file,
            "adapters": [{"specialist": name, "version": version, **info.to_json(modules=False)}
                         for (name, version), info in found.infos.items()],
            "diagnostics": views.diagnostics_json(diagnostics),
        }))
    else:
        for (name, version), info in found.infos.items():
            click.echo(f"{name}@{version}: {summary(info)}")
        views.print_diagnostics(diagnostics)
        click.echo(f"{file}: {len(found.infos)} adapter(s) read, {views.count_words(diagnostics)}.")
    return 1 if errors.errors_only(diagnostics) else 0


@adapters.command("stand-ins")
@click.argument("file", type=click.Path(dir_okay=False))
@click.argument("directory", type=click.Path(file_okay=False))
@click.option("--overwrite", is_flag=True, help="Replace adapters already there (stand-ins of an earlier run).")
def standins_command(file: str, directory: str, overwrite: bool) -> int:
    """Write stand-in adapters for every adapter FILE names, below DIRECTORY: the declared ranks, the base
    model's shapes, zero weights (sparse files). Then bring the fleet up with `--adapters-in DIRECTORY`."""
    import pathlib

    from fleetspec.adapters import standins
    from fleetspec.spec import loading

    written = standins.write(loading.load_path(file), pathlib.Path(directory), overwrite=overwrite)
    for item in written:
        click.echo(f"{item.specialist}@{item.version}: rank {item.rank} on {', '.join(item.modules)}, "
                   f"{size_text(item.size)} of zeros (sparse) in {item.path}")
    click.echo(f"Wrote {len(written)} stand-in adapter(s). Try the fleet with: fleetspec apply {file} "
               f"--runtime local --engine sim --adapters-in {directory}")
    return 0


def summary(info) -> str:
    ranks = "/".join(map(str, info.ranks)) or "?"
    modules = ", ".join(info.target_modules_present) or "no readable modules"
    return f"rank {ranks}, {modules}, {size_text(info.weights_bytes)} ({info.path})"


def size_text(count: int) -> str:
    for unit, scale in (("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
        if count >= scale:
            return f"{count / scale:.1f} {unit}"
    return f"{count} bytes"


def describe(info) -> list[str]:
    """Human lines for `adapters inspect`."""
    config = info.config
    rows = [("Adapter", info.path)]
    if config is not None:
        alpha = f", lora_alpha {config.lora_alpha:g}" if config.lora_alpha is not None else ""
        rows += [
            ("PEFT type", f"{config.peft_type or '?'} (r {config.r}{alpha}{', rsLoRA' if config.use_rslora else ''})"),
            ("Base model", config.base_model_name_or_path or "not recorded"),
            ("Rank pattern", ", ".join(f"{k}: {v}" for k, v in config.rank_pattern.items()) or "none"),
        ]
    rows.append(("Weights", f"{info.weights_file or 'none'}, {size_text(info.weights_bytes)} on disk"))
    if info.tensors_known:
        layers = {m.layer for m in info.modules if m.layer is not None}
        rows += [
            ("Ranks", "/".join(map(str, info.ranks)) or "none"),
            ("Modules", f"{', '.join(info.target_modules_present) or 'none'} ({len(info.modules)} modules over "
                        f"{len(layers)} layers)"),
            ("Tensors", f"{len(info.tensors)} tensors, {', '.join(info.dtypes) or 'no dtype'}, "
                        f"{info.tensor_bytes:,} bytes of data"),
        ]
    rows.append(("Read", f"{info.bytes_read:,} bytes (config and header only)"))
    width = max(len(label) for label, _ in rows)
    return [f"{label:<{width}}  {value}" for label, value in rows]
