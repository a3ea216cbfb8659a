"""A fleet → Kubernetes manifests (pure): a few multi-document files plus `kustomization.yaml`.

Objects: the Namespace; per server a Deployment (its replicas, `nvidia.com/gpu` = dp × tp × pp, probes on
/health with a startup budget that grows with the weights) and a Service; the router's ConfigMap
(the compiled routing table), Deployment and Service; an Ingress when
`runtime.kubernetes.ingress_host` is set. Labels follow Kubernetes' recommended `app.kubernetes.io/*`.

Files (a file's objects separated by `---`, in apply order): `shared.yaml`, the Namespace and the
adapters' and the model's claims when fleetspec creates them; `inline-secrets.yaml`, fleetspec's
Secret for literal credentials when there are any, alone so that the one file with credentials can
be encrypted or kept out of git; `vllm-<server>.yaml` per server: its adapter-set ConfigMap,
Deployment, Service and headless `-pods` Service; `router.yaml`: the router's ConfigMap, Deployment,
Service and Ingress. One file per server rather than per object, because creating files
was most of k8s compile's cost at hundreds of servers (docs/benchmarks.md); kustomize reads every
document of a resource file.

Adapters: the claim `runtime.kubernetes.adapter_claim` (default `<fleet>-adapters`) is mounted
read-only at the adapter root, so argv paths are the same inside the pod; with several roots the
claim holds each root as a sub-directory of the same name. `adapter_volume: host_path` mounts the
node's own directories instead (opt-in: it ties pods to prepared nodes).

Secrets: an env value `${VAR}` becomes a secretKeyRef to key VAR of the Secret `<fleet>-secrets`
(or `runtime.kubernetes.secret`; fleetspec never writes it: `kubectl create secret generic
<fleet>-secrets --from-literal=VAR=...`); a reference inside a longer value or an argument becomes
Kubernetes' own `$(VAR)`, and every literal `$` is written `$$`, Kubernetes' escape, so values reach
the container exactly as written (`$$` stays `$$`, `$(X)` stays `$(X)`). Credentials written
literally go into a Secret fleetspec writes, never a ConfigMap (`compile.k8s_secrets`).
"""

from __future__ import annotations

import functools
import hashlib
import math
import pathlib
import re

from fleetspec.catalog import vllm_flags
from fleetspec.compile import adapter_set, deploy, k8s_secrets, router, slots, templating, vllm_args
from fleetspec.planner import host as cpu_host
from fleetspec.planner import scheduling
from fleetspec.spec import models

KUSTOMIZATION = "kustomization.yaml"
KUSTOMIZATION_TEMPLATE = "k8s/kustomization.yaml.j2"
SHARED_FILE = "shared.yaml"  # the Namespace and the claims; then SECRET_FILE, vllm-<server>.yaml each
SECRET_FILE = "inline-secrets.yaml"  # fleetspec's Secret for literal credentials, alone in its file
ROUTER_FILE = "router.yaml"
DOCUMENT_SEPARATOR = "---\n"  # between the objects of one file
MANAGED_BY = "fleetspec"
PROBE_PERIOD = 10


def name(*parts: str) -> str:
    """An RFC 1035 label (Service names need a leading letter), shortened with a hash past 63."""
    text = "-".join(parts)
    if len(text) <= 63:
        return text
    digest = hashlib.sha256(text.encode()).hexdigest()[:8]
    return f"{text[:54].rstrip('-')}-{digest}"


def labels(spec: models.FleetSpec, component: str, instance: str, app: str) -> list[tuple[str, str]]:
    return [
        ("app.kubernetes.io/component", component),
        ("app.kubernetes.io/instance", instance),
        ("app.kubernetes.io/managed-by", MANAGED_BY),
        ("app.kubernetes.io/name", app),
        ("app.kubernetes.io/part-of", spec.name),
    ]


def _selector(all_labels: list[tuple[str, str]]) -> list[tuple[str, str]]:
    keep = ("app.kubernetes.io/component", "app.kubernetes.io/instance", "app.kubernetes.io/name")
    return [(k, v) for k, v in all_labels if k in keep]


def secret_name(spec: models.FleetSpec) -> str:
    """The operator's Secret that ${VAR} references read."""
    return spec.runtime.kubernetes.secret or name(spec.name, "secrets")


def inline_secret_name(spec: models.FleetSpec) -> str:
    """fleetspec's own Secret for credentials the fleet file writes out literally."""
    return name(spec.name, "inline-secrets")


