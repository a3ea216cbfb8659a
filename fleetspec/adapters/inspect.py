"""Read a PEFT adapter directory without loading its weights.

An adapter is `adapter_config.json` plus one weights file (vLLM's order of preference:
`adapter_model.safetensors`, then `.bin`, then `.pt`). From the config and the safetensors header
alone we learn everything vLLM will check when it loads the adapter: PEFT type, ranks (the real
ones, from tensor shapes), target modules, unsupported features, dtypes and sizes. Pickled weights
(`.bin`/`.pt`) are never opened: unpickling runs code, and their shapes are not readable otherwise.

`parse_adapter_config` and `modules_from_tensors` are pure; `inspect` does the reading.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import pathlib
import stat

from fleetspec import errors
from fleetspec.adapters import header as st_header

CONFIG_FILE = "adapter_config.json"
# vLLM's order (lora/lora_model.py from_local_checkpoint): the first file that exists is used.
WEIGHT_FILES = (("adapter_model.safetensors", "safetensors"), ("adapter_model.bin", "bin"), ("adapter_model.pt", "pt"))
MAX_CONFIG_BYTES = 16 * 1024 * 1024  # real configs are a few KB; a huge one is a mistake or an attack
REQUIRED_FIELDS = ("r", "lora_alpha", "target_modules")  # vLLM PEFTHelper's fields without defaults


class AdapterNotFound(errors.PermanentError):
    """The adapter directory does not exist or is not a directory."""


@dataclasses.dataclass(frozen=True)
class Problem:
    kind: str  # a stable name: "missing", "invalid-json", "HeaderTooLarge", ...
    message: str  # a sentence fragment about the file, for fleetspec's own messages
    detail: str = ""  # the text Python/safetensors would give inside vLLM, for engine emulation


@dataclasses.dataclass(frozen=True)
class AdapterConfig:
    """adapter_config.json, as read. `raw` keeps the document for anything not named here."""

    raw: dict
    peft_type: str | None
    r: int | None
    lora_alpha: float | None
    target_modules: tuple[str, ...] | str | None  # PEFT allows a regex string
    rank_pattern: dict[str, int]
    alpha_pattern: dict[str, float]
    modules_to_save: tuple[str, ...]
    bias: str
    use_dora: bool
    use_rslora: bool
    base_model_name_or_path: str | None
    missing: tuple[str, ...]  # required fields absent from the file
    problems: tuple[str, ...]  # fields of the wrong type, as sentences

    @property
    def configured_ranks(self) -> tuple[int, ...]:
        """r and every rank_pattern value: what vLLM compares with max_lora_rank."""
        ranks = [self.r] if isinstance(self.r, int) else []
        return tuple(ranks + [v for v in self.rank_pattern.values() if isinstance(v, int)])


@dataclasses.dataclass(frozen=True)
class LoraModule:
    """One adapted module: its A and B tensors, PEFT layout A [r, in], B [out, r]."""

    name: str  # vLLM's module name: "model.layers.0.self_attn.q_proj"
    embedding: bool  # lora_embedding_A/B (embed_tokens) rather than lora_A/B
    a_shape: tuple[int, ...] | None
    b_shape: tuple[int, ...] | None
    dtype: str
    nbytes: int

    @property
    def suffix(self) -> str:
        return self.name.rsplit(".", 1)[-1]

    @functools.cached_property
    def layer(self) -> int | None:
        parts = self.name.split(".")
        for before, index in zip(parts, parts[1:], strict=False):
            if before in ("layers", "h", "blocks") and index.isdigit():
                return int(index)
        return None

    @property
    def rank(self) -> int | None:
        if self.a_shape and len(self.a_shape) == 2:
            return self.a_shape[0]
        if self.b_shape and len(self.b_shape) == 2:
            return self.b_shape[1]
        return None

    @property
    def numel(self) -> int:
        total = 0
        for shape in (self.a_shape, self.b_shape):
            if shape:
                count = 1
                for dim in shape:
                    count *= dim
                total += count
        return total


@dataclasses.dataclass(frozen=True)
class AdapterInfo:
    path: str  # absolute, as vLLM resolves an existing local path
    config: AdapterConfig | None
    config_problem: Problem | None
    weights_file: str | None  # file name inside the directory
    weights_format: str | None  # "safetensors", "bin", "pt"
    weights_bytes: int  # on-disk size of the weights file
    weights_problem: Problem | None
    tensors: tuple[st_header.TensorEntry, ...]
    modules: tuple[LoraModule, ...]
    unsupported_tensors: tuple[str, ...]  # tensor names vLLM cannot parse as LoRA weights
    classifier_tensors: tuple[str, ...]  # modules_to_save weights of classification heads
    bytes_read: int  # config + header bytes this inspection read

    @property
    def tensors_known(self) -> bool:
        return self.weights_format == "safetensors" and self.weights_problem is None

    @functools.cached_property
    def ranks(self) -> tuple[int, ...]:
        """Real ranks: from tensor shapes when readable, else from the config."""
        if self.tensors_known and self.modules:
            return tuple(sorted({m.rank for m in self.modules if m.rank is not None}))
        return tuple(sorted(set(self.config.configured_ranks))) if self.config else ()

    @property
    def max_rank(self) -> int | None:
        return max(self.ranks, default=None)

    @property
    def target_modules_present(self) -> tuple[str, ...]:
        return tuple(sorted({m.suffix for m in self.modules}))

    @property
    def dtypes(self) -> tuple[str, ...]:
        return tuple(sorted({t.dtype for t in self.tensors}))

    @property
    def tensor_bytes(self) -> int:
        return sum(t.nbytes for t in self.tensors)

    def to_json(self, modules: bool = True) -> dict:
        """Plain data for JSON output; `modules=False` leaves out the per-module list."""
        config = self.config
        return {
            "path": self.path,
            "peft_type": config.peft_type if config else None,
            "r": config.r if config else None,
            "lora_alpha": config.lora_alpha if config else None,
            "rank_pattern": dict(config.rank_pattern) if config else {},
            "base_model_name_or_path": config.base_model_name_or_path if config else None,
            "ranks": list(self.ranks),
            "target_modules": list(self.target_modules_present),
            "weights_file": self.weights_file,
            "weights_bytes": self.weights_bytes,
            "tensor_bytes": self.tensor_bytes,
            "dtypes": list(self.dtypes),
            "problems": [dataclasses.asdict(p) for p in (self.config_problem, self.weights_problem) if p],
            "bytes_read": self.bytes_read,
        } | ({"modules": [
            {"name": m.name, "rank": m.rank, "a_shape": list(m.a_shape or ()), "b_shape": list(m.b_shape or ()),
             "dtype": m.dtype}
            for m in self.modules
        ]} if modules else {})


# ---------------------------------------------------------------------------------------------
# Pure parsing


def parse_adapter_config(document: dict) -> AdapterConfig:
    """Typed view of adapter_config.json. Wrong types are reported, not raised."""
    problems: list[str] = []
    r = document.get("r")
    if "r" in document and not _positive_int(r):
        problems.append(f"r must be a positive integer, got {r!r}")
    alpha = document.get("lora_alpha")
    if "lora_alpha" in document and not _number(alpha):
        problems.append(f"lora_alpha must be a number, got {alpha!r}")
    rank_pattern = _mapping(document, "rank_pattern", problems)
    problems += [f"rank_pattern[{k!r}] must be a positive integer, got {v!r}"
                 for k, v in rank_pattern.items() if not _positive_int(v)]
    targets = document.get("target_modules")
    if isinstance(targets, list):
        targets = tuple(str(t) for t in targets)
    elif targets is not None and not isinstance(targets, str):
        problems.append(f"target_modules must be a list of names or a regex string, got {targets!r}")
        targets = None
    to_save = document.get("modules_to_save") or ()
    if not isinstance(to_save, list | tuple):
        problems.append(f"modules_to_save must be a list of module names, got {to_save!r}")
        to_save = ()
    bias = document.get("bias", "none")
    base = document.get("base_model_name_or_path")
    return AdapterConfig(
        raw=document,
        peft_type=str(document["peft_type"]) if document.get("peft_type") is not None else None,
        r=r if _positive_int(r) else None,
        lora_alpha=alpha if _number(alpha) else None,
        target_modules=targets,
        rank_pattern=rank_pattern,
        alpha_pattern=_mapping(document, "alpha_pattern", problems),
        modules_to_save=tuple(str(m) for m in to_save),
        bias=bias if isinstance(bias, str) else str(bias),
        use_dora=bool(document.get("use_dora")),
        use_rslora=bool(document.get("use_rslora")),
        base_model_name_or_path=base if isinstance(base, str) and base else None,
        missing=tuple(f for f in REQUIRED_FIELDS if f not in document),
        problems=tuple(problems),
    )


def _positive_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def _number(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _mapping(document: dict, key: str, problems: list[str]) -> dict:
    value = document.get(key) or {}
    if not isinstance(value, dict):
        problems.append(f"{key} must be a mapping of module pattern to value, got {value!r}")
        return {}
    return dict(value)


def lora_tensor_name(name: str) -> tuple[str, str] | None:
    """`(module, role)` for a PEFT tensor name, role one of A, B, embedding_A, embedding_B; None otherwise.

    Mirrors vLLM's parse_fine_tuned_lora_name: the `base_model.model.` prefix is dropped, so
    `base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight` → (`model.layers.0.self_attn.q_proj`, A).
    """
    parts = vllm_tensor_name(name).split(".")
    if len(parts) >= 3 and parts[-1] == "weight" and parts[-2] in ("lora_A", "lora_B"):
        return ".".join(parts[:-2]), parts[-2][-1]
    if len(parts) >= 2 and parts[-1] in ("lora_embedding_A", "lora_embedding_B"):
        return ".".join(parts[:-1]), "embedding_" + parts[-1][-1]
    return None


def vllm_tensor_name(name: str) -> str:
    """The name vLLM prints for a tensor: every `base_model.model.` removed."""
    return name.replace("base_model.model.", "")


def is_base_embedding_weight(name: str) -> bool:
    """Full embedding copies PEFT saves next to embedding LoRAs; vLLM skips them."""
    return name.endswith((".embed_tokens.base_layer.weight", ".lm_head.base_layer.weight"))


def is_classifier_weight(name: str) -> bool:
    parts = name.split(".")
    return len(parts) >= 2 and parts[-1] in ("weight", "bias") and parts[-2] in ("score", "classifier")


def modules_from_tensors(tensors: tuple[st_header.TensorEntry, ...]) -> tuple[
        tuple[LoraModule, ...], tuple[str, ...], tuple[str, ...]]:
    """Group A/B tensors into modules; also return unparseable and classifier tensor names."""
    halves: dict[str, dict[str, st_header.TensorEntry]] = {}
    unsupported, classifier = [], []
    for tensor in tensors:
        if is_base_embedding_weight(tensor.name):
            continue
        parsed = lora_tensor_name(tensor.name)
        if parsed is None:
            (classifier if is_classifier_weight(tensor.name) else unsupported).append(tensor.name)
            continue
        module, role = parsed
        halves.setdefault(module, {})[role] = tensor
    modules = [_module(name, parts) for name, parts in halves.items()]
    return tuple(sorted(modules, key=_module_order)), tuple(unsupported), tuple(classifier)


def _module(name: str, parts: dict[str, st_header.TensorEntry]) -> LoraModule:
    a = parts.get("A") or parts.get("embedding_A")
    b = parts.get("B") or parts.get("embedding_B")
    present = [t for t in (a, b) if t is not None]
    return LoraModule(
        name=name,
        embedding="embedding_A" in parts or "embedding_B" in parts,
        a_shape=a.shape if a else None,
        b_shape=b.shape if b else None,
        dtype="/".join(sorted({t.dtype for t in present})),
        nbytes=sum(t.nbytes for t in present),
    )


_SUFFIX_ORDER = {s: i for i, s in enumerate(
    ("q_proj", "k_proj", "v_proj", "qkv_proj", "o_proj", "gate_proj", "up_proj", "gate_up_proj", "down_proj"))}


def _module_order(module: LoraModule) -> tuple:
    """Embeddings, then each layer in the model's own order (attention, then MLP), then the rest."""
    layer = module.layer
    return (layer is not None, layer if layer is not None else 0, _SUFFIX_ORDER.get(module.suffix, 99), module.name)


