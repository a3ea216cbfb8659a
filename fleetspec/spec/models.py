"""The fleet.yaml contract: pydantic models, strict about unknown keys.

These models only check what one field (or one object) can know on its own. Rules that relate
several parts of the file (a rule naming a declared specialist, ports not colliding, ranks within a
server's limits) live in `spec.checks`, which reports them as located diagnostics.

The JSON Schema in `schemas/fleet.schema.json` is generated from these models
(`fleetspec schema`), so field descriptions here are what editors show users.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Annotated, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    StrictBool,
    Tag,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from fleetspec.spec import hosting, regex

# vLLM 0.33 `MaxLoRARanks` (vllm/config/lora.py); 0.11 lacked 1. Anything else fails argparse.
ALLOWED_MAX_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)

# `--quantization` choices in vLLM 0.33 (model_executor/layers/quantization/__init__.py), plus
# "none". bitsandbytes and gguf moved to out-of-tree plugins; they are kept so such fleets can be
# described, and `spec.checks` warns that they need the plugin.
QUANTIZATIONS = (
    "none", "awq", "auto_awq", "awq_marlin", "gptq", "auto_gptq", "gptq_marlin", "fp8",
    "fbgemm_fp8", "fp_quant", "modelopt", "modelopt_fp4", "modelopt_mxfp8", "modelopt_mixed",
    "humming", "compressed-tensors", "experts_int8", "quark", "moe_wna16", "torchao", "inc",
    "mxfp4", "gpt_oss_mxfp4", "deepseek_v4_fp8", "online", "fp8_per_tensor", "fp8_per_block",
    "fp8_per_channel", "int8_per_channel_weight_only", "nvfp4_per_token", "mxfp8",
    "bitsandbytes", "gguf",
)
Quantization = Literal[QUANTIZATIONS]  # type: ignore[valid-type]

ModelDtype = Literal["auto", "half", "float16", "bfloat16", "float", "float32"]
KvCacheDtype = Literal[
    "auto", "float16", "bfloat16", "fp8", "fp8_e4m3", "fp8_e5m2", "fp8_inc", "fp8_ds_mla",
    "nvfp4_ds_mla", "int8_per_token_head", "fp8_per_token_head", "int4_per_token_head", "nvfp4",
]
LoraDtype = Literal["auto", "bfloat16", "float16"]

NAME_PATTERN = r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$"  # DNS label: becomes container/k8s names
ADAPTER_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"  # vLLM served name, no '@' or '/'
VERSION_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,63}$"
ENV_NAME_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]*$"
QUANTITY_PATTERN = r"^[0-9]+(\.[0-9]+)?(Ki|Mi|Gi|Ti)$"  # a Kubernetes storage quantity
SECRET_REF = re.compile(r"\$\{[A-Za-z_][A-Za-z0-9_]*\}")
SECRET_ONLY = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")  # fullmatch: a value that is one reference
# Env names whose values are credentials: a literal value there is warned about, and on Kubernetes
# it goes into a Secret rather than the Deployment.
# The credential word ends the name (HF_TOKEN, AWS_SECRET_ACCESS_KEY, DB_PASSWORD): a name that only
# contains one is about something else (FLEETSPEC_SIM_TOKEN_SECONDS, MAX_TOKENS, TOKENIZERS_PARALLELISM).
SECRET_NAME = re.compile(r"(?:^|_)(TOKEN|SECRET|PASSWORD|PASSWD|API_KEY|ACCESS_KEY|SECRET_KEY|PRIVATE_KEY|CREDENTIALS)$",
                         re.IGNORECASE)
# ...and the value must look like one: a number, a yes/no word or a file path is a setting or says
# where a credential lives (GOOGLE_APPLICATION_CREDENTIALS=/secrets/sa.json), not the credential.
_NOT_CREDENTIAL_VALUE = re.compile(
    r"^(?:[+-]?\d+(?:\.\d+)?|true|false|yes|no|on|off|none|null|(?:/|\./|\.\./|~/)\S*)$", re.IGNORECASE)
_REDIS_PASSWORD = re.compile(r"^rediss?://[^/@]*:([^/@]+)@")


def literal_secret(key: str, value: str) -> bool:
    """An env entry that is a credential held literally instead of as ${VAR}: named like one
    (SECRET_NAME) and with a value shaped like one (not a number, yes/no word or path)."""
    value = (value or "").strip()
    return bool(SECRET_NAME.search(key) and value and not SECRET_REF.search(value)
                and not _NOT_CREDENTIAL_VALUE.match(value))


def literal_redis_password(url: str | None) -> bool:
    """A redis:// URL with a password written out (`redis://:hunter2@host`), not as ${VAR}."""
    match = _REDIS_PASSWORD.match(url or "")
    return bool(match and not SECRET_REF.search(match.group(1)))


def secret_reference(value: str | None, field: str, example: str) -> str | None:
    """A field that may only name a secret (`${VAR}`): a literal key would end up in files and logs."""
    if value is not None and not SECRET_ONLY.fullmatch(value):
        raise SpecValueError(
            f"{field} must be a reference to an environment variable such as ${{{example}}}, not the key itself",
            f"write {field}: ${{{example}}} and export {example} where fleetspec and the fleet run",
        )
    return value

# ---------------------------------------------------------------------------------------------
# Numbers and their limits
#
# Every number and list in the file has an upper bound, so no stage can be made to do work (or hold
# memory) proportional to a number nobody checked: `count: 10000000000` is refused here, located, with
# the reason, before the planner counts anything. The limits are sized for the largest real fleets
# (10,000+ specialists, 1,000+ GPUs) with room to spare; docs/spec.md ("Limits") lists them all.


def _not_bool(wanted: str):
    def check(value):
        # pydantic would take `true` as 1 (bool is an int in Python); in a fleet file it is a mistake.
        if isinstance(value, bool):
            raise SpecValueError(f"expected {wanted}, got `{str(value).lower()}`, which YAML reads as a boolean",
                                 f"write {wanted}")
        return value
    return BeforeValidator(check)


Int = Annotated[int, _not_bool("a whole number")]
Float = Annotated[float, _not_bool("a number")]


def Count(le: int, ge: int = 1):  # noqa: N802 - reads as a type in annotations
    """A whole number in [ge, le]; never a boolean."""
    return Annotated[int, _not_bool("a whole number"), Field(ge=ge, le=le)]


MAX_SPECIALISTS = 20_000
MAX_SERVERS = 1_000
MAX_REPLICAS = 4_096  # per server
MAX_GPUS_PER_REPLICA = 1_024  # data x tensor x pipeline parallel
MAX_TOTAL_REPLICAS = 8_192  # whole fleet: each replica is a process or container with its own port
MAX_GPUS_PER_GROUP = 4_096
MAX_TOTAL_GPUS = 4_096
MAX_TOKENS = 16_777_216  # 2^24: context lengths and batch token budgets
MAX_LIST = 1_000  # keywords, examples, env entries, extra_args and other per-entry lists
PATH_LENGTH = 4_096  # Linux PATH_MAX

