"""fleet.yaml → FleetSpec, or every problem of the file as located diagnostics.

Reading the file, the YAML source map and (for a local base model) its config.json are the only
I/O here. pydantic errors are translated from their structured fields (type, loc, ctx), never from
their English text.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
import re

import pydantic

from fleetspec import errors
from fleetspec.errors import Diagnostic, Location, Severity
from fleetspec.spec import limits, models, paths, pydantic_errors, yaml_source

format_path = paths.format_path


@dataclasses.dataclass(frozen=True)
class LoadedFleet:
    spec: models.FleetSpec
    file: str
    base_dir: pathlib.Path
    source: yaml_source.SourceMap
    text: str

    def locate(self, path: tuple) -> Location | None:
        return self.source.locate(path)

    def diagnostic(self, severity: Severity, code: str, path: tuple, message: str, hint: str = "") -> Diagnostic:
        """A diagnostic about `path`, located in this file."""
        return Diagnostic(severity, code, format_path(path), message, hint, self.locate(path))

    def resolve_path(self, value: str) -> pathlib.Path:
        """A path from the file, relative to the file's directory unless absolute."""
        candidate = pathlib.Path(value).expanduser()
        return candidate if candidate.is_absolute() else self.base_dir / candidate


def load_path(path: str | pathlib.Path) -> LoadedFleet:
    file = pathlib.Path(path)
    try:
        size = file.stat().st_size
        if size > yaml_source.MAX_DOCUMENT_BYTES:
            # Refuse before reading it whole: only the top-level keys are scanned, line by line, to
            # say which part is large.
            raise errors.SpecError([yaml_source.too_large(size, str(path), _section_sizes(file, size)).diagnostic])
        text = file.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise errors.SpecError([Diagnostic(
            Severity.ERROR, "file-not-found", "", f"the fleet file {path} does not exist",
            "check the path, or create one from examples/",
        )]) from None
    except (UnicodeDecodeError, IsADirectoryError, PermissionError) as exc:
        raise errors.SpecError([Diagnostic(
            Severity.ERROR, "file-unreadable", "", f"the fleet file {path} cannot be read: {exc.__class__.__name__}",
            "a fleet file is UTF-8 text readable by you",
        )]) from None
    return load_text(text, str(path), base_dir=file.resolve().parent)


_TOP_KEY = re.compile(rb"^([A-Za-z_][A-Za-z0-9_-]*)[ \t]*:", re.MULTILINE)


def _section_sizes(file: pathlib.Path, size: int) -> dict[str, int] | None:
    """Bytes per top-level key of a block-style file, read a MiB at a time; None for files too big to
    be worth scanning."""
    if size > 16 * yaml_source.MAX_DOCUMENT_BYTES:
        return None
    sizes: dict[str, int] = {}
    key, at_line_start = "", True
    with file.open("rb") as handle:
        while chunk := handle.read(2**20):
            chunk += handle.readline(2**20)  # end on a line boundary where the line is not huge
            position = 0
            for match in _TOP_KEY.finditer(chunk):
                if match.start() == 0 and not at_line_start:
                    continue  # the middle of a line cut by the previous chunk
                sizes[key] = sizes.get(key, 0) + match.start() - position
                key, position = match.group(1).decode(), match.start()
            sizes[key] = sizes.get(key, 0) + len(chunk) - position
            at_line_start = chunk.endswith(b"\n")
    sizes.pop("", None)
    return sizes


def load_text(text: str, file: str = "fleet.yaml", base_dir: pathlib.Path | None = None) -> LoadedFleet:
    base_dir = base_dir or pathlib.Path.cwd()
    try:
        data, source = yaml_source.parse(text, file)
    except yaml_source.YamlProblem as problem:
        raise errors.SpecError([problem.diagnostic]) from None
    if not isinstance(data, dict):
        raise errors.SpecError([Diagnostic(
            Severity.ERROR, "not-a-mapping", "", "a fleet file must be a mapping of keys (name, base_model, ...)",
            "start from examples/ or run `fleetspec schema`", Location(file, 1, 1),
        )])
    config_diagnostics = _read_local_config(data, base_dir, source)
    try:
        spec = models.FleetSpec.model_validate(data, context={})  # the context carries the error budget
    except pydantic.ValidationError as exc:
        diagnostics = pydantic_errors.to_diagnostics(exc.errors(), data, source)
        raise errors.SpecError(_dedupe(diagnostics + config_diagnostics)) from None
    if config_diagnostics:
        raise errors.SpecError(config_diagnostics)
    over = limits.check(spec, source.locate)
    if over:  # no later stage may see a fleet whose totals are unbounded
        raise errors.SpecError(over)
    return LoadedFleet(spec, file, base_dir, source, text)


