"""Desired state: what should run. For now only the container description every driver consumes.

It lives in compile because compose stamps the same spec hash as a label that the reconciler
later compares (`compile.compose`, `reconcile.diff`), and every driver consumes it.

`ContainerSpec` is frozen and made of plain values so that its canonical JSON, and therefore its
spec hash, is the same on every machine and every run: a changed hash is the one reason to replace
a container. Adapters are deliberately not part of it; they change on a live server.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Iterable, Mapping

from fleetspec.compile import deploy, labels, vllm_args
from fleetspec.spec import derived


@dataclasses.dataclass(frozen=True)
class PortBinding:
    container_port: int
    host_port: int | None = None  # None: the engine picks a free port (tests, routers behind a proxy)
    host_ip: str = "127.0.0.1"


@dataclasses.dataclass(frozen=True)
class Mount:
    source: str  # host path; must exist (a bind mount never creates it)
    target: str  # path inside the container
    read_only: bool = True


@dataclasses.dataclass(frozen=True)
class ContainerSpec:
    """One container as fleetspec wants it. Mappings are stored as sorted tuples of pairs."""

    name: str
    image: str
    argv: tuple[str, ...]
    env: tuple[tuple[str, str], ...] = ()
    gpu_ids: tuple[str, ...] = ()
    ports: tuple[PortBinding, ...] = ()
    volumes: tuple[Mount, ...] = ()
    labels: tuple[tuple[str, str], ...] = ()
    network_mode: str | None = None  # "host": share the host's network (the router reaching engines)

    def __post_init__(self) -> None:
        # Accept dicts and lists at the call site; store one canonical, hashable form.
        set_ = object.__setattr__
        set_(self, "argv", tuple(str(a) for a in self.argv))
        set_(self, "env", _pairs(self.env))
        set_(self, "gpu_ids", tuple(str(g) for g in self.gpu_ids))
        set_(self, "ports", tuple(_coerce(PortBinding, p) for p in self.ports))
        set_(self, "volumes", tuple(_coerce(Mount, m) for m in self.volumes))
        set_(self, "labels", _pairs(self.labels))

    @property
    def env_dict(self) -> dict[str, str]:
        return dict(self.env)

    @property
    def label_dict(self) -> dict[str, str]:
        return dict(self.labels)

    def to_json(self) -> dict:
        return {
            "name": self.name,
            "image": self.image,
            "argv": list(self.argv),
            "env": dict(self.env),
            "gpu_ids": list(self.gpu_ids),
            "ports": [dataclasses.asdict(p) for p in self.ports],
            "volumes": [dataclasses.asdict(m) for m in self.volumes],
            "labels": dict(self.labels),
            # only when set, so every hash from before the field existed stays the same
            **({"network_mode": self.network_mode} if self.network_mode else {}),
        }

    @classmethod
    def from_json(cls, data: Mapping) -> ContainerSpec:
        return cls(**{f.name: data[f.name] for f in dataclasses.fields(cls) if f.name in data})

    def canonical_json(self) -> str:
        return json.dumps(self.to_json(), sort_keys=True, separators=(",", ":"), ensure_ascii=True)

    def spec_hash(self) -> str:
        return hashlib.sha256(self.canonical_json().encode("ascii")).hexdigest()


def _pairs(value: Mapping[str, str] | Iterable[tuple[str, str]]) -> tuple[tuple[str, str], ...]:
    items = value.items() if isinstance(value, Mapping) else value
    return tuple(sorted((str(k), str(v)) for k, v in items))


def _coerce(kind: type, value):
    return value if isinstance(value, kind) else kind(**value)


@dataclasses.dataclass(frozen=True)
class DesiredReplica:
    server: str
    replica: int
    container: ContainerSpec
    adapters: Mapping[str, str]  # served adapter name → path as the engine sees it
    port: int  # host port of the engine's HTTP API
    startup_budget_s: int = 600  # start → healthy; longer silence means the engine is dead or hung
    # Allowed, not required (`preload: false`): the router loads these on demand and vLLM's LRU
    # evicts them; the reconciler neither loads nor unloads them while the file declares them.
    on_demand: Mapping[str, str] = dataclasses.field(default_factory=dict)

    def to_json(self) -> dict:
        return {"server": self.server, "replica": self.replica, "port": self.port,
                "spec_hash": self.container.spec_hash(), "container": self.container.to_json(),
                "adapters": dict(sorted(self.adapters.items())), "on_demand": dict(sorted(self.on_demand.items()))}


@dataclasses.dataclass(frozen=True)
class DesiredState:
    fleet: str
    replicas: Mapping[tuple[str, int], DesiredReplica]
    router: ContainerSpec | None = None
    router_config: Mapping | None = None  # the compiled routing table the router should serve

    def router_config_hash(self) -> str | None:
        if self.router_config is None:
            return None
        text = json.dumps(self.router_config, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()

    def to_json(self) -> dict:
        return {"fleet": self.fleet, "replicas": [r.to_json() for _, r in sorted(self.replicas.items())],
                "router": self.router.to_json() if self.router else None,
                "router_config_hash": self.router_config_hash()}


# ---------------------------------------------------------------------------------------------
# Building the desired state from a planned fleet (pure: every environment fact is a parameter).


@dataclasses.dataclass(frozen=True)
class Environment:
    """Where the fleet runs: the facts desired state depends on that the spec does not hold."""

    target: str  # "docker" or "local"
    sim_image: str = "fleetspec/sim:latest"  # docker: the offline-built image with fleetspec (sim engine, router)
    router_config_path: str | None = None  # where apply writes the router's config; None: no router
    cluster_maps: Mapping | None = None  # hash-cluster map_file entries by rule index, read at the edge


def container_name(fleet: str, server: str, replica: int) -> str:
    return f"{fleet}-{server}-{replica}"


def build(spec, slots, env: Environment, base_dir=None) -> DesiredState:
    """Desired state of every replica placed by the planner (`slots`: compile.slots.Slot list)."""
    ports = derived.replica_ports(spec)
    replicas: dict[tuple[str, int], DesiredReplica] = {}
    served: dict[str, dict[str, str]] = {}  # per server: its replicas all serve the same adapters
    on_demand: dict[str, dict[str, str]] = {}
    for slot in slots:
        server = spec.server(slot.server)
        port = ports[(slot.server, slot.replica)]
        container = _engine_container(spec, server, slot, port, env, base_dir)
        container = dataclasses.replace(container, labels={
            labels.FLEET: spec.name, labels.SERVER: server.name, labels.REPLICA: str(slot.replica),
            labels.ROLE: labels.ROLE_ENGINE,
        })
        if server.name not in served:
            served[server.name] = {a.served_name: a.path for a in vllm_args.served_adapters(spec, server, base_dir)}
            on_demand[server.name] = {a.served_name: a.path
                                      for a in vllm_args.on_demand_adapters(spec, server, base_dir)}
        budget = deploy.startup_seconds(server, slot.weights_gib)
        replicas[(slot.server, slot.replica)] = DesiredReplica(server.name, slot.replica, container,
                                                               dict(served[server.name]), port, budget,
                                                               dict(on_demand[server.name]))
    router, router_config = _router(spec, replicas, env, base_dir)
    return DesiredState(spec.name, replicas, router, router_config)


def reachable_host(spec) -> str:
    """Where fleetspec and the router reach published engine ports on this host."""
    bind = spec.runtime.bind_address
    return "127.0.0.1" if bind in ("0.0.0.0", "::", "") else bind


def _router(spec, replicas: Mapping, env: Environment, base_dir) -> tuple[ContainerSpec | None, dict | None]:
    """The router process or container, and the config document it should serve.

    The config lives in a file the apply writes (`env.router_config_path`); the router re-reads it
    when it changes, so a routing or version change never restarts the router. On Docker the router
    shares the host's network: it reaches engines on the same published ports fleetspec uses.
    """
    if not spec.runtime.router.enabled or env.router_config_path is None:
        return None, None
    from fleetspec.routing import config as router_config

    host = reachable_host(spec)
    upstreams = [router_config.Upstream(r.server, r.replica, f"http://{host}:{r.port}")
                 for _, r in sorted(replicas.items())]
    # Every version the router may load itself: on demand, or a previous version to fall back to.
    adapter_paths = {name: path for r in replicas.values() for name, path in (*r.adapters.items(), *r.on_demand.items())}
    adapter_paths.update(_previous_versions(spec, base_dir))
    document = router_config.document(spec, upstreams, cluster_maps=env.cluster_maps, adapter_paths=adapter_paths)
    path = env.router_config_path
    serve = ["-m", "fleetspec.router", "serve", "--config", path, "--host", spec.runtime.bind_address,
             "--port", str(spec.runtime.router.port)]
    secrets = deploy.router_env(spec)
    labels_ = {labels.FLEET: spec.name, labels.ROLE: labels.ROLE_ROUTER}
    name = f"{spec.name}-router"
    if env.target == "docker":
        directory = path.rsplit("/", 1)[0]
        container = ContainerSpec(name=name, image=spec.runtime.router.image or env.sim_image,
                                  argv=["python3", *serve], env=secrets, labels=labels_, network_mode="host",
                                  volumes=[Mount(directory, directory, True)])
    else:
        container = ContainerSpec(name=name, image="local", argv=["python3", *serve], env=secrets, labels=labels_,
                                  ports=[PortBinding(spec.runtime.router.port, spec.runtime.router.port,
                                                     spec.runtime.bind_address)])
    return container, document



def _previous_versions(spec, base_dir) -> dict[str, str]:
    """Served name → path of each hosted specialist's previous_version (`routing.fallback: previous`)."""
    found = {}
    for specialist in spec.specialists:
        entry = specialist.version_entry(specialist.previous_version) if specialist.previous_version else None
        if entry is not None and spec.hosts_of(specialist):
            found[derived.served_adapter_name(specialist.name, entry.version)] = vllm_args.resolve_path(entry.path, base_dir)
    return found


