"""`vllm serve` argv → ServeArgs, rejecting what vLLM rejects, with vLLM's messages.

The sim must start from exactly the argv fleetspec compiles for real vLLM, so this parser follows
vLLM's `FlexibleArgumentParser` (vllm/utils/argparse_utils.py): `--config file.yaml` expansion,
`--model` moved to the positional, `--foo_bar` spelled `--foo-bar`, argparse choices for
`--max-lora-rank`, and the engine-config checks that run after parsing. Real vLLM knows hundreds
of flags; the sim models the ones that change its behaviour and accepts (and logs as ignored) the
others of the vLLM version it follows. A flag that version does not know fails as argparse fails
there: exit status 2, "unrecognized arguments" (docs/vllm-behaviour.md).

The version comes from FLEETSPEC_SIM_VLLM_VERSION (the runtimes set it from the fleet's
`runtime.vllm_version`); the flag tables in catalog/data/vllm_serve_flags.json were dumped from each
version's own parser by scripts/dump-vllm-serve-flags.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
from collections.abc import Mapping, Sequence

from fleetspec.catalog import vllm_flags

PROG = "vllm serve"

VERSION_ENV = "FLEETSPEC_SIM_VLLM_VERSION"
DEFAULT_VERSION = "0.33.0"
# The releases whose behaviour the sim knows; a fleet naming another follows the nearest of them.
KNOWN_VERSIONS = ("0.32.0", "0.33.0")

# vllm/config/lora.py MaxLoRARanks.
MAX_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)
DTYPES = ("auto", "half", "float16", "bfloat16", "float", "float32")
LORA_DTYPES = ("auto", "bfloat16", "float16")
KV_CACHE_DTYPES = (
    "auto", "float16", "bfloat16", "fp8", "fp8_e4m3", "fp8_e5m2", "fp8_inc", "fp8_ds_mla",
    "nvfp4_ds_mla", "turboquant_k8v4", "turboquant_4bit_nc", "turboquant_k3v4_nc",
    "turboquant_3bit_nc", "octave_k3v4", "octave_k3v3", "octave_k3v3_compact", "ultraquant_4bit",
    "int4_per_token_head", "int8_per_token_head", "fp8_per_token_head", "nvfp4", "nvfp4_4over6",
)
# In-tree quantization methods of 0.33; bitsandbytes and gguf now need out-of-tree plugins.
QUANTIZATIONS = (
    "awq", "auto_awq", "fp8", "fbgemm_fp8", "fp_quant", "modelopt", "modelopt_fp4", "modelopt_mxfp8",
    "modelopt_mixed", "auto_gptq", "gptq", "gptq_marlin", "awq_marlin", "humming",
    "compressed-tensors", "experts_int8", "quark", "moe_wna16", "torchao", "inc", "mxfp4",
    "gpt_oss_mxfp4", "deepseek_v4_fp8", "online", "fp8_per_tensor", "fp8_per_block",
    "fp8_per_channel", "int8_per_channel_weight_only", "nvfp4_per_token", "mxfp8",
)
# Flags older vLLM accepted and 0.32/0.33 no longer know (vllm-facts §1.1); absent from both flag tables,
# so they fail like any unknown flag. Kept as a name for tests and docs.
REMOVED_FLAGS = frozenset({
    "--lora-extra-vocab-size", "--enable-lora-bias", "--no-enable-lora-bias", "--long-lora-scaling-factors",
})


def vllm_version(env: Mapping[str, str]) -> str:
    """The vLLM release the sim imitates: FLEETSPEC_SIM_VLLM_VERSION, mapped onto KNOWN_VERSIONS."""
    raw = (env.get(VERSION_ENV) or "").strip().removeprefix("v") or DEFAULT_VERSION
    if not re.fullmatch(r"\d+\.\d+(\.\d+)?", raw):
        raise ConfigError(f"{VERSION_ENV} must be a vLLM version such as 0.32 or 0.33.0, got {raw!r}.")
    wanted = tuple(int(part) for part in raw.split(".")[:2])
    for known in KNOWN_VERSIONS:
        if tuple(int(part) for part in known.split(".")[:2]) >= wanted:
            return known
    return KNOWN_VERSIONS[-1]


def known_flags(version: str) -> Mapping[str, int | str]:
    """Every option string of `vllm serve` in that release → the values it takes (0, 1, "?", "+")."""
    return vllm_flags.option_strings(version)

# vLLM's own default when neither the flag nor the model config gives a length; the sim falls back
# to it for models outside fleetspec's catalog.
FALLBACK_MAX_MODEL_LEN = 4096


class UsageError(Exception):
    """What argparse reports in vLLM: printed after a usage line, exit status 2."""

    exit_code = 2


class ConfigError(Exception):
    """A ValueError raised while vLLM builds its engine config: traceback, exit status 1."""

    exit_code = 1


@dataclasses.dataclass(frozen=True)
class LoraModule:
    """vLLM's LoRAModulePath (entrypoints/openai/models/protocol.py)."""

    name: str
    path: str
    base_model_name: str | None = None
    is_3d_lora_weight: bool = False


