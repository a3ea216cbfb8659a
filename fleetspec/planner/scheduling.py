"""Whether Kubernetes can schedule what the plan placed (runtime.target: k8s only). Pure.

The planner packs replicas onto GPUs by memory; the Kubernetes scheduler does not look at memory at
all. It counts an extended resource: without GPU sharing a pod asks for `nvidia.com/gpu: N` and gets
N whole devices, so two replicas the plan put on one GPU mean one pod stays Pending. With sharing:

- time-slicing: the NVIDIA device plugin advertises each GPU `replicas` times, with no memory
  isolation, and the scheduler (not the plan) picks which pods share a card: any `replicas` pods
  may land on one GPU, so the largest `replicas` of them must fit its memory together;
- MIG: each slice is its own device with its own memory; the fleet lists the slices under `gpus:`,
  and each pod takes one whole slice, the same rule as whole GPUs under another resource name.
"""

from __future__ import annotations

from collections.abc import Sequence

from fleetspec.errors import Diagnostic, Severity
from fleetspec.planner import findings, placement
from fleetspec.spec import derived
from fleetspec.spec import models as spec_models

WHOLE_GPU = "nvidia.com/gpu"
EPSILON = 1e-9


def gpu_resource(spec: spec_models.FleetSpec) -> str:
    """The extended resource an engine pod requests."""
    sharing = spec.runtime.kubernetes.gpu_sharing
    return WHOLE_GPU if sharing is None else sharing.resource_name


def check(
    spec: spec_models.FleetSpec,
    assignments: Sequence[placement.Assignment],
    slots: Sequence[placement.GpuSlot],
) -> list[Diagnostic]:
    if spec.runtime.target != "k8s":
        return []
    gpu_assignments = [a for a in assignments if not a.gpu.host]
    sharing = spec.runtime.kubernetes.gpu_sharing
    if sharing is None:
        return _whole_devices(spec, gpu_assignments, slots, WHOLE_GPU, "GPU")
    if sharing.mode == "mig":
        return (
            _single_device(spec, "MIG slice", "CUDA shows a process one MIG slice, never several")
            + _slice_sizes(spec, sharing, slots)
            + _whole_devices(spec, gpu_assignments, slots, sharing.resource_name, "MIG slice")
        )
    return _single_device(
        spec,
        "time-sliced GPU",
        "the device plugin may hand a pod that asks for 2 shares two shares of the same card",
    ) + _time_slices(spec, sharing, gpu_assignments)


def _pods_by_device(spec, assignments) -> dict[int, list[tuple[int, str]]]:
    on: dict[int, list[tuple[int, str]]] = {}
    for a in assignments:
        for gpu_id in a.gpu_ids:
            on.setdefault(gpu_id, []).append(
                (a.server_index, f"{spec.servers[a.server_index].name}/{a.replica}")
            )
    return on


def _whole_devices(spec, assignments, slots, resource: str, device: str) -> list[Diagnostic]:
    """One finding per device the plan gave to more than one pod."""
    out = []
    pods = sum(spec.servers[a.server_index].gpus_per_replica for a in assignments)
    devices = len([s for s in slots if not s.gpu.host])
    by_device = _pods_by_device(spec, assignments)
    most = max((len(s) for s in by_device.values()), default=1)
    for gpu_id, sharing in sorted(by_device.items()):
        if len(sharing) < 2:
            continue
        names = ", ".join(name for _, name in sharing)
        server_index = sharing[1][0]
        resource_of = spec.servers[server_index].gpus_per_replica
        message = (
            f"on Kubernetes each engine pod requests whole devices ({resource}: {resource_of}), but the plan "
            f"puts {len(sharing)} replicas on {device} {gpu_id} ({names}): the scheduler gives it to one pod "
            f"and {_pods(len(sharing) - 1)} stay Pending"
        )
        if device == "GPU":
            hint = (
                f"the fleet's pods need {pods} GPUs and it declares {devices}: lower replicas, add GPUs, or let "
                "pods share GPUs with runtime.kubernetes.gpu_sharing, e.g. {mode: time-slicing, replicas: "
                f"{most}}} (the NVIDIA device plugin must be configured with the same replicas; "
                "docs/kubernetes.md)"
            )
        else:
            hint = f"list one `gpus:` device per MIG slice the node has ({pods} pods need {pods} slices)"
        out.append(
            findings.finding(
                Severity.ERROR, "k8s-whole-gpus", ("servers", server_index, "replicas"), message, hint
            )
        )
    return out


