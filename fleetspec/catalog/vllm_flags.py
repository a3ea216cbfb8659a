"""The one table from fleetspec settings to `vllm serve` flags, per vLLM release.

`compile.vllm_args` resolves a server replica to plain settings (`{"max_lora_rank": 64, ...}`) and
renders them through `FLAGS` in table order, so the argv of every target (shell line, JSON, compose,
k8s, the sim) comes from one place. Rows carry the first release that has the flag and the first that
dropped it; `facts(version)` gives the defaults and allowed values of one release.

Sources (vllm-facts.md in the shared reference, wheels read at the tagged commits):
  0.33.0  vllm/engine/arg_utils.py, vllm/config/{lora,cache,model,parallel}.py,
          vllm/entrypoints/common/cli_args.py (`--lora-modules`, `--api-server-count`)
  0.11.0  vllm/config/lora.py:104 (ranks without 1), vllm/config/cache.py:43 (utilization 0.9),
          `--lora-extra-vocab-size` / `--enable-lora-bias` deprecated "removed in v0.12.0"
  PR #26461 (merged 2025-10-09, after 0.11.0) added max_lora_rank 1; first assumed in 0.12.
  PR #34984 (merged 2026-02, on 0.16.0rc2.dev) added `--lora-target-modules`; first assumed in 0.17.
The release that raised the utilization default to 0.92 is not confirmed; `spec.derived` owns that
default (0.12 assumed) and fleetspec always writes `--gpu-memory-utilization` explicitly, so the
planned budget never depends on a default.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import json
from collections.abc import Mapping
from importlib import resources

Version = tuple[int, int]


def parse_version(text: str) -> Version:
    """"0.33.0" → (0, 33): flags and defaults change with minor releases only."""
    parts = [int(p) for p in text.split(".")[:2]]
    return (parts[0], parts[1] if len(parts) > 1 else 0)


class Kind(enum.Enum):
    VALUE = "value"  # --flag VALUE
    SWITCH = "switch"  # --flag when true, nothing when false
    LIST = "list"  # --flag ITEM ITEM ... (argparse nargs="+")


@dataclasses.dataclass(frozen=True)
class Flag:
    setting: str  # key of the resolved settings dict in compile.vllm_args
    flag: str
    kind: Kind
    spec_field: str  # where a user sets it, for messages ("servers[].lora.max_lora_rank")
    since: Version = (0, 0)
    removed_in: Version | None = None

    def exists_in(self, version: Version) -> bool:
        return self.since <= version and (self.removed_in is None or version < self.removed_in)


# Table order is argv order: identity and placement first, memory next, LoRA last.
FLAGS: tuple[Flag, ...] = (
    Flag("revision", "--revision", Kind.VALUE, "base_model.revision"),
    Flag("served_model_name", "--served-model-name", Kind.LIST, "(fleetspec: base model id)"),
    Flag("host", "--host", Kind.VALUE, "runtime.bind_address"),
    Flag("port", "--port", Kind.VALUE, "servers[].port / runtime.base_port"),
    Flag("tensor_parallel_size", "--tensor-parallel-size", Kind.VALUE, "servers[].tensor_parallel_size"),
    Flag("pipeline_parallel_size", "--pipeline-parallel-size", Kind.VALUE, "servers[].pipeline_parallel_size"),
    # vllm-project/vllm#13923 (--data-parallel-size) and #14305 (--enable-expert-parallel), both in 0.8.0.
    Flag("data_parallel_size", "--data-parallel-size", Kind.VALUE, "servers[].data_parallel_size", since=(0, 8)),
    Flag("enable_expert_parallel", "--enable-expert-parallel", Kind.SWITCH, "servers[].expert_parallel",
         since=(0, 8)),
    Flag("dtype", "--dtype", Kind.VALUE, "base_model.dtype"),
    Flag("quantization", "--quantization", Kind.VALUE, "base_model.quantization"),
    Flag("kv_cache_dtype", "--kv-cache-dtype", Kind.VALUE, "base_model.kv_cache_dtype"),
    Flag("gpu_memory_utilization", "--gpu-memory-utilization", Kind.VALUE, "servers[].gpu_memory_utilization"),
    # Written for `cpu` hosts only, from the plan; it overrides the utilization-based KV size.
    Flag("kv_cache_memory_bytes", "--kv-cache-memory-bytes", Kind.VALUE, "(fleetspec: the plan, on cpu hosts)",
         since=(0, 11)),
    Flag("max_model_len", "--max-model-len", Kind.VALUE, "servers[].max_model_len / base_model.max_model_len"),
    Flag("max_num_seqs", "--max-num-seqs", Kind.VALUE, "servers[].max_num_seqs"),
    Flag("max_num_batched_tokens", "--max-num-batched-tokens", Kind.VALUE, "servers[].max_num_batched_tokens"),
    Flag("enforce_eager", "--enforce-eager", Kind.SWITCH, "servers[].enforce_eager"),
    Flag("api_server_count", "--api-server-count", Kind.VALUE, "(fleetspec: 1 with runtime LoRA)"),
    Flag("enable_lora", "--enable-lora", Kind.SWITCH, "servers[].lora"),
    Flag("max_loras", "--max-loras", Kind.VALUE, "servers[].lora.max_loras"),
    Flag("max_cpu_loras", "--max-cpu-loras", Kind.VALUE, "servers[].lora.max_cpu_loras"),
    Flag("max_lora_rank", "--max-lora-rank", Kind.VALUE, "servers[].lora.max_lora_rank"),
    Flag("lora_dtype", "--lora-dtype", Kind.VALUE, "servers[].lora.lora_dtype"),
    Flag("lora_target_modules", "--lora-target-modules", Kind.LIST, "servers[].lora.target_modules",
         since=(0, 17)),
    Flag("fully_sharded_loras", "--fully-sharded-loras", Kind.SWITCH, "servers[].lora.fully_sharded"),
    Flag("lora_modules", "--lora-modules", Kind.LIST, "specialists[] (preload: true)"),
)

FLAGS_BY_SETTING = {f.setting: f for f in FLAGS}

# Flags that existed and were dropped; in `extra_args` of a fleet compiled for a newer release they
# would stop vLLM at startup with "unrecognized arguments".
REMOVED_FLAGS: dict[str, tuple[Version, str]] = {
    "--lora-extra-vocab-size": ((0, 12), "vLLM 0.12 removed it (PR #28382); drop it."),
    "--enable-lora-bias": ((0, 12), "vLLM 0.12 removed it and now rejects adapters with a bias; drop it."),
    "--long-lora-scaling-factors": ((0, 11), "vLLM removed long-LoRA support before 0.11; drop it."),
}


@dataclasses.dataclass(frozen=True)
class ReleaseFacts:
    """What one vLLM release accepts and assumes, where fleetspec depends on it."""

    version: Version
    allowed_max_lora_ranks: tuple[int, ...]
    gpu_memory_utilization_default: float
    max_lora_rank_default: int = 16
    max_loras_default: int = 1
    # MoE backends that refuse LoRA at start-up: LoRAConfig.verify_with_kernel_config, vllm/config/lora.py
    # of 0.33 (MEGA_MOE_BACKENDS in vllm/config/kernel.py, plus aiter_mega_moe); 0.32 has no such check.
    lora_refused_moe_backends: frozenset[str] = frozenset()

    def has_flag(self, flag: str) -> bool:
        return any(f.flag == flag and f.exists_in(self.version) for f in FLAGS)


_RANKS_WITH_1 = (1, 8, 16, 32, 64, 128, 256, 320, 512)
_RANKS_WITHOUT_1 = (8, 16, 32, 64, 128, 256, 320, 512)
_MEGA_MOE_BACKENDS = frozenset({"deep_gemm_mega_moe", "flashinfer_moe_ep_cutedsl", "flashinfer_moe_ep_mega_deep_gemm",
                                "aiter_mega_moe"})


def facts(version: str) -> ReleaseFacts:
    from fleetspec.spec import derived  # the utilization default has one owner

    parsed = parse_version(version)
    return ReleaseFacts(
        version=parsed,
        allowed_max_lora_ranks=_RANKS_WITH_1 if parsed >= (0, 12) else _RANKS_WITHOUT_1,
        gpu_memory_utilization_default=derived.default_gpu_memory_utilization(version),
        lora_refused_moe_backends=_MEGA_MOE_BACKENDS if parsed >= (0, 33) else frozenset(),
    )


def extra_arg_value(extra_args: list[str], flag: str) -> tuple[int, str] | None:
    """(position, value) of the last `flag VALUE` or `flag=VALUE` in a server's extra_args; argparse
    keeps the last one too."""
    found = None
    for position, word in enumerate(extra_args):
        if word.startswith(flag + "="):
            found = (position, word.split("=", 1)[1])
        elif word == flag and position + 1 < len(extra_args):
            found = (position + 1, extra_args[position + 1])
    return found


def moe_backend(extra_args: list[str]) -> tuple[int, str] | None:
    """(position, backend) of the last `--moe-backend` in a server's extra_args, normalized as vLLM's
    parser does (lower case, `-` → `_`: the argument's type in EngineArgs.add_cli_args)."""
    found = extra_arg_value(extra_args, "--moe-backend")
    return None if found is None else (found[0], found[1].lower().replace("-", "_"))


MAX_BLOCK_SIZE = 1 << 16  # no attention backend pages more tokens than this


def block_size(extra_args: list[str]) -> int | None:
    """The KV block size a server's extra_args set: a positive whole number (CacheConfig.block_size,
    `Field(gt=0)` in vllm/config/cache.py of 0.19 and 0.33; 0.11 took only 1, 8, 16, 32, 64, 128)."""
    found = extra_arg_value(extra_args, "--block-size")
    if found is None or not (found[1].isascii() and found[1].isdigit()) or len(found[1]) > 6:
        return None
    value = int(found[1])
    return value if 0 < value <= MAX_BLOCK_SIZE else None


def prefix_caching(extra_args: list[str]) -> bool | None:
    """Whether extra_args switch prefix caching on or off (the last of --enable-prefix-caching /
    --no-enable-prefix-caching wins, as argparse's BooleanOptionalAction); None: the release's default."""
    state = None
    for word in extra_args:
        if word == "--enable-prefix-caching":
            state = True
        elif word == "--no-enable-prefix-caching":
            state = False
    return state


MAMBA_SSM_DTYPES = ("auto", "float32", "float16", "bfloat16")


def mamba_ssm_cache_dtype(extra_args: list[str]) -> str | None:
    """`--mamba-ssm-cache-dtype` (CacheConfig.mamba_ssm_cache_dtype) when extra_args set one vLLM takes."""
    found = extra_arg_value(extra_args, "--mamba-ssm-cache-dtype")
    return found[1] if found is not None and found[1] in MAMBA_SSM_DTYPES else None


# A block count no pool reaches: larger values are not read, so a number in a file cannot overflow
# the plan's arithmetic.
MAX_GPU_BLOCKS = 1 << 32


def num_gpu_blocks_override(extra_args: list[str]) -> int | None:
    """`--num-gpu-blocks-override`: the KV cache's block count, whatever the profile left
    (may_override_num_blocks, vllm/v1/core/kv_cache_utils.py of 0.32; V0's CacheConfig the same)."""
    found = extra_arg_value(extra_args, "--num-gpu-blocks-override")
    if found is None or not (found[1].isascii() and found[1].isdigit()) or len(found[1]) > 10:
        return None
    value = int(found[1])
    return value if 0 < value <= MAX_GPU_BLOCKS else None


# Flags a fleet may pass in extra_args that change how vLLM spends GPU memory in ways the planner
# does not model: what each changes, for the plan's warning.
UNMODELLED_MEMORY_FLAGS: dict[str, str] = {
    "--speculative-config": "GPU memory for a draft model's weights and KV cache",
    "--cpu-offload-gb": "how much of the weights stays on the GPU",
    "--enable-eplb": "the expert weights, with redundant experts for load balancing",
    "--eplb-config": "the expert weights, with redundant experts for load balancing",
    "--decode-context-parallel-size": "how the KV cache is split across GPUs",
    "--prefill-context-parallel-size": "how the KV cache is split across GPUs",
    "--enable-moe-shared-loras": "the MoE LoRA buffers (one A and B shared by all experts)",
    "--compilation-config": "the CUDA graphs captured and their memory",
    "--limit-mm-per-prompt": "the multimodal encoder's profile run",
    "--mm-encoder-tp-mode": "how the vision encoder is split across GPUs",
}


def flag_name(word: str) -> str | None:
    """`--max_lora_rank=8` → `--max-lora-rank`; None for a word that is not a long option."""
    name = word.split("=", 1)[0]
    return "--" + name[2:].replace("_", "-") if name.startswith("--") else None


def flag_owner(word: str) -> Flag | None:
    """The table row a command-line word sets (`--max_lora_rank=8` included), if any."""
    name = flag_name(word)
    if name is None:
        return None
    for row in FLAGS:
        if name in (row.flag, "--no-" + row.flag[2:]):
            return row
    return None


# How long a vLLM replica may take from container start to a 200 on /health, for healthcheck
# start periods and Kubernetes startup probes. An estimate, not a measurement: vLLM logs
# "Model loading took X GiB and Y seconds" at roughly 1-2 GiB/s from local NVMe, then
# torch.compile (30-90 s, cached after the first start) and CUDA-graph capture (10-60 s, more with
# LoRA graph variants). A first start that downloads weights takes longer still; that is why the
# per-GiB figure assumes a slow (~100 MiB/s) disk or network.
STARTUP_BASE_SECONDS = 180
STARTUP_SECONDS_PER_GIB = 10
STARTUP_DEFAULT_WEIGHTS_GIB = 16.0  # when the plan cannot say how large the weights are


def startup_budget_seconds(weights_gib: float | None) -> int:
    """Seconds to allow a replica to become healthy, rounded up to whole minutes."""
    gib = STARTUP_DEFAULT_WEIGHTS_GIB if weights_gib is None else weights_gib
    seconds = STARTUP_BASE_SECONDS + STARTUP_SECONDS_PER_GIB * gib
    return int(-(-seconds // 60) * 60)


# ---------------------------------------------------------------------------------------------
# Every option string of `vllm serve`, per release, dumped from that release's own parser
# (scripts/dump-vllm-serve-flags): what an extra_args flag is checked against, and what the sim accepts.


@functools.cache
def _option_tables() -> Mapping[str, Mapping[str, int | str]]:
    text = resources.files("fleetspec.catalog").joinpath("data", "vllm_serve_flags.json").read_text("utf-8")
    return json.loads(text)


def dumped_releases() -> tuple[str, ...]:
    """The "major.minor" releases whose parser was dumped, oldest first."""
    return tuple(sorted(_option_tables(), key=lambda v: parse_version(v)))


def option_strings(version: str) -> Mapping[str, int | str] | None:
    """Option string → the values it takes (0, 1, "?", "+") in that release; None when not dumped."""
    major, minor = parse_version(version)
    return _option_tables().get(f"{major}.{minor}")


# ---------------------------------------------------------------------------------------------
# A word of a server's `extra_args`, checked against the table and the release's own parser. Used by
# `fleetspec validate` (located in the fleet file) and by compile, which refuses to write such argv.


def extra_arg_problems(word: str, version: str) -> list[tuple[str, str, str]]:
    """(code, message, hint) for what is wrong with one extra_args word on this vLLM release; [] if nothing."""
    release = parse_version(version)
    name = flag_name(word)
    if name in REMOVED_FLAGS:
        removed_in, hint = REMOVED_FLAGS[name]
        if release >= removed_in:
            return [("removed-vllm-flag", f"vLLM {version} no longer has {name}; it would refuse to start.", hint)]
        return []
    if name == "--api-key":
        return [("api-key-in-argv", "--api-key in extra_args puts the engines' key in every process listing and "
                 "compiled file.", "Remove it and set runtime.engine_api_key: ${VLLM_API_KEY} instead; fleetspec "
                 "hands the key to vLLM through its environment and sends it on every call.")]
    known = option_strings(version) if name else None
    if known is not None and name not in known:
        major, minor = release
        return [("unknown-vllm-flag", f"vLLM {major}.{minor} has no {name}; it would exit at start with "
                 f"\"unrecognized arguments: {name}\".", _unknown_flag_hint(name, version))]
    row = flag_owner(word)
    if row is not None:
        if row.spec_field.startswith("(fleetspec: "):  # derived by fleetspec, no fleet field to set
            source = row.spec_field.removeprefix("(fleetspec: ").removesuffix(")")
            return [("flag-set-by-fleetspec",
                     f"{row.flag} is written by fleetspec itself ({source}); passing it again in extra_args "
                     "would silently override what the planner checked.",
                     "Remove it from extra_args; fleetspec sets it where it is needed.")]
        return [("flag-set-by-fleetspec",
                 f"{row.flag} is written by fleetspec from {row.spec_field}; passing it again in extra_args "
                 "would silently override what the planner checked.",
                 f"Remove it from extra_args and set {row.spec_field} instead.")]
    return []


def _unknown_flag_hint(name: str, version: str) -> str:
    """Where the flag does exist (another dumped release), or that it is probably a typo."""
    elsewhere = [v for v in dumped_releases() if name in (option_strings(v) or {})]
    if elsewhere:
        return (f"{name} exists in vLLM {', '.join(elsewhere)}; remove it, or set runtime.vllm_version to a "
                "release that has it.")
    return f"Check the spelling against `vllm serve --help` of vLLM {version}, or remove it."