def _dedupe(diagnostics: list[Diagnostic]) -> list[Diagnostic]:
    seen, result = set(), []
    for d in diagnostics:
        key = (d.path, d.code, d.message)
        if key not in seen:
            seen.add(key)
            result.append(d)
    return result


_CONFIG_KEYS = set(models.Architecture.model_fields)


def _read_local_config(data: dict, base_dir: pathlib.Path, source) -> list[Diagnostic]:
    """For a local base model without inline facts, copy its config.json facts into the data."""
    base = data.get("base_model")
    if not isinstance(base, dict) or base.get("architecture") is not None or not isinstance(base.get("id"), str):
        return []
    model_dir = pathlib.Path(base["id"]).expanduser()
    if not model_dir.is_absolute():
        if not base["id"].startswith((".", "/", "~")):
            return []  # an HF id like org/name, even if a same-named folder happens to exist
        model_dir = base_dir / model_dir
    config = model_dir / "config.json"
    where = source.locate(("base_model", "id"))
    if not config.is_file():
        return [Diagnostic(
            Severity.ERROR, "local-model-config", "base_model.id",
            f"the local model directory {model_dir} has no config.json",
            "point base_model.id at a Hugging Face model directory, or add base_model.architecture", where,
        )]
    try:
        raw = json.loads(config.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        return [Diagnostic(
            Severity.ERROR, "local-model-config", "base_model.id", f"{config} is not readable JSON ({exc})",
            "fix the file, or add base_model.architecture to the fleet", where,
        )]
    text_config = raw.get("text_config") if isinstance(raw.get("text_config"), dict) else {}
    merged = {**raw, **text_config}
    architecture = {k: v for k, v in merged.items() if k in _CONFIG_KEYS and v is not None}
    vision = raw.get("vision_config")
    if isinstance(vision, dict):
        architecture["vision_config"] = {k: v for k, v in vision.items() if k in _VISION_KEYS and v is not None}
    scope = _quantization_scope(raw.get("quantization_config"), architecture)
    if scope is not None:
        architecture["quantization_scope"] = scope
    base["architecture"] = architecture
    return []


_VISION_KEYS = set(models.VisionConfig.model_fields)
# Module-name fragments of quantization_config.modules_to_not_convert / ignore → the planner's kinds.
# The first fragment a name contains decides (a vision tower's self_attn is the tower's).
_SKIPPED_KINDS = (("vision", "vision"), ("visual", "vision"), ("multi_modal_projector", "vision"),
                  ("shared_expert", "shared_experts"), ("experts", "experts"), ("self_attn", "attention"),
                  ("attn", "attention"), ("mlp", "mlp"))


def _quantization_scope(config, architecture: dict) -> list[str] | None:
    """What a checkpoint's quantization_config leaves quantized, from the module names it skips
    (gpt-oss: `model.layers.*.self_attn` → attention stays in bf16). None when it names none."""
    if not isinstance(config, dict):
        return None
    skipped = config.get("modules_to_not_convert") or config.get("ignore") or config.get("ignored_layers")
    if not isinstance(skipped, list) or not skipped:
        return None
    kinds = {"attention"}
    moe = architecture.get("num_local_experts") or architecture.get("num_experts") or architecture.get("n_routed_experts")
    if not moe or architecture.get("first_k_dense_replace"):
        kinds |= {"mlp"}  # dense MLPs exist
    if moe:
        kinds |= {"experts"}
        if architecture.get("n_shared_experts") or architecture.get("shared_expert_intermediate_size"):
            kinds |= {"shared_experts"}
    for name in (str(n) for n in skipped):
        for fragment, kind in _SKIPPED_KINDS:
            if fragment in name and not name.endswith((".router", ".gate")):
                kinds.discard(kind)
                break
    return sorted(kinds)
