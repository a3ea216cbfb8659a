"""The override flags that bring a fleet file up elsewhere without editing it (`spec.overrides`):
one decorator for every command that loads the fleet, and the loader that applies them."""

from __future__ import annotations

import pathlib

import click

_OPTIONS = (
    click.option("--runtime", "target", type=click.Choice(["local", "docker"]),
                 help="Run on this runtime instead of the file's runtime.target (local: child processes)."),
    click.option("--engine", type=click.Choice(["sim", "vllm"]),
                 help="Run this engine instead of the file's runtime.engine (sim: no GPU needed)."),
    click.option("--adapters-in", type=click.Path(file_okay=False), metavar="DIR",
                 help="Read every adapter path below DIR (/loras/x is read from DIR/loras/x); "
                      "`fleetspec adapters stand-ins FILE DIR` writes stand-ins there."),
    click.option("--ports-from", type=click.IntRange(1, 65000), metavar="PORT",
                 help="Put the router on PORT and the replicas on the ports after it."),
)


def options(function):
    for option in reversed(_OPTIONS):
        function = option(function)
    return function


def make(target: str | None = None, engine: str | None = None, adapters_in: str | None = None,
         ports_from: int | None = None):
    from fleetspec.spec import overrides

    return overrides.Overrides(target, engine, pathlib.Path(adapters_in) if adapters_in else None, ports_from)


def load(file: str, overrides):
    """The fleet file, loaded, with the overrides applied."""
    from fleetspec.spec import loading
    from fleetspec.spec import overrides as overrides_mod

    return overrides_mod.apply(loading.load_path(file), overrides)


def prepare(file: str, overrides):
    """session.prepare with the overrides applied; says once on stderr that they are in effect."""
    import dataclasses

    from fleetspec.reconcile import session

    prepared = session.prepare_loaded(load(file, overrides))
    if not overrides:
        return prepared
    click.echo(f"note: running {file} with {overrides.describe()} (the file itself is unchanged)", err=True)
    return dataclasses.replace(prepared, overrides=overrides.describe())
