"""`fleetspec status` as rows (JSON) and text: per replica its process or container, its engine's
/health and the adapters its /v1/models lists, and every way that differs from the fleet file.

Drift is what a monitor must see: a replica that is down, unhealthy or serving other adapters, a
leftover process, a router that is down or serves another config. Each is one sentence that names
the replica, says what is wrong and what fixes it, because the reader may be paged at night.
"""

from __future__ import annotations

import dataclasses
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
    # What an admin call changed and apply does not undo (a cluster mapping): the file or a clear does.
    kept = [_sentence(d[0].upper() + d[1:]) for d in drift if "next apply" not in d]
    if router is None or not router.running:
        state = DOWN
    else:
        state = UNHEALTHY if have.router_config_hash is None else HEALTHY
    return {"container": router.name if router else None, "noun": router.noun if router else None, "state": state,
            "pid": router.pid if router else None, "log": router.log_path if router else None,
            "status": router.status if router else "absent", "url": url,
            "config_hash": have.router_config_hash, "drift": problems, "kept_by_apply": kept}


def stray_drift(strays) -> list[str]:
    return [f"{c.noun.capitalize()} {c.name}{_pid(c)} belongs to this fleet but to no replica it declares; the next "
            "apply removes it." for c in strays]


def in_sync(rows: list[dict], strays, router: dict | None) -> bool:
    return not any(r["drift"] for r in rows) and not strays and not (router and router["drift"])


def status_text(fleet: str, rows: list[dict], strays=(), router: dict | None = None) -> str:
    if not rows and router is None and not strays:
        return f"Fleet {fleet} has no servers running and none declared."
    lines = [f"Fleet {fleet}:"]
    width = _slot_width(rows)
    for row in rows:
        lines += _replica_lines(row, width)
    if router is not None:
        where = f"{router['noun']} {router['container']}" if router["container"] else "no router runs"
        lines.append(f"  {'router':<{width}} {router['state']:<10} "
                     f"{', '.join(_details(router, where, router['url']))}")
        lines.extend(f"      drift: {d}" for d in router["drift"])
    lines.extend(f"      drift: {d}" for d in stray_drift(strays))
    problems = sum(len(r["drift"]) for r in rows) + len(strays) + (len(router["drift"]) if router else 0)
    kept = len(router.get("kept_by_apply", ())) if router else 0
    if in_sync(rows, strays, router):
        lines.append("In sync with the fleet file. Every replica runs, answers /health and serves its adapters.")
    elif kept == problems:
        # `plan` says "No changes" here, rightly: telling the user to apply would send them in a circle.
        them = "it" if kept == 1 else "them"
        lines.append(f"Out of sync: the router's runtime change{'s' * (kept != 1)} above, which `fleetspec apply` "
                     f"leaves as {them} {'is' if kept == 1 else 'are'}: put {them} in the fleet file or clear "
                     f"{them} (POST /admin/clusters/clear).")
    else:
        lines.append(f"Out of sync: {problems} problem{'s' * (problems != 1)} above. Run `fleetspec apply` "
                     "(or keep `fleetspec watch` running) to converge"
                     + (f"; apply leaves the router's {kept} runtime change{'s' * (kept != 1)}: put "
                        f"{'it' if kept == 1 else 'them'} in the fleet file or clear "
                        f"{'it' if kept == 1 else 'them'}." if kept else "."))
    return "\n".join(lines)


def _replica_lines(row: dict, width: int = 7) -> list[str]:
    where = f"{row['noun']} {row['container']}" if row["container"] else f"no {row['noun']}"
    if row["status"] not in ("running", "absent"):
        where += f" {row['status']}" + (f" (code {row['exit_code']})" if row["exit_code"] is not None else "")
    details = _details(row, where, row["url"])
    if row["gpus"]:
        details.append(f"GPUs {','.join(row['gpus'])}")
    return _slot_lines(row, width, ", ".join(details))


def _slot_width(rows: list[dict]) -> int:
    """The slot column of replica and pod lines: "swarm-api/0" must not run into its state."""
    return max([7] + [len(r["slot"]) for r in rows])


