"""The fleet.yaml contract: pydantic models, strict about unknown keys.

These models only check what one field (or one object) can know on its own. Rules that relate
several parts of the file (a rule naming a declared specialist, ports not colliding, ranks within a
server's limits) live in `spec.checks`, which reports them as located diagnostics.

The JSON Schema in `schemas/fleet.schema.json` is generated from these models
(`fleetspec schema`), so field descriptions here are what editors show users.
"""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    StrictBool,
    Tag,
    field_validator,
    model_validator,
)

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


def secret_reference(value: str | None, field: str, example: str) -> str | None:
    """A field that may only name a secret (`${VAR}`): a literal key would end up in files and logs."""
    if value is not None and not SECRET_ONLY.fullmatch(value):
        raise SpecValueError(
            f"{field} must be a reference to an environment variable such as ${{{example}}}, not the key itself",
            f"write {field}: ${{{example}}} and export {example} where fleetspec and the fleet run",
        )
    return value

Name = Annotated[str, Field(pattern=NAME_PATTERN, description="Lower-case DNS label (a-z, 0-9, -).")]
AdapterName = Annotated[str, Field(pattern=ADAPTER_NAME_PATTERN)]
Version = Annotated[str, Field(pattern=VERSION_PATTERN)]
Port = Annotated[int, Field(ge=1, le=65535)]
PositiveInt = Annotated[int, Field(ge=1)]
# Only YAML's true/false: `yes`, `on` and `1` are text or a number in YAML 1.2, never a quiet True.
Bool = StrictBool


class SpecValueError(ValueError):
    """A validator's complaint with a fix; the loader shows `hint` under the message."""

    def __init__(self, message: str, hint: str = ""):
        super().__init__(message)
        self.hint = hint


class Strict(BaseModel):
    """Base of every spec model: a typo is an error, never a silently ignored key."""

    model_config = ConfigDict(extra="forbid", frozen=True, str_strip_whitespace=False)


# ---------------------------------------------------------------------------------------------
# Base model


class Architecture(Strict):
    """Facts from the model's config.json (same key names), for models outside the catalog."""

    model_type: str | None = Field(None, description="config.json model_type, e.g. llama, qwen2.")
    architectures: list[str] | None = Field(None, description="config.json architectures, e.g. [LlamaForCausalLM].")
    hidden_size: PositiveInt
    intermediate_size: PositiveInt
    num_hidden_layers: PositiveInt
    num_attention_heads: PositiveInt
    num_key_value_heads: PositiveInt | None = Field(None, description="Defaults to num_attention_heads (MHA).")
    head_dim: PositiveInt | None = Field(None, description="Defaults to hidden_size / num_attention_heads.")
    vocab_size: PositiveInt
    tie_word_embeddings: Bool = False
    num_parameters: PositiveInt | None = Field(None, description="Total parameter count; derived when absent.")
    sliding_window: PositiveInt | None = None
    max_position_embeddings: PositiveInt | None = None
    # MoE
    num_local_experts: PositiveInt | None = Field(None, description="MoE experts (Mixtral naming).")
    num_experts: PositiveInt | None = Field(None, description="MoE experts (Qwen naming).")
    num_experts_per_tok: PositiveInt | None = None
    moe_intermediate_size: PositiveInt | None = None
    # MLA (DeepSeek-style attention)
    kv_lora_rank: PositiveInt | None = None
    q_lora_rank: PositiveInt | None = None
    qk_rope_head_dim: PositiveInt | None = None
    qk_nope_head_dim: PositiveInt | None = None
    v_head_dim: PositiveInt | None = None

    @property
    def kv_heads(self) -> int:
        return self.num_key_value_heads or self.num_attention_heads

    @property
    def attention_head_dim(self) -> int:
        return self.head_dim or self.hidden_size // self.num_attention_heads