def expand(text: str) -> tuple[str, list[str]]:
    """`${VAR}` → `$(VAR)` (Kubernetes' reference); every literal `$` → `$$` (Kubernetes turns `$$`
    into `$` and leaves nothing else of it to expand). Returns the names used."""
    out, used, last = [], [], 0
    for match in vllm_args.SECRET_REF.finditer(text):
        out.append(text[last:match.start()].replace("$", "$$"))
        out.append(f"$({match.group(1)})")
        used.append(match.group(1))
        last = match.end()
    out.append(text[last:].replace("$", "$$"))
    return "".join(out), used


def env_entries(spec: models.FleetSpec, env: dict[str, str], argv: list[str],
                inline: dict[str, str] | None = None) -> tuple[list[dict], list[str]]:
    """Env list for a container (secret-backed names first, so `$(VAR)` can refer to them) and argv.
    `inline`: env names whose literal value fleetspec moved into its own Secret, → that Secret's key."""
    inline = inline or {}
    env = {k: v for k, v in env.items() if k not in inline}
    secrets: set[str] = set()
    plain: list[dict] = []
    for key, value in sorted(env.items()):
        whole = vllm_args.SECRET_REF.fullmatch(value)
        if whole and whole.group(1) == key:
            secrets.add(key)
            continue
        expanded, used = expand(value)
        secrets.update(used)
        plain.append({"name": key, "value": expanded, "secret": None})
    new_argv = []
    for word in argv:
        expanded, used = expand(word)
        secrets.update(used)
        new_argv.append(expanded)
    defined = {e["name"] for e in plain}
    secret_entries = [{"name": var, "value": None, "secret": {"name": secret_name(spec), "key": var}}
                      for var in sorted(secrets) if var not in defined]
    # An env name set to `${OTHER}` reads key OTHER of the Secret.
    for entry in plain:
        match = vllm_args.SECRET_REF.fullmatch(env[entry["name"]])
        if match:
            entry.update(value=None, secret={"name": secret_name(spec), "key": match.group(1)})
    moved = [{"name": var, "value": None, "secret": {"name": inline_secret_name(spec), "key": key}}
             for var, key in sorted(inline.items())]
    return moved + secret_entries + plain, new_argv


def _probes(startup_seconds: int) -> list[dict]:
    return [
        {"kind": "startupProbe", "path": "/health", "port": "http", "period": PROBE_PERIOD, "timeout": 5,
         "failures": math.ceil(startup_seconds / PROBE_PERIOD)},
        {"kind": "readinessProbe", "path": "/health", "port": "http", "period": PROBE_PERIOD, "timeout": 5,
         "failures": 3},
        {"kind": "livenessProbe", "path": "/health", "port": "http", "period": 20, "timeout": 5, "failures": 3},
    ]


def _adapter_storage(spec: models.FleetSpec, roots: list[str]) -> tuple[list[dict], list[dict]]:
    settings = spec.runtime.kubernetes
    if not roots:
        return [], []
    if settings.adapter_volume == "host_path":
        volumes = [{"name": f"adapters-{i}", "source_kind": "hostPath", "source": {"path": root, "type": "Directory"}}
                   for i, root in enumerate(roots)]
        mounts = [{"name": f"adapters-{i}", "path": root, "read_only": True, "sub_path": None}
                  for i, root in enumerate(roots)]
        return volumes, mounts
    claim = settings.adapter_claim or name(spec.name, "adapters")
    volumes = [{"name": "adapters", "source_kind": "persistentVolumeClaim",
                "source": {"claimName": claim, "readOnly": True}}]
    mounts = [{"name": "adapters", "path": root, "read_only": True,
               "sub_path": root.lstrip("/") if len(roots) > 1 else None} for root in roots]
    return volumes, mounts


def _adapter_claim(spec: models.FleetSpec, base_dir: pathlib.Path | None) -> dict | None:
    """The adapters' PersistentVolumeClaim, when the fleet asks fleetspec to create it."""
    settings = spec.runtime.kubernetes
    hosts_adapters = any(deploy.adapter_roots(spec, s, base_dir) for s in spec.servers)
    if settings.adapter_volume != "pvc" or settings.adapter_claim_size is None or not hosts_adapters:
        return None
    claim = settings.adapter_claim or name(spec.name, "adapters")
    return {"name": claim, "labels": labels(spec, "adapters", claim, "fleetspec"),
            "size": settings.adapter_claim_size, "storage_class": settings.adapter_storage_class}