@dataclasses.dataclass(frozen=True)
class ServeArgs:
    model: str
    served_model_names: tuple[str, ...]
    host: str | None = None
    port: int = 8000
    tensor_parallel_size: int = 1
    pipeline_parallel_size: int = 1
    data_parallel_size: int = 1
    gpu_memory_utilization: float = 0.92
    max_model_len: int | None = None  # None: from the model config; -1: "auto"
    max_num_seqs: int | None = None
    max_num_batched_tokens: int | None = None
    dtype: str = "auto"
    quantization: str | None = None
    kv_cache_dtype: str = "auto"
    enforce_eager: bool = False
    enable_lora: bool = False
    max_loras: int = 1
    max_cpu_loras: int = 1  # resolved: None → max_loras, as LoRAConfig does
    max_lora_rank: int = 16
    lora_dtype: str = "auto"
    lora_target_modules: tuple[str, ...] | None = None
    fully_sharded_loras: bool = False
    lora_modules: tuple[LoraModule, ...] = ()
    api_keys: tuple[str, ...] = ()
    api_server_count: int | None = None
    allow_runtime_lora_updating: bool = False
    access_log: bool = True
    ignored: tuple[str, ...] = ()  # flags the sim accepted without modelling them
    vllm_version: str = DEFAULT_VERSION  # the release whose behaviour the sim follows

    @property
    def served_model_name(self) -> str:
        return self.served_model_names[0]


class _Parser(argparse.ArgumentParser):
    """argparse that raises instead of exiting, so callers decide how to print and exit."""

    def error(self, message: str):  # type: ignore[override]
        raise UsageError(message)


# ---------------------------------------------------------------------------------------------
# Value types (vllm/utils/argparse_utils.py)


def human_readable_int(value: str) -> int:
    """`1k` = 1000, `1K` = 1024, `25.6k` = 25600; decimals are refused with binary suffixes."""
    value = value.strip()
    match = re.fullmatch(r"(\d+(?:\.\d+)?)([kKmMgGtT])", value)
    if match:
        number, suffix = match.groups()
        if suffix.islower():
            return int(float(number) * 1000 ** ("kmgt".index(suffix) + 1))
        if "." in number:
            raise argparse.ArgumentTypeError(
                f"Decimals are not allowed with binary suffixes like {suffix}. "
                f"Did you mean to use {number}{suffix.lower()} instead?"
            )
        return int(number) * 1024 ** ("KMGT".index(suffix) + 1)
    return int(value)


def human_readable_int_or_auto(value: str) -> int:
    if value.strip().lower() in ("-1", "auto"):
        return -1
    return human_readable_int(value)



class _LoraModulesAction(argparse.Action):
    """vLLM's LoRAParserAction: `name=path` unless the item has a comma, then one JSON object."""

    def __call__(self, parser, namespace, values, option_string=None):
        modules: list[LoraModule] = []
        for item in values or []:
            if not item:
                continue
            if "=" in item and "," not in item:
                parts = item.split("=")
                if len(parts) != 2:
                    # vLLM's `name, path = item.split("=")` dies here with a ValueError.
                    raise ConfigError(f"too many values to unpack (expected 2) in --lora-modules item {item}")
                modules.append(LoraModule(parts[0], parts[1]))
                continue
            try:
                fields = json.loads(item)
            except json.JSONDecodeError:
                parser.error(f"Invalid JSON format for --lora-modules: {item}")
            modules.append(_module_from_json(parser, item, fields))
        setattr(namespace, self.dest, modules)


