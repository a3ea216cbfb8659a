"""One server replica of a fleet → the exact `vllm serve` argv and environment (pure).

Every target (shell line, JSON, `--config` YAML, docker-compose, Kubernetes, the sim, the reconciler)
starts from `replica_launch`, and flags come only from `catalog.vllm_flags.FLAGS`.

Names clients and the reconciler rely on:
  * Base model: served as `derived.served_base_name(spec)`: the base model id when it is a Hugging Face id
    (`Qwen/QwQ-32B-Preview-AWQ`, what OpenAI clients already send), the fleet name when the model is
    a local directory (a host path is no name). Stable across revisions and quantization changes.
  * Adapters: every adapter *version* is served under `derived.served_adapter_name(name, version)` =
    `<name>--<version>`, e.g. `python-lora--1.2.0`. The name is immutable per version: vLLM keys its
    prefix cache on (name, path), so new weights always arrive under a new name and the router moves
    the plain specialist alias (`python-lora`) to it. `+` (semver build metadata) becomes `_` so the
    name is safe in URLs, query strings and metric labels; two versions that collide after that are
    refused (`check_fleet`).
  * `--lora-modules` items are `name=path`; a path with a comma uses vLLM's single-object JSON form,
    because a comma sends vLLM's parser down the JSON branch (vllm/entrypoints/common/cli_args.py).

Runtime adapter management: fleetspec hot-loads adapters, so every LoRA server gets
`VLLM_ALLOW_RUNTIME_LORA_UPDATING=true` and `--api-server-count 1` (vLLM refuses runtime updates with
more than one API server). `preload_adapters=True` (compile targets people deploy by hand) adds the
active and split versions as `--lora-modules`; the reconciler passes False and loads them over HTTP,
so an adapter change never changes the argv, and one bad adapter cannot stop a server from starting.

Secrets: `${VAR}` in env values and argv stays literal here; each target renders it as its own
reference syntax (shell, compose interpolation, Kubernetes secretKeyRef) and never inlines a value.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import re
import shlex
from collections.abc import Callable, Mapping, Sequence

import yaml

from fleetspec import errors
from fleetspec.catalog import vllm_flags
from fleetspec.planner import host as cpu_host
from fleetspec.spec import derived, hosting, models, paths

Locate = Callable[[tuple], errors.Location | None]
SECRET_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
CONTAINER_PORT = 8000  # what engines listen on inside a container or pod


@dataclasses.dataclass(frozen=True)
class ReplicaLaunch:
    server: str
    replica: int
    argv: list[str]  # starts with "vllm", "serve"
    env: dict[str, str]  # sorted by key
    settings: dict  # resolved table settings (plus "model"), for the --config form
    extra_args: list[str]  # the server's passthrough flags, already last in argv

    def to_json(self) -> dict:
        return {"server": self.server, "replica": self.replica, "argv": list(self.argv), "env": dict(self.env)}


def resolve_path(path: str, base_dir: pathlib.Path | None) -> str:
    """Relative paths (`./x`, `../x`) are relative to fleet.yaml; absolute ones and Hugging Face ids
    pass unchanged. Lexical only: compiling never touches the filesystem."""
    if base_dir is not None and (path.startswith(("./", "../")) or path in (".", "..")):
        return os.path.normpath(os.path.join(str(base_dir), path))
    return path


def lora_module_arg(name: str, path: str) -> str:
    if "," in path:
        return json.dumps({"name": name, "path": path}, ensure_ascii=False, separators=(",", ":"))
    return f"{name}={path}"


@dataclasses.dataclass(frozen=True)
class ServedAdapter:
    specialist: str
    version: str
    served_name: str
    path: str  # resolved


def served_adapters(spec: models.FleetSpec, server: models.Server, base_dir: pathlib.Path | None = None,
                    ) -> list[ServedAdapter]:
    """Adapter versions a server should hold from the start: each hosted, preloaded specialist's
    active version, then the other versions a split sends traffic to. Declaration order."""
    return _adapters(spec, server, base_dir, preloaded=True)


def on_demand_adapters(spec: models.FleetSpec, server: models.Server, base_dir: pathlib.Path | None = None,
                       ) -> list[ServedAdapter]:
    """Adapter versions a server may hold but need not (`preload: false`): the router loads them on
    the first request, vLLM's LRU evicts them, and the reconciler neither loads nor unloads them
    while they stay in the file."""
    return _adapters(spec, server, base_dir, preloaded=False)


def _adapters(spec: models.FleetSpec, server: models.Server, base_dir: pathlib.Path | None, *, preloaded: bool,
              ) -> list[ServedAdapter]:
    if server.lora is None:
        return []
    out: list[ServedAdapter] = []
    for specialist in spec.hosted_by(server):
        if specialist.preload is not preloaded:
            continue
        for version in _live_versions(spec, specialist):
            entry = specialist.version_entry(version)
            if entry is not None:  # an unknown split version is reported by spec.checks
                out.append(ServedAdapter(specialist.name, version, derived.served_adapter_name(specialist.name, version),
                                         resolve_path(entry.path, base_dir)))
    return out


def _live_versions(spec: models.FleetSpec, specialist: models.Specialist) -> list[str]:
    versions = [specialist.version]
    for split in spec.routing.splits:
        if split.specialist == specialist.name:
            versions += [v for v, weight in split.weights.items() if weight > 0 and v not in versions]
    return versions


def engine_settings(spec: models.FleetSpec, server: models.Server, *, host: str, port: int,
                    adapters: Sequence[ServedAdapter], base_dir: pathlib.Path | None = None) -> dict:
    """Spec → table settings; None, False and [] mean "leave the flag out"."""
    base = spec.base_model
    settings: dict = {
        "model": resolve_path(base.id, base_dir),
        "revision": base.revision,
        "served_model_name": [derived.served_base_name(spec)],
        "host": host,
        "port": port,
        "tensor_parallel_size": server.tensor_parallel_size,
        "pipeline_parallel_size": server.pipeline_parallel_size if server.pipeline_parallel_size > 1 else None,
        "data_parallel_size": server.data_parallel_size if server.data_parallel_size > 1 else None,
        "enable_expert_parallel": server.expert_parallel,
        "dtype": None if base.dtype == "auto" else base.dtype,
        "quantization": None if base.quantization == "none" else base.quantization,
        "kv_cache_dtype": None if base.kv_cache_dtype == "auto" else base.kv_cache_dtype,
        # Always explicit: the planner's budget must not depend on a release's default.
        "gpu_memory_utilization": derived.utilization(spec, server),
        "kv_cache_memory_bytes": cpu_host.kv_cache_bytes(spec, server),
        "max_model_len": spec.max_model_len_of(server),
        "max_num_seqs": server.max_num_seqs,
        "max_num_batched_tokens": server.max_num_batched_tokens,
        "enforce_eager": server.enforce_eager,
    }
    lora = server.lora
    if lora is not None:
        settings.update({
            "api_server_count": 1,
            "enable_lora": True,
            "max_loras": lora.max_loras,
            "max_cpu_loras": lora.max_cpu_loras,
            "max_lora_rank": lora.max_lora_rank,
            "lora_dtype": None if lora.lora_dtype == "auto" else lora.lora_dtype,
            "lora_target_modules": list(lora.target_modules or []),
            "fully_sharded_loras": lora.fully_sharded,
            "lora_modules": [lora_module_arg(a.served_name, a.path) for a in adapters],
        })
    return settings


def render_flags(settings: Mapping) -> list[str]:
    argv: list[str] = []
    for row in vllm_flags.FLAGS:
        value = settings.get(row.setting)
        if value is None or value is False or value == []:
            continue
        if row.kind is vllm_flags.Kind.SWITCH:
            argv.append(row.flag)
        elif row.kind is vllm_flags.Kind.LIST:
            argv += [row.flag, *(str(v) for v in value)]
        else:
            argv += [row.flag, _scalar(value)]
    return argv


def _scalar(value) -> str:
    return repr(value) if isinstance(value, float) else str(value)


API_KEY_ENV = "VLLM_API_KEY"  # vLLM reads its key from here when --api-key is absent: argv is world-readable


def launch_env(spec: models.FleetSpec, server: models.Server, gpus: Sequence[int] | None) -> dict[str, str]:
    """fleetspec's variables, then the server's own (they win), then the placed GPUs (placement is
    authoritative: a hand-set CUDA_VISIBLE_DEVICES would put two replicas on one card). The engine
    key stays a `${VAR}` reference: whatever starts the engine resolves it, nothing compiled holds it."""
    env: dict[str, str] = {}
    if server.lora is not None:
        env["VLLM_ALLOW_RUNTIME_LORA_UPDATING"] = "true"
    if spec.runtime.engine_api_key:
        env[API_KEY_ENV] = spec.runtime.engine_api_key
    if server.layer_partition is not None:
        # vLLM reads an uneven pipeline split only from here (get_pp_indices, distributed/utils.py).
        env["VLLM_PP_LAYER_PARTITION"] = ",".join(str(n) for n in server.layer_partition)
    env.update(server.env)
    if gpus is not None and cpu_host.host_facts(spec, server) is None:
        env["CUDA_VISIBLE_DEVICES"] = ",".join(str(g) for g in gpus)
    return dict(sorted(env.items()))


def replica_launch(spec: models.FleetSpec, server: models.Server, replica: int, *, host: str, port: int,
                   gpus: Sequence[int] | None = None, preload_adapters: bool = True,
                   base_dir: pathlib.Path | None = None, locate: Locate | None = None) -> ReplicaLaunch:
    """The launch of one replica. `gpus` sets CUDA_VISIBLE_DEVICES (local runtime and bare hosts);
    containers get their devices from the runtime instead and pass None."""
    problems = check_server(spec, server, locate)
    if problems:
        raise errors.SpecError(problems)
    adapters = served_adapters(spec, server, base_dir) if preload_adapters else []
    settings = engine_settings(spec, server, host=host, port=port, adapters=adapters, base_dir=base_dir)
    argv = ["vllm", "serve", settings["model"], *render_flags(settings), *server.extra_args]
    return ReplicaLaunch(server.name, replica, argv, launch_env(spec, server, gpus), settings, list(server.extra_args))


# ---------------------------------------------------------------------------------------------
# What the flag table knows that the spec models cannot: per-release flags and values.


def check_fleet(spec: models.FleetSpec, locate: Locate | None = None) -> list[errors.Diagnostic]:
    """Every flag-table problem of the fleet, plus served adapter names that two versions share."""
    found = [p for server in spec.servers for p in check_server(spec, server, locate)]
    for index, specialist in enumerate(spec.specialists):
        seen: dict[str, str] = {}
        for version in specialist.all_versions:
            served = derived.served_adapter_name(specialist.name, version)
            if served in seen and seen[served] != version:
                path = ("specialists", index, "version")
                found.append(errors.Diagnostic(
                    errors.Severity.ERROR, "served-name-collision", paths.format_path(path),
                    f"versions {seen[served]} and {version} of {specialist.name} would both be served as {served} "
                    "(`+` becomes `_` in served names).",
                    "Rename one of the two versions.", locate(path) if locate else None))
            seen.setdefault(served, version)
    return found


def check_server(spec: models.FleetSpec, server: models.Server, locate: Locate | None = None,
                 ) -> list[errors.Diagnostic]:
    index = hosting.index(spec).position_of(server)
    release = vllm_flags.facts(spec.runtime.vllm_version)
    version = spec.runtime.vllm_version
    found: list[errors.Diagnostic] = []

    def add(path: tuple, code: str, message: str, hint: str) -> None:
        location = locate(path) if locate else None
        found.append(errors.Diagnostic(errors.Severity.ERROR, code, paths.format_path(path), message, hint, location))

    lora = server.lora
    if lora is not None and lora.max_lora_rank not in release.allowed_max_lora_ranks:
        allowed = ", ".join(map(str, release.allowed_max_lora_ranks))
        add(("servers", index, "lora", "max_lora_rank"), "max-lora-rank-not-in-release",
            f"vLLM {version} does not accept max_lora_rank {lora.max_lora_rank}; it takes {allowed}.",
            "Use 8, or set runtime.vllm_version to 0.12 or newer.")
    if lora is not None and lora.target_modules:
        row = vllm_flags.FLAGS_BY_SETTING["lora_target_modules"]
        if not row.exists_in(release.version):
            add(("servers", index, "lora", "target_modules"), "flag-not-in-release",
                f"vLLM {version} has no {row.flag}; it arrived in {row.since[0]}.{row.since[1]}.",
                f"Remove lora.target_modules, or set runtime.vllm_version to {row.since[0]}.{row.since[1]} or newer.")
    for field, setting, used in (("data_parallel_size", "data_parallel_size", server.data_parallel_size > 1),
                                 ("expert_parallel", "enable_expert_parallel", server.expert_parallel)):
        row = vllm_flags.FLAGS_BY_SETTING[setting]
        if used and not row.exists_in(release.version):
            add(("servers", index, field), "flag-not-in-release",
                f"vLLM {version} has no {row.flag}; it arrived in {row.since[0]}.{row.since[1]}.",
                f"Remove {field}, or set runtime.vllm_version to {row.since[0]}.{row.since[1]} or newer.")
    if "VLLM_CPU_KVCACHE_SPACE" in server.env and cpu_host.host_facts(spec, server) is not None:
        add(("servers", index, "env", "VLLM_CPU_KVCACHE_SPACE"), "kv-cache-set-by-fleetspec",
            "VLLM_CPU_KVCACHE_SPACE overrides the KV cache fleetspec sizes for this CPU host, so the plan would "
            "no longer say what the engine holds.",
            "Remove it; give the server more or less of the host with gpu_memory_utilization instead.")
    for position, word in enumerate(server.extra_args):
        for code, message, hint in vllm_flags.extra_arg_problems(word, version):
            add(("servers", index, "extra_args", position), code, message, hint)
    backend = vllm_flags.moe_backend(server.extra_args)
    if lora is not None and backend is not None and backend[1] in release.lora_refused_moe_backends:
        add(("servers", index, "extra_args", backend[0]), "lora-refused-by-moe-backend",
            f"vLLM {version} refuses to start with LoRA and --moe-backend {backend[1]}: the MegaMoE kernels "
            "do not run adapters.",
            "Drop --moe-backend (vLLM picks one that supports LoRA), or serve this server without adapters.")
    return found


# ---------------------------------------------------------------------------------------------
# Output forms


def to_shell(argv: Sequence[str], env: Mapping[str, str]) -> str:
    """A copy-pasteable POSIX shell line. `${VAR}` references stay references: the shell expands
    them when the line runs; every other character is quoted literally."""
    words = [f"{key}={shell_word(value)}" for key, value in env.items()]
    words += [shell_word(arg) for arg in argv]
    return " ".join(words)


def shell_word(text: str) -> str:
    if not SECRET_REF.search(text):
        return shlex.quote(text)
    out, last = [], 0
    for match in SECRET_REF.finditer(text):
        out.append(_double_quoted(text[last:match.start()]))
        out.append(match.group(0))
        last = match.end()
    out.append(_double_quoted(text[last:]))
    return '"' + "".join(out) + '"'


def _double_quoted(text: str) -> str:
    return re.sub(r'([\\"$`])', r"\\\1", text)


def to_config_yaml(launch: ReplicaLaunch) -> str:
    """The `vllm serve --config FILE` form: table flags as YAML keys (lora-modules a list of strings,
    vLLM str()s each item). extra_args stay on the command line: see `config_argv`."""
    settings = launch.settings
    document: dict = {"model": settings["model"]}
    for row in vllm_flags.FLAGS:
        value = settings.get(row.setting)
        if value is None or value is False or value == []:
            continue
        key = row.flag[2:]
        if row.kind is vllm_flags.Kind.LIST:
            document[key] = [str(v) for v in value]
        elif row.kind is vllm_flags.Kind.SWITCH:
            document[key] = True
        else:
            document[key] = value
    return yaml.safe_dump(document, sort_keys=False, allow_unicode=True, width=1 << 16)


def config_argv(launch: ReplicaLaunch, config_path: str) -> list[str]:
    return ["vllm", "serve", "--config", config_path, *launch.extra_args]