def _model_claim(spec: models.FleetSpec) -> dict | None:
    """The model cache's PersistentVolumeClaim, when the fleet asks fleetspec to create it (a download
    job fills it once; engine pods only read it)."""
    settings = spec.runtime.kubernetes
    if settings.model_volume != "pvc" or settings.model_claim_size is None:
        return None
    claim = model_claim_name(spec)
    return {"name": claim, "labels": labels(spec, "models", claim, "fleetspec"),
            "size": settings.model_claim_size, "storage_class": settings.model_storage_class}


def engine_deployment(spec: models.FleetSpec, server: models.Server, weights_gib: float | None,
                      base_dir: pathlib.Path | None, inline_secrets: k8s_secrets.InlineSecrets) -> dict:
    """`inline_secrets`: k8s_secrets.collect(spec), collected once per fleet (it walks every server)."""
    # A LoRA server starts without adapters: its agent loads the set from the ConfigMap, so an adapter
    # change never touches the pod template (no rollout, no restart).
    launch = vllm_args.replica_launch(spec, server, 0, host="0.0.0.0", port=vllm_args.CONTAINER_PORT,
                                      preload_adapters=server.lora is None, base_dir=base_dir)
    inline = inline_secrets.engine_env.get(server.name)
    settings = spec.runtime.kubernetes
    launch_env = dict(launch.env)
    if settings.model_volume != "none":
        # The volume is read-only: vLLM must find the model in it and never try the Hub.
        launch_env.setdefault("HF_HUB_OFFLINE", "1")
    env, argv = env_entries(spec, launch_env, launch.argv, inline)
    own = labels(spec, "engine", name(spec.name, server.name), "vllm")
    volumes, mounts = _adapter_storage(spec, deploy.adapter_roots(spec, server, base_dir))
    model_volume, model_mount = _model_storage(spec)
    volumes += [model_volume, {"name": "shm", "source_kind": "emptyDir", "source": {"medium": "Memory"}}]
    mounts += [model_mount, {"name": "shm", "path": "/dev/shm", "read_only": False, "sub_path": None}]
    requests, limits = _resources(spec, server, weights_gib)
    sidecars = []
    if server.lora is not None:
        sidecar, sidecar_volumes = agent_container(spec, server)
        sidecars.append(sidecar)
        volumes += sidecar_volumes
    return {
        "name": name("vllm", server.name), "labels": own, "selector": _selector(own),
        "replicas": server.replicas, "container": "vllm", "image": deploy.engine_image(spec, server),
        "command": argv, "args": [], "env": env, "port": vllm_args.CONTAINER_PORT, "port_name": "http",
        "requests": requests, "limits": limits,
        "probes": _probes(deploy.startup_seconds(server, weights_gib)),
        "mounts": mounts, "volumes": volumes, "sidecars": sidecars,
    }


AGENT_CONFIG_DIR = "/etc/fleetspec/adapter-set"
AGENT_STATE_DIR = "/var/lib/fleetspec-agent"


def adapter_set_name(server: models.Server) -> str:
    return name("vllm", server.name, "adapters")


def agent_container(spec: models.FleetSpec, server: models.Server) -> tuple[dict, list[dict]]:
    """The `fleetspec agent` sidecar: it serves the ConfigMap's adapter set on the pod's own engine.

    The ConfigMap is mounted as a directory, never with subPath: only a directory mount receives
    kubelet's updates. Its readiness is "the base model and the last good set serve", which a bad
    ConfigMap edit cannot take away; the last good set survives container restarts in an emptyDir."""
    port = spec.runtime.kubernetes.agent_port
    argv = ["python3", "-m", "fleetspec", "agent", "--config-dir", AGENT_CONFIG_DIR,
            "--engine", f"http://127.0.0.1:{vllm_args.CONTAINER_PORT}", "--host", "0.0.0.0", "--port", str(port),
            "--state-dir", AGENT_STATE_DIR]
    key = deploy.secret_names(spec.runtime.engine_api_key)
    env_in = {}
    if key:
        argv += ["--api-key-env", key[0]]
        env_in[key[0]] = f"${{{key[0]}}}"
    env, argv = env_entries(spec, env_in, argv)
    container = {
        "container": "agent", "image": deploy.router_image(spec), "command": argv, "args": [], "env": env,
        "port": port, "port_name": "agent",
        "requests": [("cpu", "50m"), ("memory", "96Mi")], "limits": [("memory", "256Mi")],
        "probes": [
            {"kind": "readinessProbe", "path": "/ready", "port": "agent", "period": 5, "timeout": 3, "failures": 2},
            {"kind": "livenessProbe", "path": "/healthz", "port": "agent", "period": 20, "timeout": 5, "failures": 3},
        ],
        "mounts": [{"name": "adapter-set", "path": AGENT_CONFIG_DIR, "read_only": True, "sub_path": None},
                   {"name": "agent-state", "path": AGENT_STATE_DIR, "read_only": False, "sub_path": None}],
    }
    volumes = [{"name": "adapter-set", "source_kind": "configMap", "source": {"name": adapter_set_name(server)}},
               {"name": "agent-state", "source_kind": "emptyDir", "source": {}}]
    return container, volumes


