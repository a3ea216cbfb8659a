"""`fleetspec status` as rows (JSON) and text: per replica its process or container, its engine's
/health and the adapters its /v1/models lists, and every way that differs from the fleet file.

Drift is what a monitor must see: a replica that is down, unhealthy or serving other adapters, a
leftover process, a router that is down or serves another config. Each is one sentence that names
the replica, says what is wrong and what fixes it, because the reader may be paged at night.
"""

from __future__ import annotations

import pathlib

from fleetspec.compile import desired as desired_mod
from fleetspec.drivers import base
from fleetspec.reconcile import observed as observed_mod

HEALTHY, UNHEALTHY, DOWN = "healthy", "unhealthy", "down"


def status_rows(want: desired_mod.DesiredState, have: observed_mod.ObservedState) -> list[dict]:
    """One row per replica slot, desired or observed, with drift spelled out."""
    rows = []
    for key in sorted(set(want.replicas) | set(have.replicas)):
        wanted, seen = want.replicas.get(key), have.replicas.get(key)
        container = seen.container if seen else None
        loaded = sorted(seen.adapters) if seen and seen.adapters is not None else None
        noun = container.noun if container else base.runtime_noun(wanted.container.image)
        rows.append({
            "server": key[0], "replica": key[1], "slot": f"{key[0]}/{key[1]}", "noun": noun,
            "container": container.name if container else None,
            "pid": container.pid if container else None, "log": container.log_path if container else None,
            "status": container.status if container else "absent",
            "exit_code": container.exit_code if container else None,
            "state": _state(container, seen),
            "healthy": bool(seen and seen.healthy),
            "health": "ok" if seen and seen.healthy else (seen.problem if seen else None),
            "url": seen.base_url if seen else None,
            "gpus": list(wanted.container.gpu_ids) if wanted else [],
            "adapters": loaded, "declared_adapters": sorted(wanted.adapters) if wanted else [],
            "on_demand_adapters": sorted(wanted.on_demand) if wanted else [],
            "drift": _replica_drift(f"{key[0]}/{key[1]}", wanted, seen, loaded),
        })
    return rows


def _state(container, seen) -> str:
    if container is None or not container.running:
        return DOWN
    return HEALTHY if seen.healthy else UNHEALTHY


def _replica_drift(slot: str, wanted, seen, loaded: list[str] | None) -> list[str]:
    if wanted is None:
        return [f"{slot} is not declared in the fleet file; the next apply removes it."]
    if seen is None:
        noun = base.runtime_noun(wanted.container.image)
        return [f"{slot} is down: no {noun} runs for it; the next apply starts one."]
    container = seen.container
    if container.spec_hash != wanted.container.spec_hash():
        found = [f"{slot} runs an older configuration than the fleet file; the next apply replaces it."]
        return found + ([_down(slot, container)] if not container.running else [])
    if not container.running:
        return [_down(slot, container)]
    if not seen.healthy:
        return [f"{slot} is unhealthy: its {container.noun} {container.name}{_pid(container)} runs, but its engine "
                f"does not answer as it should: {_sentence(seen.problem or 'no answer')} It may still be starting; "
                f"if it stays so, {_log_hint(container)}."]
    found = [f"{slot} does not serve adapter {name}, which the fleet file declares; the next apply loads it."
             for name in sorted(wanted.adapters) if name not in (loaded or [])]
    found += [f"{slot} serves adapter {name}, which the fleet file does not declare; the next apply unloads it."
              for name in loaded or [] if name not in wanted.adapters and name not in wanted.on_demand]
    return found


def _down(slot: str, container) -> str:
    if container.status == "exited":
        how = "exited" + (f" with code {container.exit_code}" if container.exit_code is not None else "")
    else:
        how = f"is {container.status}"
    return (f"{slot} is down: its {container.noun} {container.name} {how}, so nothing serves there; "
            f"the next apply (or a running `fleetspec watch`) starts it again. To see why it stopped, "
            f"{_log_hint(container)}.")


def _pid(container) -> str:
    return f" (PID {container.pid})" if container.pid else ""


def _log_hint(container) -> str:
    if container.noun == "process":
        return f"read its log {shown_path(container.log_path)}" if container.log_path else "read its log"
    return f"run `docker logs {container.name}`"


def _sentence(text: str) -> str:
    text = text.strip()
    return text if text.endswith((".", "!", "?")) else text + "."