def _slot_lines(row: dict, width: int, details: str, notes: tuple[str, ...] = ()) -> list[str]:
    """A replica's or a pod's lines: slot, state and details, its adapters, `notes`, then its drift."""
    return [f"  {row['slot']:<{width}} {row['state']:<10} {details}", *_adapter_lines(row, width),
            *(f"  {'':<{width}} {'':<10} {note}" for note in notes), *(f"      drift: {d}" for d in row["drift"])]


def _adapter_lines(row: dict, width: int) -> list[str]:
    """The adapters a replica (or pod) serves, on-demand ones marked; unknown while its engine is silent."""
    if row["adapters"] is not None:
        on_demand = set(row["on_demand_adapters"])
        names = [f"{n} (on demand)" if n in on_demand else n for n in row["adapters"]]
        return [f"  {'':<{width}} {'':<10} adapters: {', '.join(names) or 'none'}"]
    if row["state"] == UNHEALTHY:
        return [f"  {'':<{width}} {'':<10} adapters: unknown (the engine does not answer)"]
    return []


def _details(row: dict, where: str, url: str | None) -> list[str]:
    details = [where]
    if row.get("pid"):
        details.append(f"PID {row['pid']}")
    if url and row["status"] == "running":
        details.append(url)
    if row.get("log") and row.get("noun") == "process":
        details.append(f"log {shown_path(row['log'])}")
    return details



# -- Kubernetes: the pods as the fleet's router sees them ------------------------------------------
#
# fleetspec has no access to the cluster's API: for a Kubernetes fleet, `status` reads the router's
# /health, which lists every pod it discovered (headless Service DNS), the engine's health and
# adapters there, and what each pod's agent says of its ConfigMap.

@dataclasses.dataclass(frozen=True)
class ServerWant:
    """What the fleet file declares for one server's pods."""

    replicas: int
    adapters: tuple[str, ...]  # the served names in its adapters ConfigMap's `adapters` (preloaded)
    on_demand: tuple[str, ...]  # its `on_demand`: loaded by the router when asked for; served or not, no drift
    agent: bool  # its pods run the `fleetspec agent` sidecar (LoRA servers)
    configmap: str  # the adapters ConfigMap's name
    instance: str  # its pods' app.kubernetes.io/instance label


@dataclasses.dataclass(frozen=True)
class K8sWant:
    fleet: str
    namespace: str
    servers: dict[str, ServerWant]
    router_config_hash: str | None  # of the router ConfigMap's document; None: the router is off


def k8s_desired(spec, base_dir: pathlib.Path | None, cluster_maps: dict | None = None) -> K8sWant:
    """What the manifests compiled from the file put in the cluster (pure)."""
    from fleetspec.compile import adapter_set, k8s, k8s_secrets
    from fleetspec.routing import config as router_config

    servers = {}
    for server in spec.servers:
        document = adapter_set.document(spec, server, base_dir)
        servers[server.name] = ServerWant(
            server.replicas, tuple(sorted(document["adapters"])),
            tuple(sorted(document["on_demand"])),
            server.lora is not None, k8s.adapter_set_name(server), k8s.name(spec.name, server.name))
    router_hash = None
    if spec.runtime.router.enabled:
        # The router's ConfigMap embeds the fleet with literal credentials replaced by ${VAR}, as compiled.
        stripped = k8s_secrets.collect(spec).spec
        router_hash = router_config.config_hash(k8s.routing_table(stripped, base_dir, cluster_maps))
    return K8sWant(spec.name, k8s.namespace_of(spec), servers, router_hash)


def k8s_router_url(spec) -> str | None:
    """Where the fleet file says its router answers from outside the cluster: the Ingress host."""
    host = spec.runtime.kubernetes.ingress_host
    return f"http://{host}" if host and spec.runtime.router.enabled else None