# Why each bound is what it is, keyed by field name: the loader appends it to an out-of-range error.
LIMIT_REASONS: dict[str, str] = {
    "specialists": "twice the 10,000-specialist fleets fleetspec is measured with; every specialist is "
                   "planned, compiled and routed",
    "servers": "each server is a pool of identical replicas, and a fleet file describes one fleet",
    "replicas": "each replica is planned, placed and started one by one; a larger pool is several servers",
    "count": "no host inventory is larger; describe more GPUs as several groups",
    "gpus": "a GPU inventory is a few groups of identical cards, each with a count",
    "ids": "a CUDA device index is small; this guards against typos that would make a huge list",
    "memory_gib": "no accelerator or host offers more memory",
    "tensor_parallel_size": "no replica spans more GPUs",
    "pipeline_parallel_size": "no replica spans more GPUs",
    "data_parallel_size": "no replica spans more GPUs",
    "max_model_len": "no model offers a longer context (2^24 tokens)",
    "max_position_embeddings": "no model offers a longer context (2^24 tokens)",
    "sliding_window": "no model offers a longer context (2^24 tokens)",
    "max_num_batched_tokens": "a batch never holds more tokens (2^24)",
    "max_num_seqs": "vLLM never schedules more sequences in one batch",
    "max_loras": "each GPU slot preallocates LoRA buffers; no GPU holds more",
    "max_cpu_loras": "more adapters than a fleet may declare",
    "num_clusters": "cluster ids are numbers below it; clustering mines far fewer",
    "priority": "priorities only order specialists; a million levels is plenty",
    "alpha": "LoRA alpha is a scale of a few units to a few thousand",
    "quantization_group_size": "quantized checkpoints use groups of 32 to 1,024 weights",
    "rules": "rules are tried in order for every prompt",
    "splits": "one split per specialist at most",
    "versions": "versions kept deployable for rollbacks and canaries; older ones can be removed",
    "keywords": "keywords are matched per prompt; a thousand per entry is plenty",
    "domains": "domains describe a specialist in a few words",
    "extensions": "file extensions of one language or format",
    "examples": "examples are embedded when the router starts",
    "env": "an engine's environment holds a handful of settings",
    "extra_args": "extra flags are passed to vLLM one by one",
    "target_modules": "a model has a few dozen module names",
    "adapter_roots": "adapter roots are a few directories mounted into every engine",
    "architectures": "config.json lists one architecture, rarely a few",
    "weights": "a split divides 100 percent between versions",
    "hidden_size": "no published model comes within 10× of it; the memory model multiplies these",
    "intermediate_size": "no published model comes within 10× of it; the memory model multiplies these",
    "moe_intermediate_size": "no published model comes within 10× of it; the memory model multiplies these",
    "num_hidden_layers": "no published model comes within 10× of it; the memory model multiplies these",
    "num_attention_heads": "no published model comes within 10× of it; the memory model multiplies these",
    "num_key_value_heads": "no published model comes within 10× of it; the memory model multiplies these",
    "head_dim": "no published model comes within 10× of it; the memory model multiplies these",
    "vocab_size": "no published model comes within 10× of it; the memory model multiplies these",
    "num_parameters": "no published model comes within 10× of it (10^15 parameters)",
    "num_local_experts": "no published model comes within 10× of it; the memory model multiplies these",
    "num_experts": "no published model comes within 10× of it; the memory model multiplies these",
    "num_experts_per_tok": "no published model comes within 10× of it; the memory model multiplies these",
    "kv_lora_rank": "no published model comes within 10× of it; the memory model multiplies these",
    "q_lora_rank": "no published model comes within 10× of it; the memory model multiplies these",
    "qk_rope_head_dim": "no published model comes within 10× of it; the memory model multiplies these",
    "qk_nope_head_dim": "no published model comes within 10× of it; the memory model multiplies these",
    "v_head_dim": "no published model comes within 10× of it; the memory model multiplies these",
    "n_routed_experts": "no published model comes within 10× of it; the memory model multiplies these",
    "n_shared_experts": "no published model comes within 10× of it; the memory model multiplies these",
    "shared_expert_intermediate_size": "no published model comes within 10× of it; the memory model multiplies these",
    "first_k_dense_replace": "no published model comes within 10× of it; the memory model multiplies these",
    "sliding_window_pattern": "a pattern repeats every few layers; no model has more layers",
    "layer_types": "one entry per decoder layer; no model has more layers",
    "patch_size": "no published vision encoder comes within 10× of it",
    "image_size": "no published vision encoder comes within 10× of it",
    "num_channels": "images have a few colour channels",
    "rank": "LoRA ranks go up to 512 in vLLM; anything larger cannot be served",
}
# Text fields: longer values are refused with the field's own reason, or this one.
LENGTH_REASON = "no real value is this long; fleetspec bounds every text so no input can exhaust memory"

Text = Annotated[str, Field(max_length=1_024)]  # ids, names, images, hosts: short by nature
LongText = Annotated[str, Field(max_length=8_192)]  # prompts given as examples, rule regexes
PathText = Annotated[str, Field(min_length=1, max_length=PATH_LENGTH)]
Term = Annotated[str, Field(max_length=256)]  # one keyword, domain or module name

Name = Annotated[str, Field(pattern=NAME_PATTERN, description="Lower-case DNS label (a-z, 0-9, -).")]
AdapterName = Annotated[str, Field(pattern=ADAPTER_NAME_PATTERN)]
Version = Annotated[str, Field(pattern=VERSION_PATTERN)]
Port = Annotated[int, _not_bool("a whole number"), Field(ge=1, le=65535)]
PositiveInt = Count(2**31 - 1)
# Only YAML's true/false: `yes`, `on` and `1` are text or a number in YAML 1.2, never a quiet True.
Bool = StrictBool


class SpecValueError(ValueError):
    """A validator's complaint with a fix; the loader shows `hint` under the message."""

    def __init__(self, message: str, hint: str = ""):
        super().__init__(message)
        self.hint = hint


# pydantic lists every problem of a file, which for a hostile one is millions (each held in memory):
# after this many, each further failing object is reported as one line (`TOO_MANY_ERRORS`).
ERROR_BUDGET = 1_000
TOO_MANY_ERRORS = "more problems here are not listed: the file already has over 1,000"


class Strict(BaseModel):
    """Base of every spec model: a typo is an error, never a silently ignored key."""

    # allow_inf_nan: `.inf` and `.nan` are YAML numbers, but no field of a fleet means them.
    model_config = ConfigDict(extra="forbid", frozen=True, str_strip_whitespace=False, allow_inf_nan=False)

    @model_validator(mode="wrap")
    @classmethod
    def _bounded_errors(cls, data, handler, info: ValidationInfo):
        # An object with thousands of unknown keys would be thousands of errors: one says it all.
        if isinstance(data, dict) and len(data) > len(cls.model_fields) + 32:
            raise SpecValueError(f"this mapping has {len(data):,} keys, but it takes at most {len(cls.model_fields)}",
                                 "remove the keys that are not fields here")
        try:
            return handler(data)
        except ValidationError as exc:
            budget = info.context  # the loader passes a dict; code building models directly does not
            if budget is None:
                raise
            budget["errors"] = budget.get("errors", 0) + exc.error_count()
            if budget["errors"] > ERROR_BUDGET:
                raise SpecValueError(TOO_MANY_ERRORS, "fix the problems listed and validate again") from None
            raise


# ---------------------------------------------------------------------------------------------
# Base model


MAX_LAYERS = 4_096
QuantScope = Literal["attention", "mlp", "experts", "shared_experts", "vision"]
# linear_attention: Qwen3.5/3.6 Gated DeltaNet layers (a recurrent state, no KV per token).
LayerType = Literal["full_attention", "sliding_attention", "linear_attention"]
# Nemotron-H hybrid_override_pattern: one character per decoder layer (M Mamba2, * attention, - MLP).
HYBRID_PATTERN_CHARS = frozenset("M*-")


class VisionConfig(Strict):
    """config.json `vision_config` of a multimodal model: the vision tower vLLM loads with the weights."""

    hidden_size: Count(1_048_576)
    intermediate_size: Count(4_194_304)
    num_hidden_layers: Count(MAX_LAYERS)
    patch_size: Count(4_096) | None = Field(None, description="Pixels per patch side (14 for SigLIP/CLIP).")
    image_size: Count(65_536) | None = Field(None, description="Input resolution (learned position table).")
    num_channels: Count(16) = 3
    num_parameters: Count(10**15) | None = Field(
        None, description="The tower's published parameter count (with its projector); derived when absent.")
    spatial_merge_size: Count(64) | None = Field(
        None, description="Qwen2-VL family: patches merged per side into one language-model token (2).")
    temporal_patch_size: Count(64) | None = Field(
        None, description="Qwen2-VL family: video frames per temporal patch (2; one image is padded to it).")
    max_pixels: Count(10**10) | None = Field(
        None, description="Qwen2-VL family: the image processor's max_pixels (preprocessor_config.json), the "
                          "size of vLLM's dummy profile image and video frames.")