def _module_from_json(parser: _Parser, item: str, fields) -> LoraModule:
    if not isinstance(fields, dict):
        kind = type(fields).__name__
        parser.error(f"Invalid fields for --lora-modules: {item} - "
                     f"LoRAModulePath() argument after ** must be a mapping, not {kind}")
    try:
        return LoraModule(**fields)
    except TypeError as exc:
        detail = str(exc).replace("LoraModule.__init__()", "LoRAModulePath.__init__()")
        parser.error(f"Invalid fields for --lora-modules: {item} - {detail}")
    raise AssertionError("unreachable")


_BOOL = "fleetspec-bool"  # a registry name, so the 0.33 parser can swap in _EnableDisableAction


class _EnableDisableAction(argparse.BooleanOptionalAction):
    """0.33's EnableDisableAction (vllm/utils/argparse_utils.py:120-145): `--enable-x` also has
    `--disable-x` (and the reverse); `--no-enable-x` stays accepted."""

    _inverse = {"--enable-": "--disable-", "--disable-": "--enable-"}

    def __init__(self, option_strings, dest, *args, **kwargs):
        super().__init__(option_strings, dest, *args, **kwargs)
        inverses = [inverse + opt.removeprefix(prefix) for opt in option_strings
                    for prefix, inverse in self._inverse.items() if opt.startswith(prefix)]
        self._negative = {opt for opt in self.option_strings if opt not in option_strings} | set(inverses)
        self.option_strings = [*self.option_strings, *inverses]

    def __call__(self, parser, namespace, values, option_string=None):
        setattr(namespace, self.dest, option_string not in self._negative)


# ---------------------------------------------------------------------------------------------
# The parser


def build_parser(version: str = DEFAULT_VERSION) -> _Parser:
    p = _Parser(prog=PROG, allow_abbrev=False, add_help=True)
    p.register("action", _BOOL, _EnableDisableAction if version >= "0.33" else argparse.BooleanOptionalAction)
    p.add_argument("model_tag", nargs="?", default=None)
    p.add_argument("--model", dest="model_option")
    p.add_argument("--served-model-name", nargs="+")
    p.add_argument("--host")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--api-key", nargs="+")
    p.add_argument("--disable-uvicorn-access-log", action=_BOOL, default=False)
    p.add_argument("--api-server-count", "-asc", type=int)
    p.add_argument("--tensor-parallel-size", "-tp", type=int, default=1)
    p.add_argument("--pipeline-parallel-size", "-pp", type=int, default=1)
    p.add_argument("--data-parallel-size", "-dp", type=int, default=1)
    p.add_argument("--enable-expert-parallel", action="store_true")
    p.add_argument("--gpu-memory-utilization", "--device-memory-utilization", type=float, default=0.92)
    p.add_argument("--max-model-len", type=human_readable_int_or_auto)
    p.add_argument("--max-num-seqs", type=int)
    p.add_argument("--max-num-batched-tokens", type=human_readable_int)
    p.add_argument("--dtype", choices=DTYPES, default="auto")
    p.add_argument("--quantization", "-q", choices=QUANTIZATIONS)
    p.add_argument("--kv-cache-dtype", choices=KV_CACHE_DTYPES, default="auto")
    p.add_argument("--enforce-eager", action=_BOOL, default=False)
    p.add_argument("--enable-lora", action=_BOOL, default=False)
    p.add_argument("--max-loras", type=int, default=1)
    p.add_argument("--max-cpu-loras", type=int)
    p.add_argument("--max-lora-rank", type=int, choices=MAX_LORA_RANKS, default=16)
    p.add_argument("--lora-dtype", choices=LORA_DTYPES, default="auto")
    p.add_argument("--lora-target-modules", nargs="+")
    p.add_argument("--fully-sharded-loras", action=_BOOL, default=False)
    p.add_argument("--lora-modules", nargs="+", action=_LoraModulesAction)
    return p