def _engine_container(spec, server, slot, port: int, env: Environment, base_dir) -> ContainerSpec:
    sim = spec.runtime.engine == "sim"
    name = container_name(spec.name, server.name, slot.replica)
    bind = spec.runtime.bind_address
    if env.target == "docker":
        launch = vllm_args.replica_launch(spec, server, slot.replica, host="0.0.0.0", port=vllm_args.CONTAINER_PORT,
                                          preload_adapters=False, base_dir=base_dir)
        image = env.sim_image if sim else deploy.engine_image(spec, server)
        mounts = [Mount(root, root, True) for root in deploy.adapter_roots(spec, server, base_dir)]
        return ContainerSpec(name=name, image=image, argv=launch.argv, env=launch.env,
                             gpu_ids=() if sim else slot.gpus,
                             ports=[PortBinding(vllm_args.CONTAINER_PORT, port, bind)], volumes=mounts)
    launch = vllm_args.replica_launch(spec, server, slot.replica, host=bind, port=port, preload_adapters=False,
                                      gpus=None if sim else slot.gpus, base_dir=base_dir)
    argv = launch.argv
    if sim:  # same flags, run by the stand-in engine instead of the `vllm` executable
        argv = ["python3", "-m", "fleetspec.sim.vllm_shim", *argv[1:]]
    return ContainerSpec(name=name, image="local", argv=argv, env=launch.env, ports=[PortBinding(port, port, bind)])
