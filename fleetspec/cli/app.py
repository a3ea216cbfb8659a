"""The `fleetspec` command line.

Commands are registered by import path and imported only when run, so `fleetspec validate` never
pays for docker, jinja2 or HTTP clients. This module is the one place that catches broadly: every
fleetspec error becomes a message and an exit code, never a traceback.
"""

from __future__ import annotations

import importlib
import os
import sys

import click

# name → "module:attribute" of a click.Command. Keep this table sorted by name.
COMMANDS: dict[str, str] = {
    "adapters": "fleetspec.cli.adapters_cmd:adapters",
    "agent": "fleetspec.cli.agent_cmd:agent",
    "apply": "fleetspec.cli.apply_cmd:apply",
    "compile": "fleetspec.cli.compile_cmd:compile_",
    "destroy": "fleetspec.cli.apply_cmd:destroy",
    "gaps": "fleetspec.cli.gaps_cmd:gaps",
    "plan": "fleetspec.cli.plan_cmd:plan",
    "rollback": "fleetspec.cli.apply_cmd:rollback",
    "route": "fleetspec.cli.route_cmd:route",
    "schema": "fleetspec.cli.validate_cmd:schema",
    "status": "fleetspec.cli.status_cmd:status",
    "validate": "fleetspec.cli.validate_cmd:validate",
    "watch": "fleetspec.cli.watch_cmd:watch",
}

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_CHANGES = 2  # Terraform's -detailed-exitcode: success, changes pending


class LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        target = COMMANDS.get(cmd_name)
        if target is None:
            return None
        module_name, attribute = target.split(":")
        return getattr(importlib.import_module(module_name), attribute)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="fleetspec")
def cli() -> None:
    """Describe a multi-LoRA vLLM fleet in one fleet.yaml; validate, plan, compile and reconcile it."""


def main(argv: list[str] | None = None) -> int:
    from fleetspec import errors

    try:
        result = cli.main(args=argv, prog_name="fleetspec", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("Aborted.", err=True)
        return EXIT_ERROR
    except click.ClickException as exc:
        exc.show()
        # click exits 2 on usage errors; here 2 means "changes pending" (plan --detailed-exitcode),
        # so a typo in a CI script must not read as a pending change.
        return EXIT_ERROR
    except errors.SpecError as exc:
        from fleetspec.cli import views

        views.print_diagnostics(exc.diagnostics)
        return EXIT_ERROR
    except errors.FleetspecError as exc:
        click.echo(f"error: {exc}", err=True)
        return EXIT_ERROR
    except KeyboardInterrupt:
        click.echo("Interrupted.", err=True)
        return 130
    except Exception as exc:  # a bug in fleetspec, not in the user's file
        if os.environ.get("FLEETSPEC_DEBUG"):
            raise
        click.echo(
            f"error: fleetspec hit an internal error ({exc.__class__.__name__}: {exc}). This is a bug in "
            "fleetspec, not in your files; rerun with FLEETSPEC_DEBUG=1 to see the traceback and report it.",
            err=True,
        )
        return EXIT_ERROR
    return result if isinstance(result, int) else EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
