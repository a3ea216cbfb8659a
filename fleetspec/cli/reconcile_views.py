"""Reconcile plans, destroy previews and apply outcomes as text and markdown (`status` is in status_views)."""

from __future__ import annotations

from fleetspec.reconcile import apply as apply_mod
from fleetspec.reconcile import plan as plan_mod


def plan_text(reconcile_plan: plan_mod.ReconcilePlan, subject: str = "the running fleet") -> str:
    notes = [f"drift: {note}" for note in reconcile_plan.notes]
    if not reconcile_plan.has_changes:
        return "\n".join([f"No changes. {subject[0].upper() + subject[1:]} matches the fleet file.", *notes])
    lines = ["fleetspec will perform the following actions:", ""]
    for action in reconcile_plan.actions:
        lines.append(f"  {action.describe()}")
        lines.extend(f"      {change}" for change in action.changes)
    lines += ["", reconcile_plan.summary(), _disruption_line(reconcile_plan),
              *(f"Interrupts serving: {i.describe()}" for i in reconcile_plan.interruptions), *notes]
    return "\n".join(lines)


def _disruption_line(reconcile_plan: plan_mod.ReconcilePlan) -> str:
    restarting = [a.target for a in reconcile_plan.actions if a.disruption is plan_mod.Disruption.RESTART]
    if not restarting:
        return "No running server restarts; every change is applied hot."
    return f"Restarts: {', '.join(restarting)} (one replica at a time); adapter and router changes are hot."


def plan_markdown(reconcile_plan: plan_mod.ReconcilePlan) -> str:
    notes = "".join(f"\n- drift: {note}" for note in reconcile_plan.notes)
    if not reconcile_plan.has_changes:
        return "**No changes.** The fleet matches the fleet file." + notes
    rows = ["| | action | target | adapter | disruption | reason |", "|---|---|---|---|---|---|"]
    for a in reconcile_plan.actions:
        reason = "; ".join((a.reason, *a.changes)).replace("|", "\\|")
        rows.append(f"| `{a.symbol}` | {a.kind.value} | `{a.target}` | {f'`{a.adapter}`' if a.adapter else ''} "
                    f"| {a.disruption.value} | {reason} |")
    interruptions = "".join(f"\n- **interrupts serving:** {i.describe()}" for i in reconcile_plan.interruptions)
    return "\n".join([*rows, "", f"**{reconcile_plan.summary()}** {_disruption_line(reconcile_plan)}"]) + interruptions + notes


def destroy_text(fleet: str, containers) -> str:
    """What `destroy` will stop and remove (observed containers or processes), before it asks."""
    ordered = sorted(containers, key=lambda c: (c.role == "router", c.server or "", c.replica or 0, c.name))
    lines = [f"fleetspec will stop and remove every server and the router of fleet {fleet}:", ""]
    for c in ordered:
        slot = "router" if c.role == "router" else (f"{c.server}/{c.replica}" if c.server else "leftover")
        lines.append(f"  - {slot:<10} {_identity(c)}, {c.status}")
    counts = [_count(sum(c.noun == noun for c in ordered), noun) for noun in sorted({c.noun for c in ordered})]
    lines += ["", f"Plan: {' and '.join(counts)} to stop and remove. Adapter files and the fleet file are left "
              "as they are."]
    return "\n".join(lines)


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}" + ("" if number == 1 else "es" if noun.endswith("s") else "s")


def _identity(container) -> str:
    """"process demo-main-0 (PID 4242)" on the local runtime, "container demo-main-0 (id 7620cb0f4ac3)" on Docker."""
    if container.noun == "process":
        return f"process {container.name}" + (f" (PID {container.pid})" if container.pid else "")
    return f"container {container.name} (id {container.id[:12]})"


def outcomes_text(result: apply_mod.ApplyResult, teardown: bool = False) -> str:
    marks = {apply_mod.OK: "done", apply_mod.UNCHANGED: "unchanged", apply_mod.SKIPPED: "skipped",
             apply_mod.FAILED: "FAILED"}
    lines = []
    for outcome in result.outcomes:
        a = outcome.action
        subject = f"{a.adapter} on {a.target}" if a.adapter else a.target
        lines.append(f"  {marks[outcome.status]:>9}  {a.kind.value} {subject} ({outcome.seconds:.1f} s): {outcome.message}")
    failed = len(result.failed)
    lines.append("" if not lines else "")
    if teardown:
        lines.append(f"Destroyed: {len(result.outcomes)} removed." if not failed else
                     f"Destroy finished with {failed} failure{'s' * (failed != 1)}; everything else was removed. "
                     "Fix the cause above and run destroy again.")
    else:
        lines.append("Apply complete." if not failed else
                     f"Apply finished with {failed} failure{'s' * (failed != 1)}; everything else was applied. "
                     "Fix the cause above and run apply again.")
    return "\n".join(lines)