def _model_storage(spec: models.FleetSpec) -> tuple[dict, dict]:
    """The Hugging Face cache: one shared read-only copy of the base model, or a pod's own emptyDir."""
    settings = spec.runtime.kubernetes
    if settings.model_volume == "pvc":
        source = {"name": "model-cache", "source_kind": "persistentVolumeClaim",
                  "source": {"claimName": model_claim_name(spec), "readOnly": True}}
    elif settings.model_volume == "host_path":
        source = {"name": "model-cache", "source_kind": "hostPath",
                  "source": {"path": settings.model_host_path, "type": "Directory"}}
    else:
        return ({"name": "hf-cache", "source_kind": "emptyDir", "source": {}},
                {"name": "hf-cache", "path": deploy.HF_CACHE, "read_only": False, "sub_path": None})
    return source, {"name": "model-cache", "path": deploy.HF_CACHE, "read_only": True, "sub_path": None}


def model_claim_name(spec: models.FleetSpec) -> str:
    return spec.runtime.kubernetes.model_claim or name(spec.name, "models")


def _resources(spec: models.FleetSpec, server: models.Server, weights_gib: float | None,
               ) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """GPU servers request their GPUs (whole ones, or the shared resource the fleet declares); vLLM's
    CPU build requests the host RAM the plan gives it, as a limit too, so the scheduler never packs more
    engines on a node than its memory holds. `servers[].resources` overrides CPU and memory."""
    own = server.resources or models.PodResources()
    if deploy.on_host(spec, server):
        memory = f"{math.ceil(cpu_host.replica_host_bytes(spec, server) / (1 << 30))}Gi"
        requests = [("cpu", own.cpu or "2"), ("memory", own.memory or memory)]
        limits = [("cpu", own.cpu_limit)] if own.cpu_limit else []
        return requests, limits + [("memory", own.memory_limit or own.memory or memory)]
    resource = scheduling.gpu_resource(spec)
    gpus = str(server.gpus_per_replica)
    # Host RAM: weights pass through it while loading, plus the CPU adapter cache; an estimate.
    memory_gib = math.ceil((weights_gib or vllm_flags.STARTUP_DEFAULT_WEIGHTS_GIB) + 8)
    requests = [("cpu", own.cpu or str(2 * server.gpus_per_replica)), ("memory", own.memory or f"{memory_gib}Gi"),
                (resource, gpus)]
    limits = [(k, v) for k, v in (("cpu", own.cpu_limit), ("memory", own.memory_limit)) if v]
    return requests, limits + ([(resource, gpus)] if spec.runtime.engine == "vllm" else [])


def router_deployment(spec: models.FleetSpec) -> dict:
    inline = k8s_secrets.collect(spec)
    env, argv = env_entries(inline.spec, deploy.router_env(inline.spec), deploy.router_argv(), inline.router_env)
    own = labels(spec, "router", name(spec.name, "router"), "fleetspec-router")
    return {
        "name": "router", "labels": own, "selector": _selector(own), "replicas": 1, "container": "router",
        "image": deploy.router_image(spec), "command": argv, "args": [], "env": env,
        "port": deploy.ROUTER_CONTAINER_PORT, "port_name": "http", "sidecars": [],
        "requests": [("cpu", "500m"), ("memory", "512Mi")], "limits": [],
        "probes": _probes(30),
        "mounts": [{"name": "config", "path": deploy.ROUTER_CONFIG_DIR, "read_only": True, "sub_path": None}],
        "volumes": [{"name": "config", "source_kind": "configMap", "source": {"name": name(spec.name, "router")}}],
    }


def _service(deployment: dict, port: int, affinity: str = "None", headless: bool = False) -> dict:
    return {"name": deployment["name"] + ("-pods" if headless else ""), "labels": deployment["labels"],
            "selector": deployment["selector"], "port": port, "affinity": affinity, "headless": headless}