def pod_rows(want: K8sWant, health: dict) -> list[dict]:
    """One row per pod the router lists, and one per declared replica it does not see, with drift."""
    seen: dict[str, list[dict]] = {}
    for replica in health.get("replicas") or []:
        seen.setdefault(str(replica.get("server")), []).append(replica)
    rows = []
    for server in sorted(set(want.servers) | set(seen)):
        wanted = want.servers.get(server)
        pods = sorted(seen.get(server, []), key=lambda r: int(r.get("replica") or 0))
        for index, pod in enumerate(pods):
            rows.append(_pod_row(want, server, index, wanted, pod))
        for index in range(len(pods), wanted.replicas if wanted else 0):
            slot = f"{server}/{index}"
            rows.append({"server": server, "replica": index, "slot": slot, "url": None, "address": None,
                         "state": DOWN, "healthy": False, "health": None, "adapters": None,
                         "declared_adapters": list(wanted.adapters), "on_demand_adapters": list(wanted.on_demand),
                         "agent": None, "drift": [_missing_pod(want, wanted, slot, server, len(pods))]})
    return rows


def _pod_row(want: K8sWant, server: str, index: int, wanted: ServerWant | None, pod: dict) -> dict:
    slot, url = f"{server}/{index}", str(pod.get("url") or "")
    healthy = pod.get("healthy") is True
    adapters = sorted(pod.get("adapters") or []) if healthy else None
    agent = pod.get("agent") if isinstance(pod.get("agent"), dict) else None
    row = {"server": server, "replica": index, "slot": slot, "url": url, "address": url.partition("://")[2] or url,
           "state": HEALTHY if healthy else UNHEALTHY, "healthy": healthy,
           "health": "ok" if healthy else (pod.get("last_error") or "not checked yet"),
           "draining": bool(pod.get("draining")), "inflight": pod.get("inflight"),
           "adapters": adapters, "declared_adapters": list(wanted.adapters) if wanted else [],
           "on_demand_adapters": list(wanted.on_demand) if wanted else [], "agent": agent, "drift": []}
    row["drift"] = _pod_drift(want, server, slot, wanted, row)
    return row


def _pod_drift(want: K8sWant, server: str, slot: str, wanted: ServerWant | None, row: dict) -> list[str]:
    where = f"{slot} ({row['address']})"
    if wanted is None:
        return [f"{where} is a pod of server {server}, which the fleet file does not declare; apply the manifests "
                "compiled from it with `kubectl apply --prune` to remove its Deployment."]
    found = []
    if row["replica"] >= wanted.replicas:
        found.append(f"{where} is one pod more than the {wanted.replicas} replica"
                     f"{'s' * (wanted.replicas != 1)} the fleet file declares for {server}; a rollout in progress "
                     "runs one more for a while, otherwise apply the compiled manifests (the Deployment's "
                     "`replicas`).")
    if not row["healthy"]:
        found.append(f"{where} is unhealthy: the router's last check of its engine failed "
                     f"({_sentence(row['health']).rstrip('.')}); the router sends it nothing until it answers "
                     f"again; {_pod_hint(want, row, 'vllm')}.")
    else:
        served = set(row["adapters"] or [])
        missing = [n for n in wanted.adapters if n not in served]
        extra = sorted(n for n in served if n not in wanted.adapters and n not in wanted.on_demand)
        fix = (f"its agent serves what the ConfigMap {wanted.configmap} lists: apply the manifests compiled from "
               "this file (kubelet delivers a ConfigMap change within about a minute)")
        if missing:
            found.append(f"{where} does not serve {_names(missing)}, which the fleet file declares; {fix}.")
        if extra:
            found.append(f"{where} serves {_names(extra)}, which the fleet file does not declare; {fix}.")
        agent = row["agent"]
        last_good = (agent or {}).get("last_good") or {}
        if (not missing and not extra and agent and agent.get("state") == "ok"
                and sorted(last_good.get("adapters") or []) != sorted(wanted.adapters)):
            found.append(f"{where}: its agent's last good set ({_names(last_good.get('adapters') or [])}, ConfigMap "
                         f"revision {last_good.get('revision')}) is not the fleet file's ({_names(wanted.adapters)}); "
                         f"{fix}.")
    agent = row["agent"]
    if agent and agent.get("problem"):
        fix = (f"fix the ConfigMap {wanted.configmap} (or the adapter files it names); the pod keeps serving its "
               "last good set meanwhile, and traffic is routed by what it serves"
               if agent.get("problem_kind") else
               f"look at its agent container: {_pod_hint(want, row, 'agent')}")
        found.append(f"{where}: {_sentence(agent['problem']).rstrip('.')}. To fix it, {fix}.")
    return found