# ---------------------------------------------------------------------------------------------
# Reading


def inspect(path: str | os.PathLike) -> AdapterInfo:
    """Everything knowable about the adapter at `path` from its config and weights header."""
    directory = pathlib.Path(os.path.abspath(os.path.expanduser(path)))
    if not directory.is_dir():
        what = "is not a directory" if directory.exists() else "does not exist"
        raise AdapterNotFound(f"the adapter directory {directory} {what}")
    config, config_problem, config_bytes = _read_config(directory / CONFIG_FILE)
    weights_file, weights_format = _weights_file(directory)
    weights_bytes, weights_problem, read, tensors = 0, None, 0, ()
    if weights_format == "safetensors":
        weights_bytes, weights_problem, read, tensors = _read_safetensors(directory / weights_file)
    elif weights_format is not None:
        weights_bytes = (directory / weights_file).stat().st_size
    modules, unsupported, classifier = modules_from_tensors(tensors)
    return AdapterInfo(
        path=str(directory), config=config, config_problem=config_problem,
        weights_file=weights_file, weights_format=weights_format, weights_bytes=weights_bytes,
        weights_problem=weights_problem, tensors=tensors, modules=modules,
        unsupported_tensors=unsupported, classifier_tensors=classifier, bytes_read=config_bytes + read,
    )


