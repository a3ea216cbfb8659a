"""GPU facts: total memory as CUDA reports it, per catalog type (`data/gpus.yaml`).

One entry is not a GPU: `cpu`, the host of vLLM's CPU build, whose memory the fleet file gives."""

from __future__ import annotations

import dataclasses
import functools
import re

from fleetspec.catalog import data_files
from fleetspec.spec import models as spec_models

GIB = 1 << 30


@dataclasses.dataclass(frozen=True)
class GpuFacts:
    type: str  # canonical catalog name, or "custom-<N>GiB" for a card given by memory_gib
    total_bytes: int
    source: str
    estimated: bool = False
    simulated: bool = False
    host: bool = False  # the CPU build of vLLM: "GPU memory" is host RAM, and there is no CUDA
    compute_capability: tuple[int, int] | None = None  # None: not a catalog card
    interconnect: str = "pcie"  # between the GPUs of one replica: "nvlink" (NVLink/NVSwitch) or "pcie"

    @property
    def total_gib(self) -> float:
        return self.total_bytes / GIB


class UnknownGpuType(LookupError):
    """A GpuGroup names a type the catalog does not have and gives no memory_gib."""


class HostMemoryNeeded(LookupError):
    """A `cpu` group without memory_gib: the host's memory is not a catalog fact."""


def resolve(group: spec_models.GpuGroup) -> GpuFacts:
    """Facts for one inventory group. An explicit `memory_gib` wins over the catalog's number."""
    if group.type is not None:
        name = canonical_name(group.type)
        if name is None and group.memory_gib is None:
            raise UnknownGpuType(group.type)
        host = name is not None and _entry(name).get("host", False)
        if host and group.memory_gib is None:
            raise HostMemoryNeeded(group.type)
        # "H100-PCIe" is an alias of H100-80GB, whose catalog link is the SXM board's.
        named_pcie = "pcie" in group.type.lower()
        link = group.interconnect or ("pcie" if named_pcie else _entry(name).get("interconnect", "pcie")) \
            if name is not None else None
        if name is not None and group.memory_gib is None:
            return dataclasses.replace(_catalog_facts(name), interconnect=link)
        if name is not None:
            return GpuFacts(name, round(group.memory_gib * GIB), "memory_gib in the fleet file", host=host,
                            compute_capability=_capability(_entry(name)), interconnect=link)
    label = group.type or f"custom-{group.memory_gib:g}GiB"
    return GpuFacts(label, round(group.memory_gib * GIB), "memory_gib in the fleet file",
                    interconnect=group.interconnect or "pcie")


def canonical_name(name: str) -> str | None:
    """The catalog name for a type or alias ("h100", "NVIDIA H100 80GB HBM3" → "H100-80GB")."""
    return _aliases().get(_normal(name))


def known_types() -> list[str]:
    return [name for name, facts in data_files.load("gpus")["gpus"].items() if not facts.get("simulated")]


def is_host(type_name: str | None) -> bool:
    """Whether a catalog type (or alias) is the CPU host rather than a GPU."""
    name = canonical_name(type_name) if type_name else None
    return name is not None and _entry(name).get("host", False)


def _entry(name: str) -> dict:
    return data_files.load("gpus")["gpus"][name]


@functools.cache
def _catalog_facts(name: str) -> GpuFacts:
    entry = _entry(name)
    return GpuFacts(name, round(entry["memory_gib"] * GIB), entry["source"],
                    entry.get("estimated", False), entry.get("simulated", False),
                    compute_capability=_capability(entry), interconnect=entry.get("interconnect", "pcie"))


def _capability(entry: dict) -> tuple[int, int] | None:
    text = entry.get("compute_capability")
    if text is None:
        return None
    major, minor = str(text).split(".")
    return int(major), int(minor)


@functools.cache
def _aliases() -> dict[str, str]:
    table: dict[str, str] = {}
    for name, entry in data_files.load("gpus")["gpus"].items():
        for alias in (name, *map(str, entry.get("aliases", ()))):
            table[_normal(alias)] = name
    return table


def _normal(name: str) -> str:
    return re.sub(r"[\s_\-]+", "-", name.strip().lower())