def _pod_hint(want: K8sWant, row: dict, container: str) -> str:
    ip = row["address"].rsplit(":", 1)[0].strip("[]")
    return (f"`kubectl -n {want.namespace} get pods --field-selector status.podIP={ip}` names the pod, and "
            f"`kubectl -n {want.namespace} logs POD -c {container}` says why")


def _missing_pod(want: K8sWant, wanted: ServerWant, slot: str, server: str, seen: int) -> str:
    return (f"{slot} is missing: the router sees {seen} Ready pod{'s' * (seen != 1)} of {server} and the fleet file "
            f"declares {wanted.replicas}; a pod that is not Ready (or not scheduled) is not in the headless Service. "
            f"`kubectl -n {want.namespace} get pods -l app.kubernetes.io/instance={wanted.instance}` shows them.")


def _names(names) -> str:
    names = list(names)
    return ", ".join(names) if names else "no adapters"


def k8s_router_row(want: K8sWant, health: dict, url: str, drift: list[str]) -> dict:
    problems = []
    served = health.get("config_hash")
    if want.router_config_hash is not None and served != want.router_config_hash:
        problems.append(f"The router serves routing config {str(served)[:12]}, not the one this file compiles to "
                        f"({want.router_config_hash[:12]}): apply the compiled manifests; kubelet delivers the "
                        "router's ConfigMap within about a minute and the router reloads it itself.")
    if health.get("unserved"):
        problems.append(f"The router says no healthy pod serves {', '.join(health['unserved'])}, which the fleet "
                        "preloads; requests for them get its fallback.")
    problems += [_sentence(d[0].upper() + d[1:]) for d in drift]
    return {"url": url, "state": HEALTHY if health.get("status") == "ok" else "degraded",
            "status": health.get("status"), "config_hash": served,
            "healthy_upstreams": health.get("healthy_upstreams"), "upstreams": health.get("upstreams"),
            "drift": problems}


def k8s_status_text(want: K8sWant, rows: list[dict], router: dict) -> str:
    lines = [f"Fleet {want.fleet} (Kubernetes, namespace {want.namespace}), as its router at {router['url']} sees it:"]
    width = _slot_width(rows)
    for row in rows:
        lines += _pod_lines(row, width)
    lines.append(f"  {'router':<{width}} {router['state']:<10} {router['url']}, config "
                 f"{str(router['config_hash'])[:12]}, {router['healthy_upstreams']} of {router['upstreams']} pods "
                 "healthy")
    lines.extend(f"      drift: {d}" for d in router["drift"])
    problems = sum(len(r["drift"]) for r in rows) + len(router["drift"])
    if in_sync(rows, (), router):
        lines.append("In sync with the fleet file. Every pod is Ready, serves its adapters, and its agent applied "
                     "its ConfigMap.")
    else:
        lines.append(f"Out of sync: {problems} problem{'s' * (problems != 1)} above. fleetspec does not change a "
                     "cluster: fix what they name, or apply the manifests `fleetspec compile FILE --target k8s` "
                     "writes (`kubectl apply -k DIR`, Argo CD, Flux).")
    return "\n".join(lines)


def _pod_lines(row: dict, width: int) -> list[str]:
    details = row["address"] or "no pod"
    if row.get("draining"):
        details += ", draining"
    notes = (f"agent: {_agent_summary(row['agent'])}",) if row["agent"] is not None else ()
    return _slot_lines(row, width, details, notes)


def _agent_summary(agent: dict) -> str:
    state = agent.get("state")
    if state is None:
        return "not read yet"
    if state in ("unreachable", "bad-answer"):
        return f"does not answer at {agent.get('url')}" if state == "unreachable" else \
            f"no usable answer from {agent.get('url')}"
    last_good = agent.get("last_good")
    good = (f"last good set {last_good.get('revision')} ({_names(last_good.get('adapters') or [])})"
            if last_good else "no good set yet")
    if state == "problem":
        return f"ConfigMap revision {agent.get('problem_revision')} not applied ({agent.get('problem_kind')}); {good}"
    return f"{'ready' if agent.get('ready') else 'not ready'}, ConfigMap revision {agent.get('revision')}; {good}"