class Architecture(Strict):
    """Facts from the model's config.json (same key names), for models outside the catalog."""

    model_type: Text | None = Field(None, description="config.json model_type, e.g. llama, qwen2.")
    architectures: list[Text] | None = Field(
        None, max_length=16, description="config.json architectures, e.g. [LlamaForCausalLM].")
    hidden_size: Count(1_048_576)
    intermediate_size: Count(4_194_304)
    num_hidden_layers: Count(MAX_LAYERS)
    num_attention_heads: Count(16_384)
    num_key_value_heads: Count(16_384) | None = Field(None, description="Defaults to num_attention_heads (MHA).")
    head_dim: Count(65_536) | None = Field(None, description="Defaults to hidden_size / num_attention_heads.")
    vocab_size: Count(16_777_216)
    tie_word_embeddings: Bool = False
    num_parameters: Count(10**15) | None = Field(
        None, description="Published total parameter count; trusted over the shapes (the derived count is "
                          "reported beside it). Derived when absent.")
    mlp: Literal["gated", "plain"] | None = Field(
        None, description="Dense MLP shape: gated (gate/up/down, Llama) or plain (two matrices fc1/fc2, phi-2, "
                          "GPT-2). The family's when absent, else gated.")
    sliding_window: Count(MAX_TOKENS) | None = None
    use_sliding_window: Bool | None = Field(None, description="Qwen2 configs: false means sliding_window is unused.")
    sliding_window_pattern: Count(MAX_LAYERS) | None = Field(
        None, description="Gemma-3: every Nth layer is global, the others use sliding_window.")
    layer_types: list[LayerType] | None = Field(
        None, max_length=MAX_LAYERS,
        description="Attention type of each decoder layer (full_attention / sliding_attention), as config.json lists it.")
    max_position_embeddings: Count(MAX_TOKENS) | None = None
    # MoE
    num_local_experts: Count(65_536) | None = Field(None, description="MoE experts (Mixtral naming).")
    num_experts: Count(65_536) | None = Field(None, description="MoE experts (Qwen naming).")
    n_routed_experts: Count(65_536) | None = Field(None, description="MoE experts (DeepSeek naming).")
    num_experts_per_tok: Count(1_024) | None = None
    moe_intermediate_size: Count(4_194_304) | None = None
    n_shared_experts: Count(1_024) | None = Field(
        None, description="DeepSeek: shared experts per MoE layer, each moe_intermediate_size wide.")
    shared_expert_intermediate_size: Count(4_194_304, ge=0) | None = Field(
        None, description="Qwen-MoE: width of the shared expert of each MoE layer (0: none).")
    first_k_dense_replace: Count(MAX_LAYERS, ge=0) | None = Field(
        None, description="DeepSeek: leading layers with a dense MLP of intermediate_size instead of experts.")
    # MLA (DeepSeek-style attention)
    kv_lora_rank: Count(65_536) | None = None
    q_lora_rank: Count(65_536) | None = None
    qk_rope_head_dim: Count(65_536) | None = None
    qk_nope_head_dim: Count(65_536) | None = None
    v_head_dim: Count(65_536) | None = None
    # Hybrid attention + state-space models (issue #18 item 4)
    hybrid_override_pattern: str | None = Field(
        None, max_length=MAX_LAYERS,
        description="Nemotron-H: one character per decoder layer, M Mamba2 mixer, * attention, - MLP.")
    mamba_num_heads: Count(65_536) | None = Field(None, description="Mamba2 heads (Nemotron-H).")
    mamba_head_dim: Count(65_536) | None = None
    n_groups: Count(65_536) | None = Field(None, description="Mamba2 B/C groups.")
    ssm_state_size: Count(65_536) | None = None
    conv_kernel: Count(1_024) | None = Field(None, description="Mamba2 causal conv width.")
    use_conv_bias: Bool = True
    mamba_ssm_cache_dtype: Literal["float32", "float16", "bfloat16"] | None = Field(
        None, description="Nemotron-H config key: dtype of the SSM state vLLM caches.")
    linear_num_key_heads: Count(65_536) | None = Field(None, description="Gated DeltaNet key heads (Qwen3.5).")
    linear_num_value_heads: Count(65_536) | None = None
    linear_key_head_dim: Count(65_536) | None = None
    linear_value_head_dim: Count(65_536) | None = None
    linear_conv_kernel_dim: Count(1_024) | None = None
    mamba_ssm_dtype: Literal["float32", "float16", "bfloat16"] | None = Field(
        None, description="Qwen3.5 config key: dtype of the Gated DeltaNet recurrent state.")
    attn_output_gate: Bool = Field(False, description="Qwen3.5: q_proj also outputs a gate (twice the width).")
    partial_rotary_factor: float | None = Field(None, gt=0, le=1, description="Share of head_dim that is rotated.")
    mtp_num_hidden_layers: Count(64, ge=0) | None = Field(
        None, description="Multi-token-prediction layers in the checkpoint (loaded only for MTP speculation).")
    # Multimodal
    vision_config: VisionConfig | None = Field(
        None, description="config.json vision_config: the vision tower's hidden_size, intermediate_size, "
                          "num_hidden_layers (patch_size, image_size).")
    quantization_scope: list[QuantScope] | None = Field(
        None, max_length=5,
        description="Module kinds the checkpoint's quantization covers (attention, mlp, experts, shared_experts, "
                    "vision): what quantization_config.modules_to_not_convert leaves. Default: the method's own "
                    "scope (MXFP4: experts only; others: every decoder linear layer, not the vision tower).")

    @field_validator("layer_types")
    @classmethod
    def _one_type_per_layer(cls, value, info: ValidationInfo):
        layers = info.data.get("num_hidden_layers")
        if value is not None and layers is not None and len(value) != layers:
            raise SpecValueError(f"layer_types lists {len(value)} layer(s) but num_hidden_layers is {layers}",
                                 "copy layer_types from config.json unchanged: one entry per decoder layer")
        if value is not None and "sliding_attention" in value and not info.data.get("sliding_window"):
            raise SpecValueError("layer_types names sliding_attention layers but sliding_window is not set",
                                 "add sliding_window (tokens) from config.json")
        return value

    @field_validator("sliding_window_pattern")
    @classmethod
    def _pattern_needs_window(cls, value, info: ValidationInfo):
        if value is not None and not info.data.get("sliding_window"):
            raise SpecValueError("sliding_window_pattern is set but sliding_window is not",
                                 "add sliding_window (tokens) from config.json, or drop sliding_window_pattern")
        return value

    @field_validator("n_shared_experts", "shared_expert_intermediate_size", "first_k_dense_replace")
    @classmethod
    def _needs_experts(cls, value, info: ValidationInfo):
        data = info.data
        if value and not (data.get("num_local_experts") or data.get("num_experts") or data.get("n_routed_experts")):
            raise SpecValueError(f"{info.field_name} describes a mixture of experts, but no expert count is set",
                                 "add num_experts (or n_routed_experts / num_local_experts) from config.json")
        if info.field_name == "first_k_dense_replace" and value and value > data.get("num_hidden_layers", value):
            raise SpecValueError(f"first_k_dense_replace ({value}) is more than num_hidden_layers "
                                 f"({data.get('num_hidden_layers')})", "copy it from config.json")
        return value

    @field_validator("quantization_scope")
    @classmethod
    def _scope_exists(cls, value, info: ValidationInfo):
        if value is None:
            return value
        data = info.data
        moe = data.get("num_local_experts") or data.get("num_experts") or data.get("n_routed_experts")
        shared = data.get("n_shared_experts") or data.get("shared_expert_intermediate_size")
        missing = {"experts": not moe, "shared_experts": not shared, "vision": data.get("vision_config") is None}
        absent = [kind for kind in value if missing.get(kind)]
        if absent:
            raise SpecValueError(f"quantization_scope names {', '.join(absent)}, which this architecture does not have",
                                 "list only module kinds the model has (attention, mlp, experts, shared_experts, "
                                 "vision)")
        if len(set(value)) != len(value):
            raise SpecValueError("quantization_scope names a module kind twice", "list each kind once")
        return value

    @field_validator("hybrid_override_pattern")
    @classmethod
    def _pattern_per_layer(cls, value, info: ValidationInfo):
        layers = info.data.get("num_hidden_layers")
        if value is None:
            return value
        if set(value) - HYBRID_PATTERN_CHARS:
            raise SpecValueError(f"hybrid_override_pattern has {''.join(sorted(set(value) - HYBRID_PATTERN_CHARS))!r}, "
                                 "which the planner does not model (E: MoE blocks)",
                                 "copy it from config.json; only M (Mamba2), * (attention) and - (MLP) are planned")
        if layers is not None and len(value) != layers:
            raise SpecValueError(f"hybrid_override_pattern has {len(value)} layer(s) but num_hidden_layers is {layers}",
                                 "copy hybrid_override_pattern from config.json unchanged: one character per layer")
        return value

    @model_validator(mode="after")
    def _state_shapes_given(self) -> Architecture:
        """A hybrid layout needs its state shapes: the planner sizes the state from them."""
        needs: dict[str, tuple[str, ...]] = {}
        if self.hybrid_override_pattern and "M" in self.hybrid_override_pattern:
            needs["hybrid_override_pattern"] = ("mamba_num_heads", "mamba_head_dim", "n_groups", "ssm_state_size",
                                                "conv_kernel")
        if self.layer_types and "linear_attention" in self.layer_types:
            needs["layer_types"] = ("linear_num_key_heads", "linear_num_value_heads", "linear_key_head_dim",
                                    "linear_value_head_dim", "linear_conv_kernel_dim")
        for field, keys in needs.items():
            missing = [k for k in keys if getattr(self, k) is None]
            if missing:
                raise SpecValueError(f"{field} names state-space layers but {', '.join(missing)} is not set",
                                     "copy the state shapes from config.json")
        if self.hybrid_override_pattern and self.layer_types:
            raise SpecValueError("both hybrid_override_pattern and layer_types are set",
                                 "keep the one config.json has")
        return self

    @model_validator(mode="after")
    def _plain_mlp_is_dense(self) -> Architecture:
        if self.mlp == "plain" and self.routed_experts:
            raise SpecValueError("mlp: plain describes a dense two-matrix MLP, but this architecture has experts",
                                 "drop `mlp` for a mixture-of-experts model (its experts are gated)")
        return self

    @property
    def routed_experts(self) -> int:
        return self.num_local_experts or self.num_experts or self.n_routed_experts or 0

    @property
    def kv_heads(self) -> int:
        return self.num_key_value_heads or self.num_attention_heads

    @property
    def attention_head_dim(self) -> int:
        return self.head_dim or self.hidden_size // self.num_attention_heads