def pods_service_name(server: models.Server) -> str:
    """The headless Service whose DNS name has one A record per ready pod of the server (router discovery)."""
    return name("vllm", server.name) + "-pods"


def server_file(server: models.Server) -> str:
    """The file of a server's objects: its Deployment's name (a DNS label, unique per server) + .yaml."""
    return name("vllm", server.name) + ".yaml"


def namespace_of(spec: models.FleetSpec) -> str:
    return spec.runtime.namespace or spec.name


def routing_table(spec: models.FleetSpec, base_dir: pathlib.Path | None, cluster_maps: dict | None = None) -> dict:
    """One upstream per server: its headless pods Service, which the router resolves to every ready
    pod, so that it routes by what each pod holds (LoRA affinity across pods). A LoRA server's pods run
    the agent sidecar: its port lets the router read each pod's /status (the ConfigMap's standing)."""
    ns = namespace_of(spec)
    upstreams = [router.upstream(s.name, 0, f"http://{pods_service_name(s)}.{ns}.svc.cluster.local:"
                                            f"{vllm_args.CONTAINER_PORT}", discover=True,
                                 agent_port=spec.runtime.kubernetes.agent_port if s.lora is not None else None)
                 for s in spec.servers if s.replicas > 0]
    return router.routing_table(spec, upstreams, base_dir, cluster_maps)


def objects(spec: models.FleetSpec, placed: list[slots.Slot], base_dir: pathlib.Path | None,
            cluster_maps: dict | None = None) -> list[tuple[str, str, dict, str, str]]:
    """(file, template, context key → view, kind, object name) for every object, in apply order; the
    objects of one file are consecutive."""
    weights = {s.server: s.weights_gib for s in placed}
    out = [(SHARED_FILE, "k8s/namespace.yaml.j2", {"labels": labels(spec, "namespace", spec.name, "fleetspec")},
            "Namespace", namespace_of(spec))]
    for claim in (_adapter_claim(spec, base_dir), _model_claim(spec)):
        if claim is not None:
            out.append((SHARED_FILE, "k8s/pvc.yaml.j2", {"c": claim}, "PersistentVolumeClaim", claim["name"]))
    inline = k8s_secrets.collect(spec)
    if inline:
        secret = {"name": inline_secret_name(spec), "labels": labels(spec, "secrets", inline_secret_name(spec),
                                                                      "fleetspec"),
                  "data": sorted(inline.data.items())}
        # A file of its own: the one file that holds credentials (to encrypt, or to keep out of git).
        out.append((SECRET_FILE, "k8s/secret.yaml.j2", {"s": secret}, "Secret", secret["name"]))
    affinity = spec.runtime.kubernetes.session_affinity
    for server in spec.servers:
        if server.replicas == 0:
            continue
        d = engine_deployment(spec, server, weights.get(server.name), base_dir, inline)
        file = server_file(server)
        if server.lora is not None:
            # The desired adapter set: editing it is a hot change (the agent applies it), not a rollout.
            config = {"name": adapter_set_name(server), "labels": d["labels"],
                      "data": [(adapter_set.FILE, adapter_set.to_text(adapter_set.document(spec, server, base_dir)))]}
            out.append((file, "k8s/configmap.yaml.j2", {"c": config}, "ConfigMap", config["name"]))
        out.append((file, "k8s/deployment.yaml.j2", {"d": d}, "Deployment", d["name"]))
        out.append((file, "k8s/service.yaml.j2", {"s": _service(d, vllm_args.CONTAINER_PORT, affinity)}, "Service",
                    d["name"]))
        pods = _service(d, vllm_args.CONTAINER_PORT, headless=True)
        out.append((file, "k8s/service.yaml.j2", {"s": pods}, "Service", pods["name"]))
    if spec.runtime.router.enabled:
        out += _router_objects(spec, base_dir, cluster_maps)
    return out


