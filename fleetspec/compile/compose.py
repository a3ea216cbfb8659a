"""A fleet → one docker-compose project (pure): `docker-compose.yaml` plus the router's `router.json`.

One service per server replica (`<server>-<replica>`), with the planner's GPU ids as device
reservations, the engine's argv as `entrypoint` + `command`, ports published on
`runtime.bind_address`, adapter directories mounted read-only at the same path, a /health
healthcheck whose start period grows with the weights, and the reconciler's labels. Compose
interpolates `$` everywhere, so literal dollars are doubled and only `${VAR}` references survive as
references: a secret is resolved by compose from the operator's environment, never written here.
"""

from __future__ import annotations

import pathlib
import re

from fleetspec.compile import deploy, desired, labels, router, slots, templating, vllm_args
from fleetspec.spec import derived, models

TEMPLATE = "compose/docker-compose.yaml.j2"
COMPOSE_FILE = "docker-compose.yaml"
HF_VOLUME = "hf-cache"
HEALTH_PROBE = "import urllib.request; urllib.request.urlopen('http://127.0.0.1:{port}/health', timeout=4)"


def escape(text: str) -> str:
    """Literal `$` → `$$` (compose's escape); `${VAR}` references stay references."""
    parts, last = [], 0
    for match in vllm_args.SECRET_REF.finditer(text):
        parts.append(text[last:match.start()].replace("$", "$$"))
        parts.append(match.group(0))
        last = match.end()
    parts.append(text[last:].replace("$", "$$"))
    return "".join(parts)


def unescape(text: str) -> str:
    """What compose makes of an escaped value when the variables are left as references."""
    return re.sub(r"\$\$", "$", text)


def engine_service(spec: models.FleetSpec, server: models.Server, slot: slots.Slot, host_port: int,
                   base_dir: pathlib.Path | None) -> dict:
    launch = vllm_args.replica_launch(spec, server, slot.replica, host="0.0.0.0", port=vllm_args.CONTAINER_PORT,
                                      base_dir=base_dir)
    volumes = [{"type": "bind", "source": root, "target": root, "read_only": True}
               for root in deploy.adapter_roots(spec, server, base_dir)]
    volumes.append({"type": "volume", "source": HF_VOLUME, "target": deploy.HF_CACHE, "read_only": False})
    service = {
        "name": f"{server.name}-{slot.replica}",
        "image": deploy.engine_image(spec, server),
        "entrypoint": launch.argv[:1],
        "command": launch.argv[1:],
        "environment": sorted(launch.env.items()),
        "ports": [{"target": vllm_args.CONTAINER_PORT, "published": host_port, "host_ip": spec.runtime.bind_address}],
        "volumes": volumes,
        "gpu_ids": [str(g) for g in slot.gpus] if spec.runtime.engine == "vllm" and not deploy.on_host(spec, server)
        else [],
        "ipc": "host",  # NCCL and the engine's worker processes share memory (vLLM's Docker docs)
        "healthcheck": _healthcheck(deploy.startup_seconds(server, slot.weights_gib)),
    }
    service["labels"] = _labels(spec, {labels.SERVER: server.name, labels.REPLICA: str(slot.replica),
                                       labels.ROLE: labels.ROLE_ENGINE}, service)
    return service


def router_service(spec: models.FleetSpec) -> dict:
    service = {
        "name": "router",
        "image": deploy.router_image(spec),
        "entrypoint": deploy.router_argv()[:1],
        "command": deploy.router_argv()[1:],
        "environment": sorted(deploy.router_env(spec).items()),
        "ports": [{"target": deploy.ROUTER_CONTAINER_PORT, "published": spec.runtime.router.port,
                   "host_ip": spec.runtime.bind_address}],
        "volumes": [{"type": "bind", "source": f"./{deploy.ROUTER_CONFIG_FILE}", "target": deploy.ROUTER_CONFIG_PATH,
                     "read_only": True}],
        "gpu_ids": [],
        "ipc": None,
        "healthcheck": _healthcheck(30, port=deploy.ROUTER_CONTAINER_PORT),
    }
    service["labels"] = _labels(spec, {labels.ROLE: labels.ROLE_ROUTER}, service)
    return service


def port_mapping(port: dict) -> str:
    host = port["host_ip"]
    host = f"[{host}]" if ":" in host and not host.startswith("[") else host
    return f"{host}:{port['published']}:{port['target']}/tcp"


def _healthcheck(start_seconds: int, port: int = vllm_args.CONTAINER_PORT) -> dict:
    # python3, not curl: both the vLLM image and fleetspec's own images have it.
    return {"test": ["CMD", "python3", "-c", HEALTH_PROBE.format(port=port)], "interval": "10s", "timeout": "5s", "retries": 3,
            "start_period": f"{start_seconds}s"}