class BaseModelSpec(Strict):
    id: str = Field(min_length=1, max_length=PATH_LENGTH,
                    description="Hugging Face id (org/name) or a local directory with config.json.")
    revision: Text | None = Field(None, description="Hugging Face revision (branch, tag or commit).")
    quantization: Quantization = Field("none", description="Weight quantization; 'none' for bf16/fp16 checkpoints.")
    quantization_group_size: Count(65_536) | None = Field(
        None, description="Group size of AWQ/GPTQ checkpoints (128 when not given); for bitsandbytes the "
                          "weights per absmax block (64 when not given)."
    )
    quantization_skip_modules: list[Annotated[str, Field(min_length=1, max_length=256)]] | None = Field(
        None, max_length=4_096,
        description="Modules the checkpoint keeps unquantized, as its quantization_config lists them "
                    "(bitsandbytes: llm_int8_skip_modules, e.g. Unsloth's dynamic 4-bit "
                    "[lm_head, model.layers.1.mlp]); matched as vLLM's is_layer_skipped_bnb does: one "
                    "name component (mlp, o_proj) or a dotted prefix (model.layers.1.mlp).")
    bnb_4bit_use_double_quant: Bool | None = Field(
        None, description="bitsandbytes checkpoints: quantization_config.bnb_4bit_use_double_quant (uint8 "
                          "absmax, before vLLM 0.10). Default: true, as vLLM quantizes in flight.")
    dtype: ModelDtype = "auto"
    kv_cache_dtype: KvCacheDtype = "auto"
    max_model_len: Count(MAX_TOKENS) | None = Field(
        None, description="Context length every server must serve; defaults to the model's own limit."
    )
    architecture: Architecture | None = Field(
        None, description="Inline config.json facts for a model that is not in fleetspec's catalog."
    )


# ---------------------------------------------------------------------------------------------
# GPUs


class GpuGroup(Strict):
    """A set of identical GPUs: a catalog type, or a custom card given by its memory."""

    type: Text | None = Field(None, description="Catalog name: H100-80GB, H200, A100-40GB, A100-80GB, L40S, L4, ...")
    memory_gib: Float | None = Field(None, gt=0, le=16_384, description="Total memory of a custom card, in GiB.")
    count: Count(MAX_GPUS_PER_GROUP) = 1
    ids: list[Count(1_048_575, ge=0)] | None = Field(
        None, max_length=MAX_GPUS_PER_GROUP,
        description="Device indices on the host (CUDA_VISIBLE_DEVICES); numbered in order when absent."
    )
    interconnect: Literal["nvlink", "pcie", "network"] | None = Field(
        None, description="How these GPUs talk to each other under tensor parallel: nvlink (NVLink or NVSwitch, "
        "SXM boards), pcie, or network (the ranks sit on different hosts, e.g. one GPU per node under Ray). It "
        "sizes NCCL's memory. Default: the catalog's for the type (SXM for H100, H200, A100).")

    @model_validator(mode="after")
    def _type_or_memory(self) -> GpuGroup:
        if self.type is None and self.memory_gib is None:
            raise SpecValueError("a GPU group needs a catalog `type` or a custom `memory_gib`",
                                 "e.g. `type: A100-80GB`, or `memory_gib: 48` for a card not in the catalog")
        if self.ids is not None and len(self.ids) != self.count:
            raise SpecValueError(f"`ids` lists {len(self.ids)} device(s) but `count` is {self.count}",
                                 "list one device index per GPU, or drop `ids`")
        return self


class GpuDiscovery(Strict):
    discover: Literal[True] = Field(description="Ask NVML for the GPUs of this host at plan time.")


_GPU_SHORTHAND = re.compile(r"^\s*(?:(\d{1,12})\s*[x×]\s*)?([A-Za-z0-9][A-Za-z0-9_.-]{0,127})\s*$")


def _gpu_schema_shorthands(schema: dict) -> None:
    """Let editors accept the shorthands `_expand_gpu_shorthand` understands."""
    options = schema.get("oneOf") or schema.get("anyOf") or []
    group_ref = next((o["items"] for o in options if o.get("type") == "array" and "items" in o), None)
    extra = [{"type": "string", "pattern": _GPU_SHORTHAND.pattern, "examples": ["2x A100-80GB", "L4"]}]
    if group_ref:
        extra.append(group_ref)
    schema.setdefault("anyOf", options).extend(extra)
    schema.pop("oneOf", None)
    schema.pop("discriminator", None)


def _expand_gpu_shorthand(value):
    """`"2x A100-80GB"` → one group; a bare mapping → a one-group list."""
    if isinstance(value, str):
        match = _GPU_SHORTHAND.match(value)
        if match is None:
            return value  # let pydantic report the type error at this path
        return [{"type": match.group(2), "count": int(match.group(1) or 1)}]
    if isinstance(value, dict) and "discover" not in value:
        return [value]
    return value


# ---------------------------------------------------------------------------------------------
# Servers


class LoraLimits(Strict):
    max_loras: Count(1_024) = Field(1, description="GPU adapter slots: distinct adapters in one batch.")
    max_cpu_loras: Count(100_000) | None = Field(None, description="Adapters cached in host RAM (>= max_loras).")
    max_lora_rank: Int = Field(16, description="One of 1, 8, 16, 32, 64, 128, 256, 320, 512.")
    lora_dtype: LoraDtype = "auto"
    target_modules: list[Term] | None = Field(
        None, max_length=64, description="Restrict LoRA buffers to these modules (--lora-target-modules)."
    )
    fully_sharded: Bool = Field(False, description="Shard LoRA computation over tensor parallel (--fully-sharded-loras).")

    @field_validator("max_lora_rank")
    @classmethod
    def _allowed_rank(cls, value: int) -> int:
        if value not in ALLOWED_MAX_LORA_RANKS:
            allowed = ", ".join(map(str, ALLOWED_MAX_LORA_RANKS))
            above = next((r for r in ALLOWED_MAX_LORA_RANKS if r >= value), ALLOWED_MAX_LORA_RANKS[-1])
            raise SpecValueError(
                f"max_lora_rank must be one of {allowed}; vLLM refuses to start with {value}",
                f"use {above}, the smallest allowed value that holds rank {value}",
            )
        return value


