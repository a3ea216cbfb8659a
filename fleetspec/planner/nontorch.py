"""Non-torch GPU memory and the CUDA context of one worker, by release, parallel shape and link.

Pure. The measured parts are vLLM 0.19 on H100 SXM (`overheads.yaml` non_torch_gib and
cuda_context_gib); what they are made of, and which of them vLLM counts inside its budget in each
release, is read from vLLM's worker code (`overheads.yaml` non_torch_model, with line numbers):

- the base every worker has (0.25 GiB at one GPU: kernels and handles loaded during the profile run);
- with tensor parallel, FlashInfer's fused all-reduce workspace (computed, 0.17 onward, Hopper and
  Blackwell) and NCCL's buffers: over NVLink the measured rest, over PCIe a few channels' worth, across
  hosts ("network") at most the same (GPU memory only with GPUDirect RDMA) and no custom all-reduce;
- where vLLM takes its baseline snapshot: after distributed init since 0.11 (init buffers outside
  the budget), before it in 0.9-0.10 and V0 (inside), and in 0.8 nowhere (the CUDA context too);
- V0 from 0.7 (snapshot at worker init, eager runner): no base, only what vLLM allocates outside torch
  (NCCL and custom all-reduce with tensor parallel).
"""

from __future__ import annotations

import dataclasses

from fleetspec.catalog import overheads
from fleetspec.spec import derived

MIB = 1 << 20
GIB = 1 << 30
_2M = 2 * MIB
_release = derived.vllm_version_tuple  # "0.11" → (0, 11); also reads "9.0" capabilities


@dataclasses.dataclass(frozen=True)
class NonTorch:
    in_budget: int  # what vLLM subtracts from the KV budget as non-torch
    outside: int  # CUDA context and what distributed init holds before the snapshot: must fit beside the budget
    parts: tuple[tuple[str, int], ...]  # the terms of in_budget, for plan --explain
    confidence: str  # "measured", "computed", "estimated" or "extrapolated"


def _model() -> dict:
    return overheads.load().non_torch_model


def _round_2m(value: float) -> int:
    return -(-int(value) // _2M) * _2M


def flashinfer_fusion_bytes(tp: int, version: tuple[int, ...], compute_capability: tuple[int, int] | None, *,
                            hidden: int, batched_tokens: int, dp: int = 1, pp: int = 1) -> int:
    """FlashInfer's all-reduce + RMSNorm fusion workspace on one GPU (0 where vLLM does not make it)."""
    f = _model()["flashinfer_fusion"]
    if tp < 2 or compute_capability is None or version < _release(f["since"]):
        return 0
    if version < _release(f["any_shape_since"]) and (dp > 1 or pp > 1):
        return 0
    table = f["max_mb"].get(f"{compute_capability[0]}.{compute_capability[1]}", {})
    max_mb = table.get(tp) or table.get(str(tp))
    if not max_mb:
        return 0  # world sizes outside vLLM's table get no fusion
    tokens = min(int(max_mb * MIB) // (hidden * 2), batched_tokens)
    one = tp * tokens * hidden * 2
    return _round_2m(one) + _2M + _round_2m(3 * one)


def _pcie_nccl_bytes(tp: int) -> int:
    p = _model()["pcie"]
    links = 1 if tp == 2 else 2  # a ring of two has one neighbour; trees add links above that
    return p["per_channel_mib"] * MIB * p["channels"] * links  # one communicator


def _nvlink_rest_bytes(tp: int) -> int:
    """NCCL's measured share over NVLink at this tensor-parallel size (the nearest measured size)."""
    m = _model()
    measured = {int(k): v for k, v in m["nvlink_measured_gib"].items()}
    size = max((k for k in measured if k <= tp), default=min(measured))
    base = overheads.load().non_torch_bytes["single_gpu"]
    reference = flashinfer_fusion_bytes(size, _release(m["measured_release"]),
                                        _release(m["measured_capability"]),
                                        hidden=4096, batched_tokens=8192)
    return round(measured[size] * GIB) - base - reference


def non_torch(tp: int, pp: int, version: tuple[int, ...], *, interconnect: str = "nvlink",
              compute_capability: tuple[int, int] | None = None, hidden: int = 4096,
              batched_tokens: int = 8192, dp: int = 1, v0: bool = False) -> NonTorch:
    c = overheads.load()
    m = _model()
    key = "tensor_parallel" if tp > 1 else "pipeline_only" if pp > 1 else "single_gpu"
    single_context = c.cuda_context_bytes["single_gpu"]
    outside = c.cuda_context_bytes[key]
    parts: list[tuple[str, int]] = []
    measured_here = version[:2] == _release(m["measured_release"]) and (
        tp == 1 or compute_capability == _release(m["measured_capability"]))
    confidence = "measured" if measured_here else "extrapolated"
    # V0 from 0.7: the baseline snapshot holds the context, vLLM allocates nothing outside torch on one
    # GPU before the profile run ends, and the eager runner loads no compiled kernels: the base measured
    # on V1 0.19 does not apply, and the driver's own kernel loads are not modelled (overheads.yaml).
    v0_snapshot = v0 and version >= _release(m["v0_base_since"])
    if v0_snapshot:
        confidence = "estimated"
    if tp > 1:
        if not v0_snapshot:
            parts.append(("base", c.non_torch_bytes["single_gpu"]))
        fusion = flashinfer_fusion_bytes(tp, version, compute_capability, hidden=hidden,
                                         batched_tokens=batched_tokens, dp=dp, pp=pp)
        if fusion:
            parts.append(("FlashInfer all-reduce fusion workspace", fusion))
        if interconnect == "pcie":
            nccl = _pcie_nccl_bytes(tp)
            parts.append(("NCCL over PCIe, the communicator made at first use", nccl))
            # vLLM's own communicator is made at distributed init, with custom all-reduce's two
            # 8 MiB buffers (custom_all_reduce.py: two GPUs over PCIe only).
            outside = single_context + nccl + (16 * MIB if tp == 2 else 0)
            confidence = "estimated"
        elif interconnect == "network":
            # Ranks on different hosts: no NVLink or P2P, NCCL's NET transport. Its SIMPLE and LL128
            # buffers go to GPU memory only with GPUDirect RDMA (`useGdr`), else to host memory, and
            # LL's always to host memory (transport/net.cc sendProxyConnect / recvProxyConnect,
            # NCCL v2.26.2): planned as the PCIe sizes, the GPUDirect case (the larger). vLLM makes no
            # custom all-reduce buffers across nodes (custom_all_reduce.py: "spans across nodes").
            nccl = _pcie_nccl_bytes(tp)
            parts.append(("NCCL over the network (at most, with GPUDirect RDMA), the communicator made at first use",
                          nccl))
            outside = single_context + nccl
            confidence = "estimated"
        else:
            parts.append(("NCCL over NVLink (measured on 0.19 H100, less the base and FlashInfer's workspace)",
                          _nvlink_rest_bytes(tp)))
    elif not v0_snapshot:
        parts.append(("base", c.non_torch_bytes[key]))
    if version < _release(m["snapshot_after_distributed_init_since"]):
        # The snapshot precedes distributed init: what it set up is counted as non-torch.
        if outside > single_context:
            parts.append(("distributed init (before the snapshot in this release)", outside - single_context))
        outside = single_context
    if not v0 and _release(m["v1_whole_device_since"]) <= version < _release(m["snapshot_since"]):
        parts.append(("CUDA context (0.8 counts the whole device)", outside))
        outside = 0
    return NonTorch(sum(size for _, size in parts), outside, tuple(parts), confidence)
