"""What vLLM 0.33 answers on `POST /v1/load_lora_adapter` for an adapter, without a GPU.

The sim engine calls this so that it rejects exactly what vLLM rejects, with vLLM's words. The
steps follow vLLM's own order (vllm/lora/worker_manager.py `_load_adapter`):

1. read adapter_config.json (missing → 404 "No adapter found"; bad JSON → the json error text)
2. PEFTHelper: required fields, positive ranks (lora/peft_helper.py:155-173, 102-115)
3. validate_legal: unsupported features, rank vs max_lora_rank, bias (peft_helper.py:53-100, 188-202)
4. open the weights; refuse modules the model has no slot for (lora/lora_model.py:246-316)
5. embedding vocabulary size (lora_model.py:159-168)
6. copy every module into its slot buffer (`set_lora`): a tensor larger than the buffer fails
   with torch's size-mismatch error; a smaller one is accepted silently (that case is caught by
   `adapters.checks`, not here, because vLLM says nothing).

Every engine error reaches the client as HTTP 500 with the message
`Call to add_lora method failed: <error>` (vllm/v1/engine/core.py:1834-1851); with more than one
worker process the error is first wrapped as `Worker failed with error '<error>', ...`
(v1/executor/multiproc_executor.py:524-528).

Known limits: Python prints the expected-module set in hash order, which varies between runs;
it is printed sorted here. safetensors error texts are those of safetensors 0.8 (vLLM 0.33 needs
>= 0.6.2), checked against the library in tests; serde_json's own words for broken JSON are not
reproduced. Step 6 is modelled
for tensor parallel 1 and Llama-style layouts. Pickled weights (.bin/.pt) are not opened, so their
tensors are assumed acceptable.
"""

from __future__ import annotations

import dataclasses

from fleetspec.adapters import inspect as adapter_inspect
from fleetspec.adapters import layout as adapter_layout
from fleetspec.spec import models

# init_lora_weights strings that only shape the initial weights (peft_helper.py:89-100)
SUPPORTED_INITS = ("gaussian", "eva", "orthogonal", "mica", "lora_ga")


@dataclasses.dataclass(frozen=True)
class Rejection:
    status: int  # HTTP status vLLM answers with
    err_type: str  # ErrorResponse.error.type
    message: str


def engine_load_error(
    info: adapter_inspect.AdapterInfo, max_lora_rank: int, architecture: models.Architecture, *,
    embedding_lora: bool = False, world_size: int = 1, lora_name: str = "", lora_path: str | None = None,
) -> str | None:
    """The message vLLM 0.33 answers when this adapter is loaded, or None when it is accepted."""
    rejection = engine_rejection(
        info, max_lora_rank, architecture, embedding_lora=embedding_lora, world_size=world_size,
        lora_name=lora_name, lora_path=lora_path,
    )
    return rejection.message if rejection else None


def engine_rejection(
    info: adapter_inspect.AdapterInfo, max_lora_rank: int, architecture: models.Architecture, *,
    embedding_lora: bool = False, world_size: int = 1, lora_name: str = "", lora_path: str | None = None,
) -> Rejection | None:
    path = lora_path or info.path
    if info.config_problem is not None and info.config_problem.kind == "missing":
        return Rejection(404, "NotFoundError", not_found_message(lora_name, path))
    error = engine_error(info, max_lora_rank, architecture, embedding_lora=embedding_lora, lora_dir=path)
    if error is None:
        return None
    if world_size > 1:
        error = f"Worker failed with error '{error}', please check the stack trace above for the root cause"
    return Rejection(500, "InternalServerError", f"Call to add_lora method failed: {error}")


def not_found_message(lora_name: str, lora_path: str) -> str:
    """vLLM's 404 text for a path without adapter_config.json (vllm/exceptions.py:71-93)."""
    return f"Loading lora {lora_name} failed: No adapter found for {lora_path}"


def engine_error(
    info: adapter_inspect.AdapterInfo, max_lora_rank: int, architecture: models.Architecture, *,
    embedding_lora: bool = False, lora_dir: str | None = None,
) -> str | None:
    """The exception text raised inside the engine (before any wrapping), or None."""
    lora_dir = lora_dir or info.path
    if info.config_problem is not None:
        return info.config_problem.detail or info.config_problem.message
    raw = info.config.raw
    return (
        helper_error(raw)
        or _iteration_error(raw.get("modules_to_save"))
        or " ".join(legality_errors(raw, max_lora_rank)) or None
        or _weights_error(info, architecture, embedding_lora, lora_dir)
        or _activation_error(info, architecture, max_lora_rank, embedding_lora)
    )