class PipelineStage(Strict):
    """One pipeline-parallel stage of a replica: how many decoder layers it holds, on which GPUs."""

    layers: Count(MAX_LAYERS) = Field(description="Decoder layers on this stage (vLLM's VLLM_PP_LAYER_PARTITION).")
    gpu_type: Text | None = Field(
        None, description="Catalog GPU type of this stage's GPUs; defaults to the server's gpu_type.")


class Server(Strict):
    """A pool of identical vLLM servers (replicas) sharing one configuration."""

    name: Name
    replicas: Count(MAX_REPLICAS, ge=0) = 1
    tensor_parallel_size: Count(1_024) = 1
    pipeline_parallel_size: Count(1_024) = 1
    data_parallel_size: Count(1_024) = Field(
        1, description="Engine ranks in one replica (--data-parallel-size), each with its own KV cache and "
        "tensor x pipeline GPUs; MoE experts are split over all data x tensor parallel GPUs.")
    expert_parallel: Bool = Field(
        False, description="Give each GPU whole MoE experts instead of a slice of every expert "
        "(--enable-expert-parallel); experts are spread over data x tensor parallel GPUs.")
    pipeline_stages: list[PipelineStage] | None = Field(
        None, min_length=2, max_length=1_024,
        description="An uneven pipeline split, one entry per stage in order (first holds the embedding, last "
        "the lm_head): layers per stage, and optionally a GPU type per stage. Sets pipeline_parallel_size.",
    )
    gpu_type: Text | None = Field(None, description="Only place this server on GPUs of this catalog type.")
    gpu_memory_utilization: Float | None = Field(
        None, gt=0, le=1, description="Share of each GPU's total memory this server may use (vLLM default 0.92)."
    )
    max_model_len: Count(MAX_TOKENS) | None = Field(None, description="Overrides base_model.max_model_len for this server.")
    max_num_seqs: Count(65_536) | None = None
    max_num_batched_tokens: Count(MAX_TOKENS) | None = None
    enforce_eager: Bool = False
    startup_timeout_s: Count(86_400, ge=10) | None = Field(
        None, description="Seconds a replica may take from its start to a healthy /health; a replica still silent "
        "after that is replaced (its engine died, or hangs). Default: 3 min + 10 s per GiB of weights.",
    )
    lora: LoraLimits | None = Field(None, description="LoRA limits; omit to serve the base model only.")
    image: Text | None = Field(None, description="Engine container image; defaults to runtime.image.")
    port: Port | None = Field(None, description="First host port; replicas take consecutive ports.")
    env: dict[Annotated[str, Field(pattern=ENV_NAME_PATTERN, max_length=256)],
              Annotated[str, Field(max_length=131_072)]] = Field(
        default_factory=dict, max_length=MAX_LIST,
        description="Environment; write secrets as ${VAR}, they are never expanded.",
    )
    extra_args: list[Annotated[str, Field(max_length=PATH_LENGTH)]] = Field(
        default_factory=list, max_length=MAX_LIST, description="Extra `vllm serve` flags, passed through.")

    @field_validator("env", mode="before")
    @classmethod
    def _env_size_first(cls, value):
        # pydantic checks a mapping's length only after every entry: a huge env would be huge errors.
        if isinstance(value, dict) and len(value) > MAX_LIST:
            raise SpecValueError(f"env has {len(value):,} entries; at most {MAX_LIST:,} are allowed, because "
                                 f"{LIMIT_REASONS['env']}", "keep only the settings the engine needs")
        return value
    resources: PodResources | None = Field(
        None, description="Kubernetes requests and limits of each replica's pod: CPU and host memory.")

    @model_validator(mode="before")
    @classmethod
    def _pipeline_size_from_stages(cls, data):
        # Listing the stages says how many there are: pipeline_parallel_size follows unless written.
        if isinstance(data, dict) and isinstance(data.get("pipeline_stages"), list) \
                and "pipeline_parallel_size" not in data and len(data["pipeline_stages"]) >= 2:
            return {**data, "pipeline_parallel_size": len(data["pipeline_stages"])}
        return data

    @model_validator(mode="after")
    def _parallel_shape(self) -> Server:
        if self.gpus_per_replica > MAX_GPUS_PER_REPLICA:
            raise SpecValueError(
                f"one replica of `{self.name}` would span {self.gpus_per_replica:,} GPUs (data x tensor x pipeline "
                f"parallel); at most {MAX_GPUS_PER_REPLICA:,} are allowed, because no replica spans more GPUs",
                "lower data_parallel_size, tensor_parallel_size or pipeline_parallel_size")
        stages = self.pipeline_stages
        if stages is not None and len(stages) != self.pipeline_parallel_size:
            raise SpecValueError(
                f"`{self.name}` lists {len(stages)} pipeline_stages but sets pipeline_parallel_size "
                f"{self.pipeline_parallel_size}; vLLM needs one layer count per stage",
                f"set pipeline_parallel_size: {len(stages)}, or remove it (the stages set it)")
        if stages is not None and "VLLM_PP_LAYER_PARTITION" in self.env:
            raise SpecValueError(
                f"`{self.name}` sets the layer split twice: in pipeline_stages and in env.VLLM_PP_LAYER_PARTITION",
                "keep pipeline_stages (the planner reads it) and remove the env entry")
        if stages is not None and self.gpu_type is not None and any(
                st.gpu_type not in (None, self.gpu_type) for st in stages):
            raise SpecValueError(
                f"`{self.name}` pins gpu_type {self.gpu_type} but a pipeline stage names another GPU type",
                "remove the server's gpu_type and name a gpu_type on every stage")
        if stages is not None and self.gpu_type is None and any(st.gpu_type for st in stages) \
                and not all(st.gpu_type for st in stages):
            raise SpecValueError(
                f"some pipeline_stages of `{self.name}` name a GPU type and some do not, so fleetspec cannot tell "
                "where the others go", "name a gpu_type on every stage, or on none (and set the server's gpu_type)")
        return self

    @property
    def gpus_per_replica(self) -> int:
        return self.data_parallel_size * self.tensor_parallel_size * self.pipeline_parallel_size

    @property
    def layer_partition(self) -> tuple[int, ...] | None:
        """Decoder layers per pipeline stage when the fleet sets the split (VLLM_PP_LAYER_PARTITION)."""
        return tuple(st.layers for st in self.pipeline_stages) if self.pipeline_stages else None

    def stage_gpu_types(self) -> tuple[str | None, ...]:
        """The GPU type each pipeline stage asks for (None: any), first stage first."""
        if not self.pipeline_stages:
            return (self.gpu_type,) * self.pipeline_parallel_size
        return tuple(st.gpu_type or self.gpu_type for st in self.pipeline_stages)

    @property
    def mixed_gpu_types(self) -> bool:
        return len(set(self.stage_gpu_types())) > 1


# ---------------------------------------------------------------------------------------------
# Specialists (LoRA adapters)


class AdapterVersion(Strict):
    """Another deployable version of a specialist: a rollback target or a canary."""

    version: Version
    path: PathText
    rank: Count(65_536) | None = Field(None, description="Defaults to the specialist's rank.")
    alpha: Float | None = Field(None, gt=0, le=65_536)
    target_modules: list[Term] | None = Field(None, max_length=64)