def parse(argv: Sequence[str], env: Mapping[str, str] | None = None) -> ServeArgs:
    """Parse `serve MODEL [flags]` (the argv after the program name) like vLLM 0.33 does.

    Raises UsageError for what argparse rejects and ConfigError for what the engine config rejects.
    """
    env = os.environ if env is None else env
    version = vllm_version(env)
    args = list(argv)
    if not args or args[0] != "serve":
        raise UsageError("the fleetspec sim implements only `vllm serve MODEL [flags]`")
    parser = build_parser(version)
    args = _move_model_option(args)
    if "--config" in args:
        args = _pull_args_from_config(parser, args)
    args = [_dashes(arg) for arg in args]
    namespace, extras = parser.parse_known_args(args[1:])
    ignored = _check_extras(extras, known_flags(version))
    return dataclasses.replace(_to_serve_args(namespace, ignored, env), vllm_version=version)


def _move_model_option(args: list[str]) -> list[str]:
    """`--model X` becomes the positional (vLLM warns it will be removed)."""
    for index, arg in enumerate(args):
        if arg == "--model" or arg.startswith("--model="):
            if arg == "--model":
                if index + 1 >= len(args) or args[index + 1].startswith("-"):
                    raise UsageError("argument --model: expected one argument")
                tag, rest = args[index + 1], index + 2
            else:
                tag, rest = arg.removeprefix("--model="), index + 1
            return ["serve", tag, *args[1:index], *args[rest:]]
    names_model = any(re.match(r"^--served[-_]model[-_]name(=.+|$)", a) for a in args)
    if len(args) > 1 and args[1].startswith("-") and "--config" not in args and names_model:
        raise ConfigError(
            "`model` should be provided as the first positional argument when using `vllm serve`. "
            "i.e. `vllm serve <model> --<arg> <value>`."
        )
    return args


def _dashes(arg: str) -> str:
    """`--max_loras=2` → `--max-loras=2`: vLLM accepts underscores in flag names."""
    if not arg.startswith("--"):
        return arg
    key, sep, value = arg.partition("=")
    head, dot, tail = key[2:].partition(".")
    return "--" + head.replace("_", "-") + dot + tail + sep + value


def _check_extras(extras: list[str], known: Mapping[str, int | str]) -> tuple[str, ...]:
    """Flags of this vLLM version the sim does not model are ignored (with the values they take);
    anything else fails as `unrecognized arguments`, listing every such token as argparse does."""
    unknown: list[str] = []
    ignored: list[str] = []
    index = 0
    while index < len(extras):
        token = extras[index]
        index += 1
        name, has_value = token.split("=", 1)[0], "=" in token
        name = name.split(".", 1)[0]  # `--compilation-config.mode 3`: vLLM's dotted JSON keys
        takes = known.get(name) if token.startswith("-") else None
        if takes is None:
            unknown.append(token)
            continue
        ignored.append(token)
        if has_value or takes == 0:
            continue
        count = 1 if takes in (1, "?") else (len(extras) if takes == "+" else int(takes))
        while count and index < len(extras) and not _looks_like_flag(extras[index]):
            ignored.append(extras[index])
            index += 1
            count -= 1
    if unknown:
        raise UsageError(f"unrecognized arguments: {' '.join(unknown)}")
    return tuple(ignored)


def _looks_like_flag(token: str) -> bool:
    return token.startswith("-") and not re.fullmatch(r"-\d+(\.\d+)?", token)


def _pull_args_from_config(parser: _Parser, args: list[str]) -> list[str]:
    """Insert the YAML file's flags right after `serve [MODEL]`, so the command line wins."""
    if args.count("--config") > 1:
        raise ConfigError("More than one config file specified!")
    index = args.index("--config")
    if index == len(args) - 1:
        raise ConfigError("No config file specified! Please check your command-line arguments.")
    config_args = _load_config_file(parser, args[index + 1])
    model_in_cli = len(args) > 1 and not args[1].startswith("-")
    if not model_in_cli and "--model" not in config_args:
        raise ConfigError("No model specified! Please specify model either as a positional argument or in a config file.")
    if model_in_cli:
        return args[:2] + config_args + args[2:index] + args[index + 2:]
    merged = args[:1] + config_args + args[1:index] + args[index + 2:]
    return _move_model_option(merged)