def helper_error(raw: dict) -> str | None:
    """PEFTHelper.from_dict + __post_init__: required fields and rank values."""
    missing = [f for f in adapter_inspect.REQUIRED_FIELDS if f not in raw]
    if missing:
        return "Missing required configuration fields: {" + ", ".join(repr(f) for f in sorted(missing)) + "}"
    r = raw["r"]
    if not _is_number(r):
        return f"'<=' not supported between instances of '{_type_name(r)}' and 'int'"
    if r <= 0:
        return f"LoRA rank `r` must be a positive integer, got {_py(r)}."
    pattern = raw.get("rank_pattern") or {}
    if not isinstance(pattern, dict):
        return f"'{_type_name(pattern)}' object has no attribute 'items'"
    for key, rank in pattern.items():
        if not isinstance(rank, int) or rank <= 0:
            return f"LoRA rank for `{key}` in `rank_pattern` must be a positive integer, got {_py(rank)}."
    alpha = raw["lora_alpha"]
    if not _is_number(alpha):
        return f"unsupported operand type(s) for /: '{_type_name(alpha)}' and '{_type_name(r)}'"
    return None


def _iteration_error(value) -> str | None:
    """_validate_features iterates modules_to_save when it is truthy; a scalar raises TypeError."""
    if value and not isinstance(value, list | dict | str):
        return f"'{_type_name(value)}' object is not iterable"
    return None


def legality_errors(raw: dict, max_lora_rank: int) -> list[str]:
    """validate_legal's sentences, in vLLM's order; vLLM joins them with spaces."""
    found = feature_errors(raw)
    ranks = [raw["r"], *(raw.get("rank_pattern") or {}).values()]
    if max(ranks) > max_lora_rank:
        found.append(rank_error(max(ranks), max_lora_rank))
    if raw.get("bias", "none") != "none":
        found.append(BIAS_ERROR)
    return found


def feature_errors(raw: dict) -> list[str]:
    """PEFTHelper._validate_features: PEFT options vLLM does not implement."""
    return [text for _, text in unsupported_features(raw)]


def unsupported_features(raw: dict) -> list[tuple[str, str]]:
    """(fleetspec code, vLLM's sentence) for each unsupported option, in vLLM's order."""
    found = []
    to_save = raw.get("modules_to_save")
    if to_save:
        unsupported = [m for m in to_save if m not in ["classifier", "score"]]
        if unsupported:
            found.append(("adapter-modules-to-save", (
                "vLLM only supports modules_to_save being either None "
                'or ["classifier", "score"] for classification models. '
                f"Unsupported modules_to_save: {_py(unsupported)}"
            )))
    if raw.get("use_dora"):
        found.append(("adapter-dora", "vLLM does not yet support DoRA."))
    if raw.get("lora_bias"):
        found.append(("adapter-lora-bias", "vLLM does not support LoRA bias (lora_bias)."))
    init = raw.get("init_lora_weights", True)
    if isinstance(init, str) and init.lower() not in SUPPORTED_INITS:
        found.append(("adapter-init-weights", (
            f"vLLM does not support init_lora_weights={init!r}."
            " Inits such as PiSSA, OLoRA, CorDA and LoftQ modify the base model"
            " weights when PEFT loads the adapter. Convert it to a regular LoRA"
            " adapter with PEFT's path_initial_model_for_weight_conversion, or"
            " set init_lora_weights to true if the served base model already"
            " contains the modified weights."
        )))
    for key, code, text in (
        ("alora_invocation_tokens", "adapter-alora", "vLLM does not support Activated LoRA (aLoRA)."),
        ("layer_replication", "adapter-layer-replication", "vLLM does not support layer_replication."),
        ("use_bdlora", "adapter-bdlora", "vLLM does not support block-diagonal LoRA (BD-LoRA)."),
        ("use_qalora", "adapter-qalora", "vLLM does not support QALoRA."),
    ):
        if raw.get(key):
            found.append((code, text))
    return found


BIAS_ERROR = "Adapter bias is not supported."


def rank_error(rank, max_lora_rank: int) -> str:
    return f"LoRA rank {_py(rank)} is greater than max_lora_rank {max_lora_rank}."


def _weights_error(info, architecture, embedding_lora, lora_dir) -> str | None:
    if info.weights_format is None:
        return f"{lora_dir} doesn't contain tensors"
    if info.weights_format != "safetensors":
        return None  # torch.load happens inside vLLM; fleetspec never unpickles
    if info.weights_problem is not None:
        return info.weights_problem.detail
    layout = adapter_layout.layout_for(architecture, embedding_lora)
    return (
        unexpected_modules_error(info, layout, lora_dir)
        or _pattern_error(info.config.raw)
        or _vocab_error(info, architecture)
    )


def _pattern_error(raw: dict) -> str | None:
    """get_rank_and_scaling calls .items() on alpha_pattern once either pattern is set."""
    pattern = raw.get("alpha_pattern")
    if pattern and not isinstance(pattern, dict):
        return f"'{_type_name(pattern)}' object has no attribute 'items'"
    return None