class Specialist(Strict):
    name: AdapterName
    version: Version = Field(description="The active version: what clients of this specialist get.")
    path: PathText = Field(description="Adapter directory (adapter_config.json + weights) of the active version.")
    rank: Count(65_536) | None = Field(None, description="LoRA r; read from adapter_config.json when absent.")
    alpha: Float | None = Field(None, gt=0, le=65_536)
    target_modules: list[Term] | None = Field(None, max_length=64)
    base_model: Annotated[str, Field(max_length=PATH_LENGTH)] | None = Field(
        None, description="Base model the adapter was trained on, if not the fleet's.")
    domains: list[Term] = Field(default_factory=list, max_length=100)
    keywords: list[Term] = Field(default_factory=list, max_length=MAX_LIST, description="Whole words that route prompts here.")
    extensions: list[Annotated[str, Field(max_length=32)]] = Field(
        default_factory=list, max_length=100, description="File extensions (.py) that route here.")
    examples: list[Annotated[str, Field(min_length=1, max_length=8_192)]] = Field(
        default_factory=list, max_length=MAX_LIST,
        description="Prompts it serves well; the embedding tier (routing.embedding) compares "
        "prompts that no rule matched with these, its domains and its keywords.",
    )
    priority: Count(1_000_000, ge=-1_000_000) = Field(0, description="Breaks ties when several specialists match a prompt.")
    preload: Bool = Field(True, description="Load onto its servers ahead of traffic.")
    pinned: Bool = Field(
        False, description="Must always be servable at once: preloaded, and counted against every hosting server's "
        "max_loras GPU slots (vLLM has no per-adapter pin; fleetspec guarantees the room instead).",
    )
    servers: list[Name] | None = Field(
        None, max_length=MAX_SERVERS, description="Servers that host it; all LoRA servers when absent.")
    previous_version: Version | None = Field(
        None, description="The version this one replaced, kept under `versions:`; setting `version` back to it "
        "rolls this specialist back hot.",
    )
    versions: list[AdapterVersion] = Field(
        default_factory=list, max_length=64, description="Other versions kept deployable (rollback targets, canaries)."
    )

    @field_validator("extensions")
    @classmethod
    def _dotted(cls, values: list[str]) -> list[str]:
        bad = [v for v in values if not re.fullmatch(r"\.[A-Za-z0-9_+-]+", v)]
        if bad:
            raise SpecValueError(f"`{bad[0]}` is not a file extension", "write extensions with a leading dot, e.g. .py")
        return values

    def version_entry(self, version: str) -> AdapterVersion | None:
        """The given version as an AdapterVersion with inherited fields filled in."""
        if version == self.version:
            # Every field was validated on the specialist; validating it again per call cost a
            # noticeable share of planning 10,000 specialists.
            return AdapterVersion.model_construct(
                version=self.version, path=self.path, rank=self.rank, alpha=self.alpha,
                target_modules=self.target_modules,
            )
        for entry in self.versions:
            if entry.version == version:
                return entry.model_copy(update={
                    "rank": entry.rank or self.rank,
                    "alpha": entry.alpha if entry.alpha is not None else self.alpha,
                    "target_modules": entry.target_modules or self.target_modules,
                })
        return None

    @property
    def all_versions(self) -> list[str]:
        return [self.version, *(v.version for v in self.versions)]


# ---------------------------------------------------------------------------------------------
# Routing


class _RuleBase(Strict):
    name: Annotated[str, Field(max_length=256)] | None = Field(None, description="Shown in routing decisions and metrics.")


class KeywordRule(_RuleBase):
    keywords: list[Annotated[str, Field(min_length=1, max_length=256)]] = Field(
        min_length=1, max_length=MAX_LIST, description="Whole words, any case.")
    to: Text = Field(description="Specialist name, or name@version.")


class ExtensionRule(_RuleBase):
    extensions: list[Annotated[str, Field(max_length=32)]] = Field(
        min_length=1, max_length=100, description="File extensions seen in the prompt or metadata.")
    to: Text

    _dotted = field_validator("extensions")(Specialist._dotted.__func__)


class RegexRule(_RuleBase):
    regex: str = Field(min_length=1, max_length=2_048, description="Regular expression searched in the prompt "
                       "(RE2 syntax: linear time, no backreferences or lookaround).")
    to: str

    @field_validator("regex")
    @classmethod
    def _compiles(cls, value: str) -> str:
        try:
            regex.compile_pattern(value)
        except regex.RegexError as exc:
            raise SpecValueError(
                f"the regular expression is refused by RE2, the linear-time engine the router matches with: {exc}",
                "RE2 has no backreferences (\\1) or lookaround ((?=, (?<=), so no prompt can make matching "
                "slow; rewrite the pattern without them, and quote it in YAML",
            ) from None
        return value


class HashClusters(Strict):
    """Seed 000's router: sha1(prompt) picks a cluster, a map picks the adapter."""

    algorithm: Literal["sha1"] = "sha1"
    num_clusters: Count(1_000_000_000) = Field(description="Cluster id = prefix + (sha1 as integer mod num_clusters).")
    prefix: Annotated[str, Field(max_length=64)] = "c"
    map: dict[Annotated[str, Field(max_length=128)], Text] = Field(
        default_factory=dict, description="Cluster id → specialist (or name@version).")
    map_file: Annotated[str, Field(max_length=PATH_LENGTH)] | None = Field(
        None, description="YAML/JSON file with more cluster → specialist entries.")

    @field_validator("map", mode="before")
    @classmethod
    def _first_bad_entry(cls, value):
        # A map may hold hundreds of thousands of clusters: the first wrong entry is reported, not all.
        if isinstance(value, dict):
            for cluster, target in value.items():
                if not isinstance(target, str) or len(target) > 1_024 or len(str(cluster)) > 128:
                    raise SpecValueError(f"cluster `{str(cluster)[:60]}` maps to `{str(target)[:60]}`, which is not "
                                         "a specialist name", "map each cluster id to a specialist, or name@version")
        return value


class HashClusterRule(_RuleBase):
    hash_clusters: HashClusters


class SpecialistSignalsRule(_RuleBase):
    """Seed 001's dispatcher: score every specialist by its own keywords, extensions and domains."""

    specialist_signals: Literal[True]


RULE_KINDS = ("keywords", "extensions", "regex", "hash_clusters", "specialist_signals")


def _rule_kind(value) -> str | None:
    """Which kind a rule is, from the one matcher key it carries (None lets pydantic report it)."""
    if isinstance(value, BaseModel):
        value = value.model_dump(exclude_defaults=True)
    if not isinstance(value, dict):
        return None
    kinds = [k for k in RULE_KINDS if k in value]
    return kinds[0] if len(kinds) == 1 else None


Rule = Annotated[
    Annotated[KeywordRule, Tag("keywords")]
    | Annotated[ExtensionRule, Tag("extensions")]
    | Annotated[RegexRule, Tag("regex")]
    | Annotated[HashClusterRule, Tag("hash_clusters")]
    | Annotated[SpecialistSignalsRule, Tag("specialist_signals")],
    Discriminator(
        _rule_kind,
        custom_error_type="rule-kind",
        custom_error_message="a rule needs exactly one of: " + ", ".join(RULE_KINDS),
    ),
]


class Split(Strict):
    """Weighted traffic between versions of one specialist (canary, A/B)."""

    specialist: AdapterName
    weights: dict[Annotated[str, Field(max_length=64)], Count(100, ge=0)] = Field(
        max_length=100, description="version → percent; sums to 100.")


class EmbeddingTier(Strict):
    """Seed 001's third tier: when no rule matched, the specialist whose domains, keywords and
    examples are nearest to the prompt by sentence embedding, if it is near enough."""

    enabled: Bool = Field(False, description="Needs the embedding extra: pip install 'fleetspec[embedding]'.")
    threshold: Float = Field(
        0.3, ge=-1, le=1, description="Lowest cosine similarity that routes; a prompt below it falls back. "
        "0.3 suits all-MiniLM-L6-v2: off-topic prompts score under 0.15 against code specialists.",
    )
    model: str = Field(
        "all-MiniLM-L6-v2", min_length=1, max_length=PATH_LENGTH,
        description="all-MiniLM-L6-v2 (shipped inside the extra, runs offline) or a local sentence-transformers directory.",
    )


