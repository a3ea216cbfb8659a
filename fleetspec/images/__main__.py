"""`python -m fleetspec.images build`: build or reuse the sim image and say what it cost."""

from __future__ import annotations

import dataclasses
import json
import sys

import click

from fleetspec import errors


@click.group()
def main() -> None:
    """Images fleetspec builds offline (no registry needed)."""


@main.command()
@click.option("--force", is_flag=True, help="Rebuild the sim layer even when its inputs are unchanged.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def build(force: bool, as_json: bool) -> None:
    """Build fleetspec/sim:<version> (and its Debian base) unless an identical one exists."""
    from fleetspec.drivers import docker as docker_driver
    from fleetspec.images import build as images

    try:
        image = images.ensure_sim_image(docker_driver.connect(), force=force)
    except errors.FleetspecError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(1)
    if as_json:
        click.echo(json.dumps(dataclasses.asdict(image), indent=2))
        return
    for each in (image.base, image):
        if each is not None:
            verb = "built" if each.built else "reused"
            click.echo(f"{verb} {each.tag} ({each.id[7:19]}, {each.size_bytes / 2**20:.0f} MiB) in {each.seconds:.1f} s")


if __name__ == "__main__":
    main()