def _load_config_file(parser: _Parser, file_path: str) -> list[str]:
    import yaml  # only `--config` needs it; the sim's start-up stays short

    extension = file_path.split(".")[-1]
    if extension not in ("yaml", "yml"):
        raise ConfigError(f"Config file must be of a yaml/yml type. {extension} supplied")
    try:
        with open(file_path, encoding="utf-8") as handle:
            config = yaml.safe_load(handle) or {}
    except OSError as exc:
        raise ConfigError(f"Unable to read the config file at {file_path}. Check path correctness ({exc})") from None
    out: list[str] = []
    for key, value in config.items():
        if isinstance(value, bool):
            if value:
                out.append(f"--{key}")
            elif f"--no-{key}" in parser._option_string_actions:
                out.append(f"--no-{key}")
        elif isinstance(value, list):
            if value:
                out += [f"--{key}", *(str(item) for item in value)]
        elif isinstance(value, dict):
            out += [f"--{key}", json.dumps(value)]
        else:
            out += [f"--{key}", str(value)]
    return out


# ---------------------------------------------------------------------------------------------
# Engine-config checks that run after argparse


def _to_serve_args(ns: argparse.Namespace, ignored: tuple[str, ...], env: Mapping[str, str]) -> ServeArgs:
    model = ns.model_tag
    if not model:
        raise UsageError("the following arguments are required: model_tag")
    runtime_updates = env.get("VLLM_ALLOW_RUNTIME_LORA_UPDATING", "0").strip().lower() in ("1", "true")
    api_server_count = ns.api_server_count
    if runtime_updates and (api_server_count or ns.data_parallel_size) > 1:
        raise ConfigError("VLLM_ALLOW_RUNTIME_LORA_UPDATING cannot be used with api_server_count > 1")
    _check_range("CacheConfig", "gpu_memory_utilization", ns.gpu_memory_utilization, low=0.0, high=1.0)
    max_cpu_loras = ns.max_cpu_loras if ns.max_cpu_loras and ns.max_cpu_loras > 0 else None
    if ns.enable_lora:
        _check_range("LoRAConfig", "max_loras", ns.max_loras, low=1)
        if max_cpu_loras is not None and max_cpu_loras < ns.max_loras:
            raise ConfigError(f"max_cpu_loras ({max_cpu_loras}) must be >= max_loras ({ns.max_loras}).")
    api_keys = tuple(ns.api_key or ([env["VLLM_API_KEY"]] if env.get("VLLM_API_KEY") else []))
    return ServeArgs(
        model=model,
        served_model_names=tuple(ns.served_model_name or [model]),
        host=ns.host,
        port=ns.port,
        tensor_parallel_size=ns.tensor_parallel_size,
        pipeline_parallel_size=ns.pipeline_parallel_size,
        data_parallel_size=ns.data_parallel_size,
        gpu_memory_utilization=ns.gpu_memory_utilization,
        max_model_len=ns.max_model_len,
        max_num_seqs=ns.max_num_seqs,
        max_num_batched_tokens=ns.max_num_batched_tokens,
        dtype=ns.dtype,
        quantization=ns.quantization,
        kv_cache_dtype=ns.kv_cache_dtype,
        enforce_eager=ns.enforce_eager,
        enable_lora=ns.enable_lora,
        max_loras=ns.max_loras,
        max_cpu_loras=max_cpu_loras or ns.max_loras,
        max_lora_rank=ns.max_lora_rank,
        lora_dtype=ns.lora_dtype,
        lora_target_modules=tuple(ns.lora_target_modules) if ns.lora_target_modules else None,
        fully_sharded_loras=ns.fully_sharded_loras,
        lora_modules=tuple(ns.lora_modules or ()),
        api_keys=api_keys,
        api_server_count=api_server_count,
        allow_runtime_lora_updating=runtime_updates,
        access_log=not ns.disable_uvicorn_access_log,
        ignored=ignored,
    )


def _check_range(config: str, field: str, value: float, low: float, high: float | None = None) -> None:
    """The pydantic message vLLM's config dataclasses produce for a Field(gt/ge/le) violation."""
    if config == "CacheConfig" and value <= low:
        rule, kind = f"greater than {low:g}", "greater_than"
    elif config != "CacheConfig" and value < low:
        rule, kind = f"greater than or equal to {low:g}", "greater_than_equal"
    elif high is not None and value > high:
        rule, kind = f"less than or equal to {high:g}", "less_than_equal"
    else:
        return
    raise ConfigError(
        f"1 validation error for {config}\n{field}\n  Input should be {rule} "
        f"[type={kind}, input_value={value!r}, input_type={type(value).__name__}]"
    )