class GapLog(Strict):
    """Seed 001's routing-gap log: prompts no rule matched, kept for training future specialists.

    Written beside the router's config (`routing-gaps.jsonl`, rotated) or, when
    runtime.router.redis_url is set, to a capped Redis stream shared by every router replica."""

    enabled: Bool = Field(True, description="Record every prompt that no routing rule matched.")
    store: Literal["prompt", "prefix", "hash"] = Field(
        "prefix", description="What of the prompt is kept: `prompt` (all of it), `prefix` (its first prefix_chars "
        "characters) or `hash` (its sha256 only, so a recurring prompt can be counted but never read back).",
    )
    prefix_chars: Count(100_000) = Field(200, description="With store: prefix, how many characters are kept.")
    max_bytes: Count(1 << 40, ge=4_096) = Field(
        10 * 1024 * 1024, description="Size at which the log file is rotated (routing-gaps.jsonl → .1 → .2 ...).",
    )
    keep_files: Count(100, ge=0) = Field(3, description="Rotated files kept besides the current one; older are deleted.")
    max_entries: Count(100_000_000) = Field(
        100_000, description="With Redis: the stream is trimmed to about this many entries (XADD MAXLEN ~).",
    )


class Routing(Strict):
    fallback: Literal["base", "previous", "reject"] = Field(
        "base", description="What a prompt gets when nothing matches it, or when the chosen specialist version is "
        "served by no engine and cannot be loaded in time: `base` (the base model), `previous` (that specialist's "
        "previous_version where an engine holds it, else the base model) or `reject` (400 for no match, 503 for "
        "a specialist that cannot be served).",
    )
    affinity: Literal["strict", "spill"] = Field(
        "strict", description="`strict`: a specialist's requests go only to replicas that hold its adapter (one is "
        "loaded on demand when none does). `spill`: also load it onto another hosting replica when every holder has "
        "`spill_inflight` requests in flight, so a busy specialist spreads out.",
    )
    spill_inflight: Count(100_000) = Field(8, description="With affinity: spill, the in-flight requests per holder "
                                           "beyond which the adapter is loaded onto another replica.")
    on_demand_timeout_s: Count(3_600) = Field(
        60, description="How long a request waits for its adapter to load on demand (preload: false, or every holder "
        "gone) before routing.fallback applies. Real vLLM loads take seconds.",
    )
    sticky_key: Annotated[str, Field(max_length=256)] | None = Field(
        "x-session-id", description="Request header that keeps one user on one version of a split."
    )
    rules: list[Rule] = Field(
        default_factory=lambda: [SpecialistSignalsRule(specialist_signals=True)], max_length=10_000,
        description="Tried in order; the first rule that matches decides.",
    )
    splits: list[Split] = Field(default_factory=list, max_length=MAX_SPECIALISTS)
    embedding: EmbeddingTier = Field(default_factory=EmbeddingTier)
    gap_log: GapLog = Field(default_factory=GapLog)


# ---------------------------------------------------------------------------------------------
# Runtime


class RouterSettings(Strict):
    enabled: Bool = True
    port: Port = 8080
    admin_token: Annotated[str, Field(max_length=4_096)] | None = Field(
        None, description="Enables the admin API; write it as ${VAR}.")
    api_key: Annotated[str, Field(max_length=4_096)] | None = Field(
        None, description="Clients must send `Authorization: Bearer <key>` for /v1 paths; write it as ${VAR}. "
        "Without it, whoever reaches the router's port can use the engines (the router adds the engines' key).",
    )
    image: Text | None = Field(None, description="Router container image; fleetspec/router:<fleetspec version> by default.")
    processes: Count(64) = Field(
        1, description="Router processes sharing the port (one per core is the most that helps): one coordinator "
        "keeps the config, the runtime mappings and the adapter record for all of them.")
    redis_url: Annotated[str, Field(max_length=4_096)] | None = Field(
        None, description="Keep runtime cluster mappings in this Redis, shared by every router replica "
        "(redis://[user:${PASSWORD}@]host[:port][/db], rediss:// for TLS); each router's memory when absent.",
    )
    redis_map_key: Annotated[str, Field(min_length=1, max_length=512, pattern=r"^\S+$")] | None = Field(
        None, description="Seed 000's layout instead of fleetspec's own: the router reads and writes this Redis "
        "hash (e.g. lora:router_map), field = cluster id, value = the bare adapter tag (specialist name), for "
        "the first hash_clusters rule, so tools that HSET it keep working. Needs redis_url.",
    )

    @model_validator(mode="after")
    def _map_key_needs_redis(self) -> RouterSettings:
        if self.redis_map_key is not None and self.redis_url is None:
            raise SpecValueError("redis_map_key names a Redis hash, but no redis_url says which Redis",
                                 "add runtime.router.redis_url (e.g. redis://127.0.0.1:6379/0), or drop redis_map_key")
        return self

    @field_validator("api_key")
    @classmethod
    def _api_key_is_a_reference(cls, value: str | None) -> str | None:
        return secret_reference(value, "runtime.router.api_key", "ROUTER_API_KEY")

    @field_validator("redis_url")
    @classmethod
    def _redis_scheme(cls, value: str | None) -> str | None:
        if value is not None and not re.match(r"^rediss?://[^/\s]", value):
            raise SpecValueError("redis_url must be a redis:// or rediss:// URL",
                                 "e.g. redis://:${REDIS_PASSWORD}@redis:6379/0")
        return value


CPU_QUANTITY_PATTERN = r"^[0-9]{1,6}(\.[0-9]{1,3})?m?$"  # Kubernetes CPU: cores (2, 0.5) or millicores (500m)
EXTENDED_RESOURCE_PATTERN = r"^[a-z0-9]([a-z0-9.-]{0,251}[a-z0-9])?/[A-Za-z0-9]([A-Za-z0-9._-]{0,61}[A-Za-z0-9])?$"
MIG_RESOURCE = re.compile(r"^nvidia\.com/mig-(\d+)g\.(\d+)gb$")  # the device plugin's `mixed` strategy names


class PodResources(Strict):
    """CPU and host memory of each replica's pod on Kubernetes (GPUs come from the plan)."""

    cpu: Annotated[str, Field(pattern=CPU_QUANTITY_PATTERN)] | None = Field(
        None, description="CPU request, e.g. 2 or 500m; 2 per GPU by default.")
    memory: Annotated[str, Field(pattern=QUANTITY_PATTERN)] | None = Field(
        None, description="Host memory request, e.g. 8Gi; the weights plus 8 GiB by default.")
    cpu_limit: Annotated[str, Field(pattern=CPU_QUANTITY_PATTERN)] | None = Field(None, description="CPU limit, e.g. 4.")
    memory_limit: Annotated[str, Field(pattern=QUANTITY_PATTERN)] | None = Field(
        None, description="Host memory limit, e.g. 12Gi; a pod above it is OOM-killed.")


class GpuSharing(Strict):
    """How engine pods share GPUs on Kubernetes. Without it every pod requests whole GPUs
    (`nvidia.com/gpu`), and the plan may not put two replicas on one GPU."""

    mode: Literal["time-slicing", "mig"] = Field(
        description="time-slicing: the NVIDIA device plugin advertises each GPU `replicas` times, with no memory "
        "isolation; mig: each pod gets one MIG slice, listed under `gpus:` as its own device.")
    resource: Annotated[str, Field(pattern=EXTENDED_RESOURCE_PATTERN)] | None = Field(
        None, description="Resource each pod requests: nvidia.com/gpu.shared by default for time-slicing "
        "(renameByDefault: true), the slice's profile for mig, e.g. nvidia.com/mig-3g.20gb.")
    replicas: Annotated[int, Field(ge=2, le=64)] | None = Field(
        None, description="time-slicing: `replicas` of the device plugin's sharing config, the pods one GPU takes.")

    @model_validator(mode="after")
    def _mode_fields(self) -> GpuSharing:
        if self.mode == "time-slicing" and self.replicas is None:
            raise SpecValueError(
                "time-slicing needs `replicas`: how many pods the NVIDIA device plugin lets share one GPU",
                "copy `replicas` from the device plugin's timeSlicing config, e.g. replicas: 4")
        if self.mode == "mig":
            if self.resource is None or not MIG_RESOURCE.match(self.resource):
                raise SpecValueError(
                    "mig needs `resource`: the MIG profile each pod requests, e.g. nvidia.com/mig-3g.20gb",
                    "use the name the device plugin advertises with the `mixed` MIG strategy "
                    "(kubectl describe node | grep nvidia.com/mig)")
            if self.replicas is not None:
                raise SpecValueError("`replicas` is for time-slicing; a MIG slice is never shared",
                                     "list the slices under `gpus:` instead, one device per slice")
        return self

    @property
    def resource_name(self) -> str:
        return self.resource or "nvidia.com/gpu.shared"