def _labels(spec: models.FleetSpec, own: dict[str, str], service: dict) -> list[tuple[str, str]]:
    """The reconciler's labels, with the spec hash of the container as desired.ContainerSpec sees it."""
    base = {labels.FLEET: spec.name, **own}
    container = desired.ContainerSpec(
        name=service["name"], image=service["image"], argv=[*service["entrypoint"], *service["command"]],
        env=dict(service["environment"]), gpu_ids=service["gpu_ids"],
        ports=[{"container_port": p["target"], "host_port": p["published"], "host_ip": p["host_ip"]}
               for p in service["ports"]],
        volumes=[{"source": v["source"], "target": v["target"], "read_only": v["read_only"]}
                 for v in service["volumes"]],
        labels=base,
    )
    return sorted({**base, labels.SPEC_HASH: container.spec_hash()}.items())


def _escaped(service: dict) -> dict:
    out = dict(service)
    out["image"] = escape(service["image"])
    out["entrypoint"] = [escape(w) for w in service["entrypoint"]]
    out["command"] = [escape(w) for w in service["command"]]
    out["environment"] = [(k, escape(v)) for k, v in service["environment"]]
    out["labels"] = [(k, escape(v)) for k, v in service["labels"]]
    out["volumes"] = [dict(v, source=escape(v["source"]), target=escape(v["target"])) for v in service["volumes"]]
    # Short syntax: docker-compose 1.29 (Debian's) has no host_ip in the long form.
    out["ports"] = [dict(p, mapping=escape(port_mapping(p))) for p in service["ports"]]
    return out


def services(spec: models.FleetSpec, placed: list[slots.Slot], base_dir: pathlib.Path | None) -> list[dict]:
    ports = derived.replica_ports(spec)
    found = []
    for slot in placed:
        server = spec.server(slot.server)
        found.append(engine_service(spec, server, slot, ports[(slot.server, slot.replica)], base_dir))
    if spec.runtime.router.enabled:
        found.append(router_service(spec))
    return found


def routing_table(spec: models.FleetSpec, placed: list[slots.Slot], base_dir: pathlib.Path | None,
                  cluster_maps: dict | None = None) -> dict:
    upstreams = [router.upstream(s.server, s.replica, f"http://{s.server}-{s.replica}:{vllm_args.CONTAINER_PORT}")
                 for s in placed]
    return router.routing_table(spec, upstreams, base_dir, cluster_maps)


def compile_project(spec: models.FleetSpec, placed: list[slots.Slot], base_dir: pathlib.Path | None = None,
                    templates: str | pathlib.Path | None = None, cluster_maps: dict | None = None) -> dict[str, str]:
    """File name → text. From an override template, the compose file is parsed back and each
    service checked before return (templating's docstring says why the shipped one is not)."""
    wanted = services(spec, placed, base_dir)
    context = {"fleet": spec.name, "services": [_escaped(s) for s in wanted], "named_volumes": [HF_VOLUME]}
    text = templating.render_checked(TEMPLATE, context, templates, lambda document: check(document, wanted))
    files = {COMPOSE_FILE: text}
    if spec.runtime.router.enabled:
        files[deploy.ROUTER_CONFIG_FILE] = router.to_json(routing_table(spec, placed, base_dir, cluster_maps))
    return files


def check(document: object, wanted: list[dict]) -> None:
    """The parsed compose file has every service with the image, argv, environment, labels, ports and
    mounts exactly as compiled: a template that let a value change the structure is caught here."""
    if not isinstance(document, dict) or not isinstance(document.get("services"), dict):
        raise templating.TemplateError(f"the template {TEMPLATE} did not produce a mapping with `services`")
    for service in wanted:
        got = document["services"].get(service["name"])
        if not isinstance(got, dict):
            raise templating.TemplateError(f"the template {TEMPLATE} left out the service {service['name']}")
        for field, problem in _differences(got, service):
            raise templating.TemplateError(
                f"the template {TEMPLATE} rendered a service {service['name']} that {problem} ({field}); "
                "every value in a template must pass through the `q` filter")


def _differences(got: dict, service: dict):
    def text(value) -> str:
        return unescape(str(value))

    argv = [text(w) for w in [*(got.get("entrypoint") or []), *(got.get("command") or [])]]
    if argv != [*service["entrypoint"], *service["command"]]:
        yield "command", "does not run the compiled argv"
    if text(got.get("image")) != service["image"]:
        yield "image", "does not run the compiled image"
    if {k: text(v) for k, v in (got.get("environment") or {}).items()} != dict(service["environment"]):
        yield "environment", "lost or changed environment values"
    if {k: text(v) for k, v in (got.get("labels") or {}).items()} != dict(service["labels"]):
        yield "labels", "lost or changed the reconciler's labels"
    if [text(p) for p in got.get("ports") or []] != [port_mapping(p) for p in service["ports"]]:
        yield "ports", "publishes other ports than compiled"
    mounts = [(text(v.get("source")), text(v.get("target")), v.get("read_only")) for v in got.get("volumes") or []]
    if mounts != [(v["source"], v["target"], v["read_only"]) for v in service["volumes"]]:
        yield "volumes", "mounts other paths than compiled"