class BaseModelSpec(Strict):
    id: str = Field(min_length=1, description="Hugging Face id (org/name) or a local directory with config.json.")
    revision: str | None = Field(None, description="Hugging Face revision (branch, tag or commit).")
    quantization: Quantization = Field("none", description="Weight quantization; 'none' for bf16/fp16 checkpoints.")
    quantization_group_size: PositiveInt | None = Field(
        None, description="Group size of AWQ/GPTQ checkpoints (128 when not given)."
    )
    dtype: ModelDtype = "auto"
    kv_cache_dtype: KvCacheDtype = "auto"
    max_model_len: PositiveInt | None = Field(
        None, description="Context length every server must serve; defaults to the model's own limit."
    )
    architecture: Architecture | None = Field(
        None, description="Inline config.json facts for a model that is not in fleetspec's catalog."
    )


# ---------------------------------------------------------------------------------------------
# GPUs


class GpuGroup(Strict):
    """A set of identical GPUs: a catalog type, or a custom card given by its memory."""

    type: str | None = Field(None, description="Catalog name: H100-80GB, H200, A100-40GB, A100-80GB, L40S, L4, ...")
    memory_gib: float | None = Field(None, gt=0, description="Total memory of a custom card, in GiB.")
    count: PositiveInt = 1
    ids: list[Annotated[int, Field(ge=0)]] | None = Field(
        None, description="Device indices on the host (CUDA_VISIBLE_DEVICES); numbered in order when absent."
    )

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


