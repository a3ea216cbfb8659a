"""`fleetspec route FILE PROMPT`: where the router would send a prompt, without any server."""

from __future__ import annotations

import json
import sys
import time

import click

from fleetspec import errors


@click.command()
@click.argument("file", type=click.Path(dir_okay=False))
@click.argument("prompt")
@click.option("--ext", "extensions", multiple=True, metavar=".EXT",
              help="A file extension from request metadata (repeatable), e.g. --ext .py")
@click.option("--model", help='The request\'s `model`: "auto" (default), a specialist, name@version, or the base model.')
@click.option("--key", help="Value of the sticky header (routing.sticky_key) that pins a user to one split version.")
@click.option("--format", "output", type=click.Choice(["human", "json"]), default="human", show_default=True)
def route(file: str, prompt: str, extensions: tuple[str, ...], model: str | None, key: str | None,
          output: str) -> int:
    """Show which specialist and version a PROMPT goes to, the rule that fired and the runner-up.

    PROMPT "-" reads the prompt from standard input.
    """
    from fleetspec.cli import validate_cmd
    from fleetspec.routing import config

    fleet, diagnostics = validate_cmd.load_and_check(file)
    if fleet is None or any(d.is_error for d in diagnostics):
        raise errors.SpecError(diagnostics)
    if prompt == "-":
        prompt = sys.stdin.read()
    routing = config.routing_table(fleet.spec, config.load_cluster_maps(fleet))
    started = time.perf_counter()
    decision = routing.decide(prompt, extensions=extensions, explicit_model=model, sticky_key=key)
    elapsed = time.perf_counter() - started
    if output == "json":
        click.echo(json.dumps(decision.to_json(), indent=2, ensure_ascii=False))
    else:
        click.echo(render(decision, routing, elapsed))
    return 1 if decision.rejected else 0


def render(decision, routing, elapsed: float | None = None) -> str:
    """The decision as a few plain lines."""
    lines = [_headline(decision, routing)]
    rule = decision.rule
    if rule.index is not None:
        matched = f", matched {', '.join(decision.matched)}" if decision.matched else ""
        lines.append(f"  rule:      {rule.name} (routing.rules[{rule.index}], {rule.kind}{matched})")
    else:
        lines.append(f"  rule:      {rule.kind}")
    if decision.cluster is not None:
        lines.append(f"  cluster:   {decision.cluster}")
    if decision.similarity is not None:
        lines.append(f"  embedding: similarity {decision.similarity:.3f} (threshold {routing.embedding.threshold})")
    if decision.bucket is not None:
        split = routing.splits[decision.specialist]
        lower, parts = 0, []
        for upper, version in split.ranges:
            parts.append(f"{lower}-{upper - 1} → {version}")
            lower = upper
        lines.append(f"  split:     bucket {decision.bucket} of 0-99 ({', '.join(parts)})")
    lines.append(f"  runner-up: {_runner_up(decision.runner_up)}")
    if elapsed is not None:
        lines.append(f"  decided in {elapsed * 1e6:.0f} µs")
    return "\n".join(lines)


def _headline(decision, routing) -> str:
    from fleetspec.routing import table

    reasons = {
        table.NO_MATCH: "nothing in the prompt matched a rule",
        table.CLUSTER_UNMAPPED: f"cluster {decision.cluster} has no specialist mapped",
        table.UNKNOWN_MODEL: f"the fleet serves no model named `{decision.matched[0] if decision.matched else ''}`",
    }
    why = reasons.get(decision.fallback_reason, decision.fallback_reason)
    if decision.rejected and decision.fallback_reason == table.UNKNOWN_MODEL:
        return f"rejected: {why}"
    if decision.rejected:
        return f"rejected: {why} (routing.fallback is reject)"
    if decision.specialist is None:
        suffix = f" (fallback: {why})" if decision.fallback_reason else ""
        return f"base model, served as {decision.served_name}{suffix}"
    return f"{decision.specialist} {decision.version}, served as {decision.served_name}"


def _runner_up(candidate) -> str:
    if candidate is None:
        return "none"
    version = f"@{candidate.version}" if candidate.version else ""
    matched = f", matched {', '.join(candidate.matched)}" if candidate.matched else ""
    if candidate.similarity is not None:
        matched = f", similarity {candidate.similarity:.3f}"
    return f"{candidate.specialist}{version} via {candidate.rule.name}{matched}"