def shown_path(path: str | None) -> str:
    """A path as short as it can be while still meaning the same file from the user's shell."""
    if not path:
        return "-"
    try:
        return str(pathlib.Path(path).resolve().relative_to(pathlib.Path.cwd()))
    except (ValueError, OSError):
        return path


def router_row(want: desired_mod.DesiredState, have: observed_mod.ObservedState, url: str,
               drift: list[str]) -> dict | None:
    if want.router is None and have.router is None:
        return None
    router = have.router
    problems = []
    if want.router is None:
        problems.append("The router is disabled in the fleet file; the next apply removes it.")
    elif router is None:
        problems.append("The router is down: it does not run; the next apply starts it.")
    elif not router.running:
        problems.append(f"The router is down: its {router.noun} {router.name} {router.status}; the next apply "
                        f"starts it again. To see why it stopped, {_log_hint(router)}.")
    elif have.router_config_hash is None:
        problems.append(f"The router's {router.noun} {router.name}{_pid(router)} runs, but it does not answer at "
                        f"{url}; if that lasts, {_log_hint(router)}.")
    elif have.router_config_hash != want.router_config_hash():
        problems.append("The router serves an older routing config than the fleet file; the next apply updates it.")
    problems += [_sentence(d[0].upper() + d[1:]) for d in drift]
    if router is None or not router.running:
        state = DOWN
    else:
        state = UNHEALTHY if have.router_config_hash is None else HEALTHY
    return {"container": router.name if router else None, "noun": router.noun if router else None, "state": state,
            "pid": router.pid if router else None, "log": router.log_path if router else None,
            "status": router.status if router else "absent", "url": url,
            "config_hash": have.router_config_hash, "drift": problems}


def stray_drift(strays) -> list[str]:
    return [f"{c.noun.capitalize()} {c.name}{_pid(c)} belongs to this fleet but to no replica it declares; the next "
            "apply removes it." for c in strays]


def in_sync(rows: list[dict], strays, router: dict | None) -> bool:
    return not any(r["drift"] for r in rows) and not strays and not (router and router["drift"])


def status_text(fleet: str, rows: list[dict], strays=(), router: dict | None = None) -> str:
    if not rows and router is None and not strays:
        return f"Fleet {fleet} has no servers running and none declared."
    lines = [f"Fleet {fleet}:"]
    for row in rows:
        lines += _replica_lines(row)
    if router is not None:
        where = f"{router['noun']} {router['container']}" if router["container"] else "no router runs"
        lines.append(f"  {'router':<7} {router['state']:<10} {', '.join(_details(router, where, router['url']))}")
        lines.extend(f"      drift: {d}" for d in router["drift"])
    lines.extend(f"      drift: {d}" for d in stray_drift(strays))
    problems = sum(len(r["drift"]) for r in rows) + len(strays) + (len(router["drift"]) if router else 0)
    if in_sync(rows, strays, router):
        lines.append("In sync with the fleet file. Every replica runs, answers /health and serves its adapters.")
    else:
        lines.append(f"Out of sync: {problems} problem{'s' * (problems != 1)} above. Run `fleetspec apply` "
                     "(or keep `fleetspec watch` running) to converge.")
    return "\n".join(lines)


def _replica_lines(row: dict) -> list[str]:
    where = f"{row['noun']} {row['container']}" if row["container"] else f"no {row['noun']}"
    if row["status"] not in ("running", "absent"):
        where += f" {row['status']}" + (f" (code {row['exit_code']})" if row["exit_code"] is not None else "")
    details = _details(row, where, row["url"])
    if row["gpus"]:
        details.append(f"GPUs {','.join(row['gpus'])}")
    lines = [f"  {row['slot']:<7} {row['state']:<10} {', '.join(details)}"]
    if row["adapters"] is not None:
        on_demand = set(row["on_demand_adapters"])
        names = [f"{n} (on demand)" if n in on_demand else n for n in row["adapters"]]
        lines.append(f"  {'':<7} {'':<10} adapters: {', '.join(names) or 'none'}")
    elif row["state"] == UNHEALTHY:
        lines.append(f"  {'':<7} {'':<10} adapters: unknown (the engine does not answer)")
    lines.extend(f"      drift: {d}" for d in row["drift"])
    return lines


def _details(row: dict, where: str, url: str | None) -> list[str]:
    details = [where]
    if row.get("pid"):
        details.append(f"PID {row['pid']}")
    if url and row["status"] == "running":
        details.append(url)
    if row.get("log") and row.get("noun") == "process":
        details.append(f"log {shown_path(row['log'])}")
    return details