class KubernetesSettings(Strict):
    """Only what `fleetspec compile --target k8s` needs beyond the rest of the file."""

    adapter_volume: Literal["pvc", "host_path"] = Field(
        "pvc", description="Where pods find adapters: a PersistentVolumeClaim, or (opt-in) the node's own directory."
    )
    adapter_claim: Name | None = Field(None, description="PersistentVolumeClaim with the adapters; <fleet>-adapters by default.")
    adapter_claim_size: str | None = Field(
        None, pattern=QUANTITY_PATTERN,
        description="Also create that claim (ReadWriteMany, this size, e.g. 20Gi); absent: it must exist already.",
    )
    adapter_storage_class: Annotated[str, Field(max_length=253)] | None = Field(
        None, description="storageClassName of the created claim.")
    ingress_host: Annotated[str, Field(max_length=253)] | None = Field(
        None, description="Publish the router through an Ingress for this host name.")
    ingress_class: Annotated[str, Field(max_length=253)] | None = Field(
        None, description="ingressClassName of that Ingress (cluster default when absent).")
    secret: Name | None = Field(
        None, description="The Secret that ${VAR} references read (key VAR); <fleet>-secrets by default. "
        "fleetspec never writes it: `kubectl create secret generic NAME --from-literal=VAR=...`.",
    )
    ingress_paths: Bool = Field(
        False, description="Add Ingress Prefix paths /base, one per specialist and one per server (seed 003's "
        "/chatbot, /code), each to the router Service, which strips the prefix and pins that specialist, the base "
        "model, or that server's pods.")
    session_affinity: Literal["None", "ClientIP"] = Field(
        "None", description="sessionAffinity of the router's and the servers' Services (ClientIP keeps a client on "
        "one pod, and so on its prefix cache).")
    model_volume: Literal["none", "pvc", "host_path"] = Field(
        "none", description="A volume holding the base model's Hugging Face cache, mounted read-only into every "
        "engine pod (HF_HUB_OFFLINE=1); none: each pod downloads the model into its own emptyDir.")
    model_claim: Name | None = Field(None, description="PersistentVolumeClaim with the model cache; <fleet>-models by default.")
    model_claim_size: str | None = Field(
        None, pattern=QUANTITY_PATTERN, description="Also create that claim (ReadOnlyMany, this size, e.g. 50Gi).")
    model_storage_class: Annotated[str, Field(max_length=253)] | None = Field(
        None, description="storageClassName of the created model claim.")
    model_host_path: Annotated[str, Field(pattern=r"^/", max_length=PATH_LENGTH)] | None = Field(
        None, description="model_volume: host_path: the node directory holding the Hugging Face cache.")
    gpu_sharing: GpuSharing | None = Field(
        None, description="Let engine pods share GPUs (time-slicing or MIG); every pod gets whole GPUs without it.")
    agent_port: Port = Field(8081, description="Port of the adapter agent sidecar in each engine pod (/ready, /status, /metrics).")

    @model_validator(mode="after")
    def _model_volume_fields(self) -> KubernetesSettings:
        if self.model_volume == "host_path" and self.model_host_path is None:
            raise SpecValueError("model_volume: host_path needs model_host_path, the node directory with the model",
                                 "e.g. model_host_path: /var/lib/models (a Hugging Face cache, filled once per node)")
        return self


class Runtime(Strict):
    target: Literal["docker", "local", "k8s"] = "local"
    engine: Literal["vllm", "sim"] = "sim"
    vllm_version: str = Field("0.33.0", pattern=r"^\d{1,6}\.\d{1,6}(\.\d{1,6})?$",
                              description="vLLM release the fleet is compiled for.")
    engine_api_key: Annotated[str, Field(max_length=4_096)] | None = Field(
        None, description="The API key every engine requires (vLLM's --api-key, handed over as VLLM_API_KEY so it "
        "stays out of process listings); write it as ${VAR}. fleetspec and the router send it; it is never written "
        "into compiled files or state.",
    )
    image: Text | None = Field(None, description="Engine image; vllm/vllm-openai:v<vllm_version> by default.")
    flashinfer: Bool | None = Field(
        None, description="Whether the engines' vLLM has FlashInfer installed, which changes how its sampler spends "
        "memory. Default: yes in vLLM's own images (docker, k8s), and for vLLM 0.14 and newer anywhere (a dependency "
        "since then); no for a `pip install vllm` before 0.14 (local target).")
    bind_address: str = Field("127.0.0.1", max_length=64,
                              description="Host IP address published ports bind to (IPv4 or IPv6, e.g. 0.0.0.0).")
    base_port: Port = Field(8000, description="First port handed to servers without an explicit port.")
    adapter_roots: list[PathText] = Field(
        default_factory=list, max_length=64, description="Directories adapters must live under; mounted read-only."
    )
    namespace: Name | None = Field(None, description="Kubernetes namespace; the fleet name by default.")
    router: RouterSettings = Field(default_factory=RouterSettings)
    kubernetes: KubernetesSettings = Field(default_factory=KubernetesSettings)

    @field_validator("engine_api_key")
    @classmethod
    def _engine_key_is_a_reference(cls, value: str | None) -> str | None:
        return secret_reference(value, "runtime.engine_api_key", "VLLM_API_KEY")

    @field_validator("bind_address")
    @classmethod
    def _bind_address_is_an_ip(cls, value: str) -> str:
        # It ends up in Docker's port bindings, compose files and shell scripts: only an IP address is
        # meaningful there, and anything else (a host name, `0.0.0.0; rm -rf /`) breaks or injects.
        try:
            ipaddress.ip_address(value)
        except ValueError:
            raise SpecValueError(
                f"bind_address must be an IP address, not `{value[:60]}`",
                "use 127.0.0.1 (this host only), 0.0.0.0 (every interface) or one of the host's addresses",
            ) from None
        return value

    @property
    def default_image(self) -> str:
        return self.image or f"vllm/vllm-openai:v{self.vllm_version}"


# ---------------------------------------------------------------------------------------------
# The fleet


class FleetSpec(Strict):
    model_config = ConfigDict(
        extra="forbid", frozen=True, title="fleetspec fleet file",
        json_schema_extra={"$id": "https://fleetspec.dev/schemas/fleet.schema.json"},
    )

    name: Name
    base_model: BaseModelSpec
    gpus: Annotated[
        Annotated[list[GpuGroup], Field(max_length=1_024), Tag("groups")] | Annotated[GpuDiscovery, Tag("discover")],
        Discriminator(lambda v: "discover" if isinstance(v, dict | GpuDiscovery) else "groups"),
    ] = Field(
        description='GPU inventory: a list of groups, a shorthand like "2x A100-80GB", or {discover: true}.',
        json_schema_extra=_gpu_schema_shorthands,
    )
    servers: list[Server] = Field(min_length=1, max_length=MAX_SERVERS)
    specialists: list[Specialist] = Field(default_factory=list, max_length=MAX_SPECIALISTS)
    routing: Routing = Field(default_factory=Routing)
    runtime: Runtime = Field(default_factory=Runtime)

    @field_validator("gpus", mode="before")
    @classmethod
    def _gpu_shorthand(cls, value):
        return _expand_gpu_shorthand(value)

    # Lookups go through one index per spec (spec/hosting.py): asked per server × specialist pair,
    # a scan of the lists made planning quadratic.
    def server(self, name: str) -> Server | None:
        return hosting.index(self).server_by_name.get(name)

    def specialist(self, name: str) -> Specialist | None:
        return hosting.index(self).specialist_by_name.get(name)

    def hosts_of(self, specialist: Specialist) -> list[Server]:
        """Servers that host a specialist: the named ones, or every LoRA-enabled server."""
        return hosting.index(self).hosts_of(specialist)

    def hosted_by(self, server: Server) -> list[Specialist]:
        """Specialists a server hosts, in declaration order."""
        return hosting.index(self).hosted_by(server)

    def max_model_len_of(self, server: Server) -> int | None:
        return server.max_model_len or self.base_model.max_model_len