def _router_objects(spec: models.FleetSpec, base_dir: pathlib.Path | None,
                    cluster_maps: dict | None) -> list[tuple[str, str, dict, str, str]]:
    d = router_deployment(spec)
    # The config is a ConfigMap: it embeds the fleet with literal credentials replaced by ${VAR}.
    stripped = k8s_secrets.collect(spec).spec
    config = {"name": name(spec.name, "router"), "labels": d["labels"],
              "data": [(deploy.ROUTER_CONFIG_FILE, router.to_json(routing_table(stripped, base_dir, cluster_maps)))]}
    out = [(ROUTER_FILE, "k8s/configmap.yaml.j2", {"c": config}, "ConfigMap", config["name"]),
           (ROUTER_FILE, "k8s/deployment.yaml.j2", {"d": d}, "Deployment", d["name"]),
           (ROUTER_FILE, "k8s/service.yaml.j2",
            {"s": _service(d, deploy.ROUTER_CONTAINER_PORT, spec.runtime.kubernetes.session_affinity)},
            "Service", d["name"])]
    settings = spec.runtime.kubernetes
    if settings.ingress_host:
        ingress = {"name": "router", "labels": d["labels"], "host": settings.ingress_host,
                   "class_name": settings.ingress_class, "service": d["name"], "paths": ingress_paths(spec)}
        out.append((ROUTER_FILE, "k8s/ingress.yaml.j2", {"i": ingress}, "Ingress", "router"))
    return out


def ingress_paths(spec: models.FleetSpec) -> list[str]:
    """`/`, then with `ingress_paths` `/base` and one Prefix path per specialist and per server
    (seed 003's /base, /chatbot, /code): all go to the router, which reads the first path segment
    (a specialist pins that specialist, `base` the base model, a server scopes routing to it) and
    strips it before routing."""
    paths = ["/"]
    if spec.runtime.kubernetes.ingress_paths:
        named = [f"/{s.name}" for s in spec.specialists] + [f"/{s.name}" for s in spec.servers if s.replicas]
        for path in ["/base", *named]:
            if path not in paths:
                paths.append(path)
    return paths


def compile_manifests(spec: models.FleetSpec, placed: list[slots.Slot], base_dir: pathlib.Path | None = None,
                      templates: str | pathlib.Path | None = None, cluster_maps: dict | None = None) -> dict[str, str]:
    """File name → text, the file's objects joined by `---`; each object from an override template is
    parsed back and checked on its own before return (templating's docstring says why the shipped
    ones are not)."""
    ns = namespace_of(spec)
    documents: dict[str, list[str]] = {}
    for file, template, view, kind, object_name in objects(spec, placed, base_dir, cluster_maps):
        text = templating.render_checked(template, {"namespace": ns, **view}, templates, functools.partial(
            check, template=template, kind=kind, object_name=object_name, view=view))
        documents.setdefault(file, []).append(text if text.endswith("\n") else text + "\n")
    files = {file: DOCUMENT_SEPARATOR.join(texts) for file, texts in documents.items()}
    resources = list(files)
    files[KUSTOMIZATION] = templating.render_checked(
        KUSTOMIZATION_TEMPLATE, {"fleet": spec.name, "namespace": ns, "resources": resources}, templates,
        functools.partial(check_kustomization, resources=resources))
    return files


def check_kustomization(document: object, resources: list[str]) -> None:
    if not isinstance(document, dict) or document.get("resources") != resources:
        raise templating.TemplateError("the kustomization template does not list every manifest")


def check(document: object, template: str, kind: str, object_name: str, view: dict) -> None:
    if not isinstance(document, dict) or document.get("kind") != kind:
        raise templating.TemplateError(f"the template {template} did not produce a {kind}")
    if (document.get("metadata") or {}).get("name") != object_name:
        raise templating.TemplateError(f"the template {template} changed the name of {kind} {object_name}")
    if kind == "Deployment":
        d = view["d"]
        containers = document["spec"]["template"]["spec"]["containers"]
        compiled = [d, *d.get("sidecars", [])]
        if [c.get("name") for c in containers] != [c["container"] for c in compiled]:
            raise templating.TemplateError(f"the template {template} did not render every container of {object_name}")
        for container, want in zip(containers, compiled, strict=True):
            env = [{"name": e["name"], "value": e["value"]} if e["secret"] is None else
                   {"name": e["name"], "valueFrom": {"secretKeyRef": e["secret"]}} for e in want["env"]]
            for field, value in (("command", want["command"]), ("image", want["image"]), ("env", env or None)):
                if container.get(field) != value:
                    raise templating.TemplateError(
                        f"the template {template} rendered the Deployment {object_name} with a different {field} "
                        "than compiled; every value in a template must pass through the `q` filter")


def unexpand(text: str) -> str:
    """Inverse of `expand` for checking: `$$` → `$`, `$(VAR)` → `${VAR}`."""
    return re.sub(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_]*)\)",
                  lambda m: "$" if m.group(1) is None else "${" + m.group(1) + "}", text)

