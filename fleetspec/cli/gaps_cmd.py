"""`fleetspec gaps FILE`: the routing-gap log (prompts no rule matched), newest first."""

from __future__ import annotations

import json
import pathlib

import click

from fleetspec import errors


@click.command()
@click.argument("file", type=click.Path())
@click.option(
    "--limit",
    type=click.IntRange(1, 10_000),
    default=50,
    show_default=True,
    help="Show at most this many entries (the newest).",
)
@click.option("--format", "output", type=click.Choice(["human", "json"]), default="human", show_default=True)
def gaps(file: str, limit: int, output: str) -> int:
    """Show the prompts no routing rule matched, newest first, with the signals the router saw.

    FILE is the router's routing-gaps.jsonl (beside its config; rotated files .1, .2 ... are read
    too) or the folder holding it. A fleet with runtime.router.redis_url keeps its gaps in Redis:
    read them with GET /admin/gaps.
    """
    from fleetspec.router import gaplog

    entries = gaplog.read_file(file, limit)
    if not entries and not _exists(file):
        raise errors.FleetspecError(
            f"there is no routing-gap log at {file}: the router writes routing-gaps.jsonl "
            "beside its config once a prompt matches no rule (routing.gap_log)"
        )
    if output == "json":
        click.echo(json.dumps(entries, indent=2, ensure_ascii=False))
        return 0
    if not entries:
        click.echo("No routing gaps recorded yet: every prompt so far matched a rule.")
        return 0
    for item in entries:
        click.echo(render(item))
    return 0


def _exists(file: str) -> bool:
    path = pathlib.Path(file)
    return (path / "routing-gaps.jsonl").exists() if path.is_dir() else path.exists()


def render(item: dict) -> str:
    """One entry as a line: when, why, what the router saw, then the prompt as far as it was kept."""
    seen = [*item.get("extensions", []), *item.get("matched", [])]
    if item.get("cluster"):
        seen.append(f"cluster {item['cluster']}")
    if item.get("similarity") is not None:
        seen.append(f"similarity {item['similarity']:.2f}")
    head = f"{item.get('time', '?')}  {item.get('fallback_reason') or '?'}"
    head += "  rejected" if item.get("rejected") else f"  → {item.get('served_name') or 'base'}"
    head += f"  signals: {', '.join(seen) if seen else 'none'}"
    if "prompt" in item:
        text = item["prompt"]
    elif "prompt_prefix" in item:
        more = item.get("prompt_chars", 0) - len(item["prompt_prefix"])
        text = item["prompt_prefix"] + (f" … ({more} more characters not kept)" if more > 0 else "")
    else:
        text = f"(prompt not kept; sha256 {item.get('prompt_sha256', '?')[:16]}…, {item.get('prompt_chars', '?')} characters)"
    return f"{head}\n    {json.dumps(text, ensure_ascii=False)[1:-1]}"