def _read_config(file: pathlib.Path) -> tuple[AdapterConfig | None, Problem | None, int]:
    try:
        info = file.stat()
    except FileNotFoundError:
        return None, Problem("missing", f"{file.name} is missing"), 0
    if not stat.S_ISREG(info.st_mode):
        # open() inside vLLM fails on a directory; other special files are not opened here at all
        detail = f"[Errno 21] Is a directory: '{file}'" if stat.S_ISDIR(info.st_mode) else ""
        return None, Problem("not-a-file", f"{file.name} is not a regular file", detail), 0
    if info.st_size > MAX_CONFIG_BYTES:
        too_large = f"{file.name} is {info.st_size:,} bytes, over the {MAX_CONFIG_BYTES:,}-byte limit"
        return None, Problem("too-large", too_large), 0
    data = file.read_bytes()
    try:
        document = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        return None, Problem("invalid-json", f"{file.name} is not valid JSON ({exc})", str(exc)), len(data)
    if not isinstance(document, dict):
        return None, Problem(
            "not-an-object", f"{file.name} holds a JSON {type(document).__name__}, not an object",
            f"{type(document).__name__} indices must be integers or slices, not str",
        ), len(data)
    return parse_adapter_config(document), None, len(data)


def _weights_file(directory: pathlib.Path) -> tuple[str | None, str | None]:
    for name, kind in WEIGHT_FILES:
        if (directory / name).is_file():
            return name, kind
    return None, None


def _read_safetensors(file: pathlib.Path) -> tuple[int, Problem | None, int, tuple]:
    result = st_header.read_header(file)
    if result.error is not None:
        detail = f"Error while deserializing header: {result.error.library_text}"
        problem = Problem(result.error.kind, f"{file.name}: {result.error.message}", detail)
        return result.file_size, problem, result.bytes_read, ()
    return result.file_size, None, result.bytes_read, result.header.tensors