def _single_device(spec, device: str, why: str) -> list[Diagnostic]:
    return [
        findings.finding(
            Severity.ERROR,
            "k8s-shared-gpu-parallel",
            ("servers", i, "tensor_parallel_size"),
            f"server `{s.name}` spans {s.gpus_per_replica} GPUs per replica, and a pod on a {device} gets exactly one: "
            f"{why}",
            "give this server whole GPUs (a fleet without gpu_sharing), or run it with tensor_parallel_size: 1",
        )
        for i, s in enumerate(spec.servers)
        if s.replicas and s.gpus_per_replica > 1
    ]


def _slice_sizes(spec, sharing, slots) -> list[Diagnostic]:
    """`gpus:` must list the slices (their memory), not the cards they are cut from."""
    match = spec_models.MIG_RESOURCE.match(sharing.resource)
    slice_gib = int(match.group(2))
    biggest = max((s for s in slots if not s.gpu.host), key=lambda s: s.gpu.total_bytes, default=None)
    if biggest is None or biggest.gpu.total_gib <= slice_gib + 0.5:
        return []
    return [
        findings.finding(
            Severity.ERROR,
            "k8s-mig-slice-size",
            ("gpus", biggest.group_index),
            f"each pod gets one {sharing.resource} slice (about {slice_gib} GB), but `gpus:` lists devices of "
            f"{biggest.gpu.total_gib:.1f} GiB: the plan would budget memory the slice does not have",
            f"list the slices themselves, e.g. `- memory_gib: {slice_gib * 0.97:.1f}` with `count:` the number of "
            "slices (nvidia-smi -L shows them and their memory)",
        )
    ]


def _time_slices(spec, sharing, assignments) -> list[Diagnostic]:
    out = []
    share = sharing.replicas
    for gpu_id, pods in sorted(_pods_by_device(spec, assignments).items()):
        if len(pods) > share:
            out.append(
                findings.finding(
                    Severity.ERROR,
                    "k8s-time-slices",
                    ("servers", pods[share][0], "replicas"),
                    f"the plan puts {len(pods)} pods on GPU {gpu_id}, and time-slicing advertises each GPU "
                    f"{share} times: {_pods(len(pods) - share)} would stay Pending",
                    f"lower replicas, add GPUs, or raise runtime.kubernetes.gpu_sharing.replicas (and the device "
                    f"plugin's) to {len(pods)}",
                )
            )
    # The scheduler picks which shares a pod gets: the `share` largest pods may all land on one card.
    wanted = sorted(
        (
            (derived.utilization(spec, spec.servers[a.server_index]), spec.servers[a.server_index].name)
            for a in assignments
        ),
        reverse=True,
    )[:share]
    total = sum(u for u, _ in wanted)
    if len(wanted) > 1 and total > 1 + EPSILON:
        shown = ", ".join(f"{name} {u:.2f}" for u, name in wanted)
        largest = next(i for i, s in enumerate(spec.servers) if s.name == wanted[0][1])
        out.append(
            findings.finding(
                Severity.ERROR,
                "k8s-time-slice-memory",
                ("servers", largest, "gpu_memory_utilization"),
                f"time-slicing shares a GPU's memory without isolation, and the scheduler, not the plan, decides which "
                f"pods share a card: any {len(wanted)} of them may land on one GPU, and the largest {len(wanted)} "
                f"({shown}) want {total:.2f} of its memory; vLLM refuses to start when less than its share is free",
                f"keep any {len(wanted)} pods within one GPU: gpu_memory_utilization of at most "
                f"{1 / len(wanted):.2f} each, or fewer time-slicing replicas per GPU",
            )
        )
    return out


def _pods(count: int) -> str:
    return "1 pod" if count == 1 else f"{count} pods"