_GPU_SHORTHAND = re.compile(r"^\s*(?:(\d+)\s*[x×]\s*)?([A-Za-z0-9][A-Za-z0-9_.-]*)\s*$")


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
    max_loras: PositiveInt = Field(1, description="GPU adapter slots: distinct adapters in one batch.")
    max_cpu_loras: PositiveInt | None = Field(None, description="Adapters cached in host RAM (>= max_loras).")
    max_lora_rank: int = Field(16, description="One of 1, 8, 16, 32, 64, 128, 256, 320, 512.")
    lora_dtype: LoraDtype = "auto"
    target_modules: list[str] | None = Field(
        None, description="Restrict LoRA buffers to these modules (--lora-target-modules)."
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


class Server(Strict):
    """A pool of identical vLLM servers (replicas) sharing one configuration."""

    name: Name
    replicas: Annotated[int, Field(ge=0)] = 1
    tensor_parallel_size: PositiveInt = 1
    pipeline_parallel_size: PositiveInt = 1
    gpu_type: str | None = Field(None, description="Only place this server on GPUs of this catalog type.")
    gpu_memory_utilization: float | None = Field(
        None, gt=0, le=1, description="Share of each GPU's total memory this server may use (vLLM default 0.92)."
    )
    max_model_len: PositiveInt | None = Field(None, description="Overrides base_model.max_model_len for this server.")
    max_num_seqs: PositiveInt | None = None
    max_num_batched_tokens: PositiveInt | None = None
    enforce_eager: Bool = False
    startup_timeout_s: Annotated[int, Field(ge=10, le=86_400)] | None = Field(
        None, description="Seconds a replica may take from its start to a healthy /health; a replica still silent "
        "after that is replaced (its engine died, or hangs). Default: 3 min + 10 s per GiB of weights.",
    )
    lora: LoraLimits | None = Field(None, description="LoRA limits; omit to serve the base model only.")
    image: str | None = Field(None, description="Engine container image; defaults to runtime.image.")
    port: Port | None = Field(None, description="First host port; replicas take consecutive ports.")
    env: dict[Annotated[str, Field(pattern=ENV_NAME_PATTERN)], str] = Field(
        default_factory=dict, description="Environment; write secrets as ${VAR}, they are never expanded."
    )
    extra_args: list[str] = Field(default_factory=list, description="Extra `vllm serve` flags, passed through.")

    @property
    def gpus_per_replica(self) -> int:
        return self.tensor_parallel_size * self.pipeline_parallel_size


# ---------------------------------------------------------------------------------------------
# Specialists (LoRA adapters)


class AdapterVersion(Strict):
    """Another deployable version of a specialist: a rollback target or a canary."""

    version: Version
    path: str = Field(min_length=1)
    rank: PositiveInt | None = Field(None, description="Defaults to the specialist's rank.")
    alpha: float | None = None
    target_modules: list[str] | None = None


class Specialist(Strict):
    name: AdapterName
    version: Version = Field(description="The active version: what clients of this specialist get.")
    path: str = Field(min_length=1, description="Adapter directory (adapter_config.json + weights) of the active version.")
    rank: PositiveInt | None = Field(None, description="LoRA r; read from adapter_config.json when absent.")
    alpha: float | None = None
    target_modules: list[str] | None = None
    base_model: str | None = Field(None, description="Base model the adapter was trained on, if not the fleet's.")
    domains: list[str] = Field(default_factory=list)
    keywords: list[str] = Field(default_factory=list, description="Whole words that route prompts here.")
    extensions: list[str] = Field(default_factory=list, description="File extensions (.py) that route here.")
    examples: list[Annotated[str, Field(min_length=1)]] = Field(
        default_factory=list, description="Prompts it serves well; the embedding tier (routing.embedding) compares "
        "prompts that no rule matched with these, its domains and its keywords.",
    )
    priority: int = Field(0, description="Breaks ties when several specialists match a prompt.")
    preload: Bool = Field(True, description="Load onto its servers ahead of traffic.")
    pinned: Bool = Field(
        False, description="Must always be servable at once: preloaded, and counted against every hosting server's "
        "max_loras GPU slots (vLLM has no per-adapter pin; fleetspec guarantees the room instead).",
    )
    servers: list[Name] | None = Field(None, description="Servers that host it; all LoRA servers when absent.")
    previous_version: Version | None = Field(
        None, description="The version this one replaced, kept under `versions:`; setting `version` back to it "
        "rolls this specialist back hot.",
    )
    versions: list[AdapterVersion] = Field(
        default_factory=list, description="Other versions kept deployable (rollback targets, canaries)."
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
            return AdapterVersion(
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
    name: str | None = Field(None, description="Shown in routing decisions and metrics.")


class KeywordRule(_RuleBase):
    keywords: list[Annotated[str, Field(min_length=1)]] = Field(min_length=1, description="Whole words, any case.")
    to: str = Field(description="Specialist name, or name@version.")


class ExtensionRule(_RuleBase):
    extensions: list[str] = Field(min_length=1, description="File extensions seen in the prompt or metadata.")
    to: str

    _dotted = field_validator("extensions")(Specialist._dotted.__func__)


class RegexRule(_RuleBase):
    regex: str = Field(min_length=1, description="Python regular expression searched in the prompt.")
    to: str

    @field_validator("regex")
    @classmethod
    def _compiles(cls, value: str) -> str:
        try:
            re.compile(value)
        except re.error as exc:
            raise SpecValueError(
                f"the regular expression does not compile: {exc}", "test it with Python's `re` module; quote it in YAML"
            ) from None
        return value


class HashClusters(Strict):
    """Seed 000's router: sha1(prompt) picks a cluster, a map picks the adapter."""

    algorithm: Literal["sha1"] = "sha1"
    num_clusters: PositiveInt = Field(description="Cluster id = prefix + (sha1 as integer mod num_clusters).")
    prefix: str = "c"
    map: dict[str, str] = Field(default_factory=dict, description="Cluster id → specialist (or name@version).")
    map_file: str | None = Field(None, description="YAML/JSON file with more cluster → specialist entries.")


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
    weights: dict[str, Annotated[int, Field(ge=0, le=100)]] = Field(description="version → percent; sums to 100.")


class EmbeddingTier(Strict):
    """Seed 001's third tier: when no rule matched, the specialist whose domains, keywords and
    examples are nearest to the prompt by sentence embedding, if it is near enough."""

    enabled: Bool = Field(False, description="Needs the embedding extra: pip install 'fleetspec[embedding]'.")
    threshold: float = Field(
        0.3, ge=-1, le=1, description="Lowest cosine similarity that routes; a prompt below it falls back. "
        "0.3 suits all-MiniLM-L6-v2: off-topic prompts score under 0.15 against code specialists.",
    )
    model: str = Field(
        "all-MiniLM-L6-v2", min_length=1,
        description="all-MiniLM-L6-v2 (shipped inside the extra, runs offline) or a local sentence-transformers directory.",
    )


class Routing(Strict):
    fallback: Literal["base", "reject"] = Field("base", description="What a prompt nothing matches gets.")
    sticky_key: str | None = Field(
        "x-session-id", description="Request header that keeps one user on one version of a split."
    )
    rules: list[Rule] = Field(
        default_factory=lambda: [SpecialistSignalsRule(specialist_signals=True)],
        description="Tried in order; the first rule that matches decides.",
    )
    splits: list[Split] = Field(default_factory=list)
    embedding: EmbeddingTier = Field(default_factory=EmbeddingTier)


# ---------------------------------------------------------------------------------------------
# Runtime


class RouterSettings(Strict):
    enabled: Bool = True
    port: Port = 8080
    admin_token: str | None = Field(None, description="Enables the admin API; write it as ${VAR}.")
    api_key: str | None = Field(
        None, description="Clients must send `Authorization: Bearer <key>` for /v1 paths; write it as ${VAR}. "
        "Without it, whoever reaches the router's port can use the engines (the router adds the engines' key).",
    )
    image: str | None = Field(None, description="Router container image; fleetspec/router:<fleetspec version> by default.")
    redis_url: str | None = Field(
        None, description="Keep runtime cluster mappings in this Redis, shared by every router replica "
        "(redis://[user:${PASSWORD}@]host[:port][/db], rediss:// for TLS); each router's memory when absent.",
    )

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
    adapter_storage_class: str | None = Field(None, description="storageClassName of the created claim.")
    ingress_host: str | None = Field(None, description="Publish the router through an Ingress for this host name.")
    ingress_class: str | None = Field(None, description="ingressClassName of that Ingress (cluster default when absent).")


class Runtime(Strict):
    target: Literal["docker", "local", "k8s"] = "local"
    engine: Literal["vllm", "sim"] = "sim"
    vllm_version: str = Field("0.33.0", pattern=r"^\d+\.\d+(\.\d+)?$", description="vLLM release the fleet is compiled for.")
    engine_api_key: str | None = Field(
        None, description="The API key every engine requires (vLLM's --api-key, handed over as VLLM_API_KEY so it "
        "stays out of process listings); write it as ${VAR}. fleetspec and the router send it; it is never written "
        "into compiled files or state.",
    )
    image: str | None = Field(None, description="Engine image; vllm/vllm-openai:v<vllm_version> by default.")
    bind_address: str = Field("127.0.0.1", description="Host address published ports bind to.")
    base_port: Port = Field(8000, description="First port handed to servers without an explicit port.")
    adapter_roots: list[str] = Field(
        default_factory=list, description="Directories adapters must live under; mounted read-only."
    )
    namespace: Name | None = Field(None, description="Kubernetes namespace; the fleet name by default.")
    router: RouterSettings = Field(default_factory=RouterSettings)
    kubernetes: KubernetesSettings = Field(default_factory=KubernetesSettings)

    @field_validator("engine_api_key")
    @classmethod
    def _engine_key_is_a_reference(cls, value: str | None) -> str | None:
        return secret_reference(value, "runtime.engine_api_key", "VLLM_API_KEY")

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
        Annotated[list[GpuGroup], Tag("groups")] | Annotated[GpuDiscovery, Tag("discover")],
        Discriminator(lambda v: "discover" if isinstance(v, dict | GpuDiscovery) else "groups"),
    ] = Field(
        description='GPU inventory: a list of groups, a shorthand like "2x A100-80GB", or {discover: true}.',
        json_schema_extra=_gpu_schema_shorthands,
    )
    servers: list[Server] = Field(min_length=1)
    specialists: list[Specialist] = Field(default_factory=list)
    routing: Routing = Field(default_factory=Routing)
    runtime: Runtime = Field(default_factory=Runtime)

    @field_validator("gpus", mode="before")
    @classmethod
    def _gpu_shorthand(cls, value):
        return _expand_gpu_shorthand(value)

    def server(self, name: str) -> Server | None:
        return next((s for s in self.servers if s.name == name), None)

    def specialist(self, name: str) -> Specialist | None:
        return next((s for s in self.specialists if s.name == name), None)

    def hosts_of(self, specialist: Specialist) -> list[Server]:
        """Servers that host a specialist: the named ones, or every LoRA-enabled server."""
        if specialist.servers is not None:
            return [s for s in self.servers if s.name in specialist.servers]
        return [s for s in self.servers if s.lora is not None]

    def max_model_len_of(self, server: Server) -> int | None:
        return server.max_model_len or self.base_model.max_model_len
