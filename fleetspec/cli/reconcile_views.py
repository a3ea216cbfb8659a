"""Reconcile plans, apply outcomes and fleet status as text, markdown and JSON (same data, three forms)."""

from __future__ import annotations

from fleetspec.compile import desired as desired_mod
from fleetspec.reconcile import apply as apply_mod
from fleetspec.reconcile import observed as observed_mod
from fleetspec.reconcile import plan as plan_mod


def plan_text(reconcile_plan: plan_mod.ReconcilePlan, subject: str = "the running fleet") -> str:
    notes = [f"drift: {note}" for note in reconcile_plan.notes]
    if not reconcile_plan.has_changes:
        return "\n".join([f"No changes. {subject[0].upper() + subject[1:]} matches the fleet file.", *notes])
    lines = ["fleetspec will perform the following actions:", ""]
    for action in reconcile_plan.actions:
        lines.append(f"  {action.describe()}")
        lines.extend(f"      {change}" for change in action.changes)
    lines += ["", reconcile_plan.summary(), _disruption_line(reconcile_plan), *notes]
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
    return "\n".join([*rows, "", f"**{reconcile_plan.summary()}** {_disruption_line(reconcile_plan)}"]) + notes


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


def status_rows(want: desired_mod.DesiredState, have: observed_mod.ObservedState) -> list[dict]:
    """One row per replica slot, desired or observed, with drift spelled out."""
    rows = []
    for key in sorted(set(want.replicas) | set(have.replicas)):
        wanted, seen = want.replicas.get(key), have.replicas.get(key)
        container = seen.container if seen else None
        loaded = sorted(seen.adapters) if seen and seen.adapters is not None else None
        declared = sorted(wanted.adapters) if wanted else []
        drift = []
        if wanted is None:
            drift.append("not declared (will be removed)")
        elif seen is None:
            drift.append("not running")
        elif container.spec_hash != wanted.container.spec_hash():
            drift.append("configuration differs (will be replaced)")
        if loaded is not None and wanted is not None:
            drift += [f"missing {n}" for n in declared if n not in loaded]
            drift += [f"extra {n}" for n in loaded if n not in declared]
        rows.append({
            "server": key[0], "replica": key[1],
            "container": container.name if container else None,
            "pid": container.pid if container else None, "log": container.log_path if container else None,
            "status": container.status if container else "absent",
            "healthy": bool(seen and seen.healthy),
            "url": seen.base_url if seen else None,
            "gpus": list(wanted.container.gpu_ids) if wanted else [],
            "adapters": loaded, "declared_adapters": declared, "drift": drift,
        })
    return rows


def router_row(want: desired_mod.DesiredState, have: observed_mod.ObservedState, url: str,
               drift: list[str]) -> dict | None:
    if want.router is None and have.router is None:
        return None
    problems = list(drift)
    if want.router is None:
        problems.append("not declared (will be removed)")
    elif have.router is None or not have.router.running:
        problems.append("not running")
    elif have.router_config_hash != want.router_config_hash():
        problems.append("serves an older routing config (the next apply updates it)")
    return {"container": have.router.name if have.router else None,
            "pid": have.router.pid if have.router else None,
            "status": have.router.status if have.router else "absent", "url": url,
            "config_hash": have.router_config_hash, "drift": problems}


def status_text(fleet: str, rows: list[dict], strays: int, router: dict | None = None) -> str:
    if not rows and router is None:
        return f"Fleet {fleet} has no servers running and none declared."
    lines = [f"Fleet {fleet}:"]
    for row in rows:
        health = "healthy" if row["healthy"] else ("not answering" if row["status"] == "running" else row["status"])
        if row["adapters"] is not None:
            adapters = ", ".join(row["adapters"]) or "none"
        else:
            adapters = "-" if row["status"] == "absent" else "(unknown: the engine is not answering)"
        pid = f"PID {row['pid']:<8} " if row.get("pid") else ""
        lines.append(f"  {row['server']}/{row['replica']}  {health:<14} {row['url'] or '-':<24} {pid}"
                     f"GPUs {','.join(row['gpus']) or '-':<6} adapters: {adapters}")
        lines.extend(f"      drift: {d}" for d in row["drift"])
    if router is not None:
        pid = f" PID {router['pid']}" if router.get("pid") else ""
        lines.append(f"  router  {router['status']:<14} {router['url']:<24}{pid}")
        lines.extend(f"      drift: {d}" for d in router["drift"])
    if strays:
        lines.append(f"  {strays} leftover container(s) of this fleet will be removed by the next apply.")
    in_sync = all(not r["drift"] for r in rows) and not strays and not (router and router["drift"])
    lines.append("In sync with the fleet file." if in_sync else "Out of sync: run `fleetspec apply` to converge.")
    return "\n".join(lines)
