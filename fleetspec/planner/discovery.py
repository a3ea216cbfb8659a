"""`gpus: {discover: true}`: ask NVML (nvidia-ml-py) for this host's GPUs. The one effectful
module of the planner; its result goes to `report.plan_fleet(..., gpus_override=...)`."""

from __future__ import annotations

from fleetspec import errors
from fleetspec.catalog import gpus as catalog_gpus
from fleetspec.spec import models as spec_models

GIB = 1 << 30


def discover(nvml=None) -> list[spec_models.GpuGroup]:
    """One GpuGroup per GPU model, with the devices' indices. `nvml` is injectable for tests."""
    nvml = nvml or _import_nvml()
    try:
        nvml.nvmlInit()
    except Exception as exc:  # NVMLError subclasses carry no stable type across driver versions
        raise errors.PermanentError(
            f"cannot read this machine's GPUs: the NVIDIA driver (NVML) is not available ({exc}); "
            "run `fleetspec plan` on the GPU host, or list the GPUs in the fleet file, e.g. gpus: \"1x A100-80GB\""
        ) from None
    try:
        devices = [_describe(nvml, index) for index in range(nvml.nvmlDeviceGetCount())]
    finally:
        nvml.nvmlShutdown()
    if not devices:
        raise errors.PermanentError("NVML reports no GPUs on this machine; list the GPUs in the fleet file instead")
    return _group(devices)


def _import_nvml():
    try:
        import pynvml
    except ImportError:
        raise errors.PermanentError(
            "`gpus: {discover: true}` needs the nvidia-ml-py package; install it "
            "(pip install nvidia-ml-py) or list the GPUs in the fleet file"
        ) from None
    return pynvml


def _describe(nvml, index: int) -> tuple[int, str, int]:
    handle = nvml.nvmlDeviceGetHandleByIndex(index)
    name = nvml.nvmlDeviceGetName(handle)
    name = name.decode() if isinstance(name, bytes) else name
    memory = nvml.nvmlDeviceGetMemoryInfo(handle)
    # NVML's total is nvidia-smi's; CUDA sees `total - reserved` when the v2 struct reports it.
    usable = memory.total - getattr(memory, "reserved", 0)
    return index, name, usable


def _group(devices: list[tuple[int, str, int]]) -> list[spec_models.GpuGroup]:
    """Known cards by catalog type (the catalog knows what CUDA reports); others by memory."""
    groups: dict[tuple[str | None, float | None], list[int]] = {}
    for index, name, total in devices:
        kind = catalog_gpus.canonical_name(name)
        key = (kind, None) if kind else (None, round(total / GIB, 2))
        groups.setdefault(key, []).append(index)
    return [
        spec_models.GpuGroup(type=kind, memory_gib=memory, count=len(ids), ids=ids)
        for (kind, memory), ids in groups.items()
    ]
