"""`gpus: {discover: true}`: ask NVML (nvidia-ml-py) for this host's GPUs. The one effectful
module of the planner; its result goes to `report.plan_fleet(..., gpus_override=...)`."""

from __future__ import annotations

from fleetspec import errors
from fleetspec.catalog import gpus as catalog_gpus
from fleetspec.spec import models as spec_models

GIB = 1 << 30
NVLINK_MAX_LINKS = 18  # NVML_NVLINK_MAX_LINKS (nvml.h)


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


def _describe(nvml, index: int) -> tuple[int, str, int, str]:
    handle = nvml.nvmlDeviceGetHandleByIndex(index)
    name = nvml.nvmlDeviceGetName(handle)
    name = name.decode() if isinstance(name, bytes) else name
    memory = nvml.nvmlDeviceGetMemoryInfo(handle)
    # NVML's total is nvidia-smi's; CUDA sees `total - reserved` when the v2 struct reports it.
    usable = memory.total - getattr(memory, "reserved", 0)
    return index, name, usable, _link(nvml, handle)


def _link(nvml, handle) -> str:
    """`nvlink` when any NVLink of the device is up, else `pcie` (it sizes NCCL's memory: planner/nontorch.py)."""
    state = getattr(nvml, "nvmlDeviceGetNvLinkState", None)
    if state is None:
        return "pcie"
    for link in range(NVLINK_MAX_LINKS):
        try:
            if state(handle, link):
                return "nvlink"
        except Exception:  # NVML_ERROR_NOT_SUPPORTED / INVALID_ARGUMENT past the device's last link
            break
    return "pcie"


def _group(devices: list[tuple[int, str, int, str]]) -> list[spec_models.GpuGroup]:
    """Known cards by catalog type (the catalog knows what CUDA reports); others by memory; and by
    whether their NVLinks are up."""
    groups: dict[tuple[str | None, float | None, str], list[int]] = {}
    for index, name, total, link in devices:
        kind = catalog_gpus.canonical_name(name)
        key = (kind, None, link) if kind else (None, round(total / GIB, 2), link)
        groups.setdefault(key, []).append(index)
    return [
        spec_models.GpuGroup(type=kind, memory_gib=memory, count=len(ids), ids=ids, interconnect=link)
        for (kind, memory, link), ids in groups.items()
    ]
