"""Stand-in adapters: a fleet's adapters, written with the ranks it declares and the shapes of its base
model, for a machine that does not have the real ones (a laptop, CI).

Each stand-in is a valid PEFT LoRA that every fleetspec check, the sim and vLLM accept: the
declared rank (else the server's max_lora_rank), the declared target modules (else those the
hosting servers give slots to, else every linear module of the model), tensors shaped for the base
model's layers, and zero weights (what PEFT initialises lora_B to, so outputs equal the base
model's). The files are sparse, so even a 14B model's adapters cost almost no disk.

They are written where `--adapters-in DIR` reads the fleet's adapter paths (`overrides.relocated`).
"""

from __future__ import annotations

import dataclasses
import pathlib

from fleetspec import errors
from fleetspec.adapters import fit as adapter_fit
from fleetspec.adapters import inspect as adapter_inspect
from fleetspec.adapters import layout as adapter_layout
from fleetspec.adapters import writer
from fleetspec.catalog import models as catalog_models
from fleetspec.spec import loading, models, overrides

DEFAULT_RANK = 16  # vLLM's default max_lora_rank


@dataclasses.dataclass(frozen=True)
class StandIn:
    specialist: str
    version: str
    path: pathlib.Path
    rank: int
    alpha: float
    modules: tuple[str, ...]
    size: int = 0  # bytes of the weights file (sparse on disk)


def planned(loaded: loading.LoadedFleet, directory: pathlib.Path) -> list[StandIn]:
    """What `write` would write for each (specialist, version) of the fleet (pure)."""
    spec = loaded.spec
    facts = _facts(spec)
    layout = adapter_layout.layout_for(facts.architecture, facts.embedding_lora)
    linear = tuple(m for m in (*adapter_layout.ATTENTION, *adapter_layout.MLP, "qkv_proj", "gate_up_proj")
                   if layout.expected and m in layout.expected and adapter_layout.dims(facts.architecture, m, layout.family))
    found, seen = [], set()
    for specialist in spec.specialists:
        hosts = [s for s in spec.hosts_of(specialist) if s.lora is not None]
        for version in specialist.all_versions:
            entry = specialist.version_entry(version)
            path = overrides.relocated(entry.path, loaded.base_dir, directory)
            if path in seen:
                continue  # two versions may share a directory; one stand-in serves both
            seen.add(path)
            rank = entry.rank or min((s.lora.max_lora_rank for s in hosts), default=DEFAULT_RANK)
            modules = _modules(entry.target_modules, hosts, linear, spec.base_model.id, specialist.name)
            found.append(StandIn(specialist.name, version, path, rank, entry.alpha or 2 * rank, modules))
    return found


def write(loaded: loading.LoadedFleet, directory: pathlib.Path, overwrite: bool = False) -> list[StandIn]:
    """Write every stand-in below `directory`; an existing real adapter is never replaced unless
    `overwrite` (a directory that already holds an adapter_config.json is left alone)."""
    facts = _facts(loaded.spec)
    layout = adapter_layout.layout_for(facts.architecture, facts.embedding_lora)
    written = []
    for item in planned(loaded, directory):
        config = item.path / adapter_inspect.CONFIG_FILE
        if config.exists() and not overwrite:
            raise errors.FleetspecError(
                f"{item.path} already holds an adapter; fleetspec does not overwrite adapters it did not write "
                "unless asked. Pick an empty directory, or pass --overwrite if these are stand-ins from an earlier run")
        item.path.mkdir(parents=True, exist_ok=True)
        tensors = _tensors(facts.architecture, layout, item)
        weights = item.path / adapter_inspect.WEIGHT_FILES[0][0]
        size = writer.write_zero_safetensors(weights, tensors)
        config.write_text(writer.config_text(writer.adapter_config(item.rank, item.alpha, item.modules,
                                                                   loaded.spec.base_model.id)), encoding="utf-8")
        written.append(dataclasses.replace(item, size=size))
    return written


def _facts(spec: models.FleetSpec) -> catalog_models.ModelFacts:
    facts = catalog_models.resolve(spec.base_model)
    if facts is None:
        raise errors.FleetspecError(
            f"fleetspec has no architecture facts for {spec.base_model.id}, so it cannot shape stand-in adapters "
            "for it; add base_model.architecture (the config.json values) to the fleet file")
    return facts


def _modules(declared, hosts: list[models.Server], linear: tuple[str, ...], base: str, name: str) -> tuple[str, ...]:
    if declared:
        return tuple(declared)
    allowed = [set(s.lora.target_modules) for s in hosts if s.lora.target_modules]
    chosen = [m for m in linear if m not in ("qkv_proj", "gate_up_proj") or not {"q_proj", "gate_proj"} & set(linear)]
    if allowed and len(allowed) == len(hosts):
        served = set.intersection(*(adapter_fit.served_modules(a) for a in allowed))
        chosen = [m for m in chosen if m in served]
    if not chosen:
        raise errors.FleetspecError(
            f"fleetspec knows no LoRA module of {base} that every server hosting {name} gives a slot to, so it "
            f"cannot write a stand-in for it; set target_modules on the specialist")
    return tuple(chosen)


def _tensors(architecture: models.Architecture, layout: adapter_layout.Layout, item: StandIn
             ) -> dict[str, tuple[str, list[int]]]:
    """PEFT tensor names → (dtype, shape): lora_A [r, in] and lora_B [out, r] per module per layer, in
    bfloat16 (vLLM casts adapter weights to its lora_dtype on load)."""
    dtype = "BF16"
    tensors = {}
    for module in item.modules:
        dims = adapter_layout.dims(architecture, module, layout.family)
        names = layout.module_names(module, architecture.num_hidden_layers)
        if dims is None or names is None:
            raise errors.FleetspecError(
                f"fleetspec does not know the shape of {module} in {architecture.model_type or 'this'} models, so it "
                f"cannot write a stand-in for {item.specialist} {item.version}; leave {module} out of target_modules")
        fan_in, fan_out = dims
        for name in names:
            tensors[f"base_model.model.{name}.lora_A.weight"] = (dtype, [item.rank, fan_in])
            tensors[f"base_model.model.{name}.lora_B.weight"] = (dtype, [fan_out, item.rank])
    return tensors