def unexpected_modules_error(info, layout: adapter_layout.Layout, lora_dir: str) -> str | None:
    """lora_model.check_unexpected_modules over the tensors in safetensors key order (sorted)."""
    if not layout.exact:
        return None  # MoE/MLA models have slots fleetspec does not model; do not guess
    to_save = info.config.raw.get("modules_to_save") or ()
    unexpected = []
    for tensor in info.tensors:  # header.Header keeps them sorted by name
        name = tensor.name
        if adapter_inspect.is_base_embedding_weight(name) or "base_layer" in name:
            continue
        parsed = adapter_inspect.lora_tensor_name(name)
        if parsed is not None:
            module = parsed[0]
        elif adapter_inspect.is_classifier_weight(name):
            module = name.split(".")[-2]
        else:
            return f"{name} is unsupported LoRA weight"
        suffix = module.rsplit(".", 1)[-1]
        if suffix not in layout.expected and suffix not in to_save:
            unexpected.append(module)
    if not unexpected:
        return None
    expected = "{" + ", ".join(repr(m) for m in sorted(layout.expected)) + "}"
    return (
        f"While loading {lora_dir}, expected target modules in {expected} but received {_py(unexpected)}."
        " Please verify that the loaded LoRA module is correct"
    )


def _vocab_error(info, architecture: models.Architecture) -> str | None:
    for tensor in info.tensors:
        embedding_a = tensor.name.endswith("lora_embedding_A") and len(tensor.shape) == 2
        if embedding_a and tensor.shape[1] != architecture.vocab_size:
            return (
                f"The embedding LoRA size({tensor.shape[1]}) must be consistent"
                f" with the base model's vocabulary size({architecture.vocab_size})."
            )
    return None


def _activation_error(info, architecture, max_lora_rank: int, embedding_lora: bool) -> str | None:
    """set_lora: copying each module into its slot fails when a tensor is larger than the buffer."""
    if not info.tensors_known:
        return None
    layout = adapter_layout.layout_for(architecture, embedding_lora)
    if layout.family != "llama":
        return None
    layers = architecture.num_hidden_layers
    for module in sorted(info.modules, key=lambda m: _slot_order(m, layers)):
        if not adapter_layout.is_known_name(module.name, layout, layers) or module.suffix not in layout.expected:
            continue  # vLLM never finds a slot for it: silently ignored
        error = _module_copy_error(module, architecture, layout.family, max_lora_rank)
        if error:
            return error
    return None


_SLOT_ORDER = {"q_proj": 0, "k_proj": 1, "v_proj": 2, "o_proj": 3, "gate_proj": 4, "up_proj": 5, "down_proj": 6}


def _slot_order(module: adapter_inspect.LoraModule, layers: int) -> tuple[int, int]:
    """vLLM's named_modules order: embed_tokens, each layer's attention then MLP, lm_head."""
    if module.suffix == "embed_tokens":
        return (-1, 0)
    if module.suffix == "lm_head":
        return (layers, 0)
    return (module.layer if module.layer is not None else layers, _SLOT_ORDER.get(module.suffix, 9))


def _module_copy_error(module, architecture, family_name, rank: int) -> str | None:
    dims = adapter_layout.dims(architecture, module.suffix, family_name)
    if dims is None or not module.a_shape or not module.b_shape:
        return None
    in_features, out_features = dims
    if module.embedding:
        # embedding A buffer is [vocab, R] and receives lora_a.T
        a_buffer, a_source = (in_features, rank), tuple(reversed(module.a_shape))
    else:
        a_buffer, a_source = (rank, in_features), module.a_shape
    return _copy_error(a_buffer, a_source) or _copy_error((out_features, rank), module.b_shape)


def _copy_error(buffer: tuple[int, ...], source: tuple[int, ...]) -> str | None:
    """torch: buffer[:s0, :s1].copy_(source) — the slice clips, so only a larger source fails."""
    if len(buffer) != len(source):
        return None
    dest = tuple(min(s, b) for s, b in zip(source, buffer, strict=True))
    for i in reversed(range(len(dest))):  # torch's infer_size reports the last mismatching dim first
        if dest[i] != source[i] and dest[i] != 1:
            return (
                f"The size of tensor a ({dest[i]}) must match the size of tensor b ({source[i]})"
                f" at non-singleton dimension {i}"
            )
    if dest != source:
        broadcast = ", ".join(str(max(d, s)) for d, s in zip(dest, source, strict=True))
        return f"output with shape [{', '.join(map(str, dest))}] doesn't match the broadcast shape [{broadcast}]"
    return None


def _is_number(value) -> bool:
    return isinstance(value, int | float)


def _type_name(value) -> str:
    return type(value).__name__


def _py(value) -> str:
    """How Python's f-string prints a JSON-loaded value inside vLLM."""
    return str(value)
