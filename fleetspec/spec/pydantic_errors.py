"""Translate one pydantic error (type, loc, ctx) into a located, plain-language Diagnostic."""

from __future__ import annotations

import difflib
import types
import typing

import pydantic

from fleetspec.errors import Diagnostic, Severity
from fleetspec.spec import models, paths, yaml_source

# Union members tagged by a discriminator put the tag into `loc`; users never wrote it.
_TAGGED_UNIONS = {("routing", "rules", int), ("gpus",)}

_TYPE_WORDS = {
    "int_type": "a whole number", "int_parsing": "a whole number", "int_from_float": "a whole number",
    "float_type": "a number", "float_parsing": "a number", "bool_type": "true or false",
    "bool_parsing": "true or false", "string_type": "text", "list_type": "a list",
    "dict_type": "a mapping of keys", "model_type": "a mapping of keys", "model_attributes_type": "a mapping of keys",
    "tuple_type": "a list", "none_required": "nothing (null)",
}

# YAML 1.1's other spellings of a boolean: text in YAML 1.2, which fleet files follow.
_YAML_11_TRUE = {"yes", "y", "on", "1"}
_YAML_11_FALSE = {"no", "n", "off", "0"}

_PATTERN_WORDS = {
    models.NAME_PATTERN: ("a lower-case name of letters, digits and dashes (it becomes container and "
                          "Kubernetes names)", "e.g. `python-lora`"),
    models.ADAPTER_NAME_PATTERN: ("a name of letters, digits, `.`, `_` and `-`", "e.g. `python-lora`"),
    models.VERSION_PATTERN: ("a version of letters, digits, `.`, `_`, `+` and `-`", "e.g. `1.2.0`"),
    models.ENV_NAME_PATTERN: ("an environment variable name", "e.g. `HF_TOKEN`"),
    models.QUANTITY_PATTERN: ("a storage size in Kubernetes units", "e.g. `20Gi` (binary units: Ki, Mi, Gi, Ti)"),
}


def clean_loc(loc: tuple) -> tuple:
    """Drop the discriminator tags pydantic inserts after tagged-union fields."""
    result: list = []
    skipped_at = -1
    for part in loc:
        shape = tuple(int if isinstance(p, int) else p for p in result)
        if shape in _TAGGED_UNIONS and isinstance(part, str) and skipped_at != len(result):
            skipped_at = len(result)  # one tag per union position; the next segment is a real key
            continue
        result.append(part)
    return tuple(result)


def to_diagnostics(raw_errors: list[dict], data: object, source) -> list[Diagnostic]:
    """All errors of one validation, minus "missing `to`" when the same mapping has a typo `too`."""
    typos = {(tuple(e["loc"][:-1]), str(e["loc"][-1])) for e in raw_errors if e["type"] == "extra_forbidden"}
    kept = [e for e in raw_errors if not (e["type"] == "missing" and _explained_by_typo(e, typos))]
    found = [to_diagnostic(e, data, source) for e in kept]
    # Past the error budget every failing object says so once; one such line is enough.
    first = next((d for d in found if d.message == models.TOO_MANY_ERRORS), None)
    return [d for d in found if d.message != models.TOO_MANY_ERRORS] + ([first] if first else [])


def _explained_by_typo(error: dict, typos: set) -> bool:
    parent, field = tuple(error["loc"][:-1]), str(error["loc"][-1])
    return any(p == parent and difflib.get_close_matches(field, [key], cutoff=0.6) for p, key in typos)


def to_diagnostic(error: dict, data: object, source) -> Diagnostic:
    raw_loc = tuple(error["loc"])
    loc = clean_loc(raw_loc)
    kind = error["type"]
    value = error.get("input")
    ctx = error.get("ctx") or {}
    where = source.locate(loc)
    message, hint, code = _explain(kind, loc, raw_loc, value, ctx, source)
    return Diagnostic(Severity.ERROR, code, paths.format_path(loc), message, hint, where)


def _explain(kind: str, loc: tuple, raw_loc: tuple, value, ctx: dict, source) -> tuple[str, str, str]:
    field = str(loc[-1]) if loc else "the file"
    if kind == "extra_forbidden":
        allowed = sorted(_fields_at(raw_loc[:-1]))
        guess = difflib.get_close_matches(field, allowed, n=1, cutoff=0.6)
        hint = f"did you mean `{guess[0]}`?" if guess else (
            "allowed keys here: " + ", ".join(allowed) if allowed else "remove it")
        return f"unknown key `{field}`", hint, "unknown-key"
    if kind == "missing":
        return f"the required key `{field}` is missing", f"add `{field}:` here", "missing-key"
    if kind in ("literal_error", "enum"):
        choices = _literal_choices(raw_loc)
        guess = difflib.get_close_matches(str(value), choices, n=1, cutoff=0.5) if choices else []
        shown = ", ".join(choices) if len(choices) <= 12 else ", ".join(choices[:12]) + ", ..."
        hint = f"did you mean `{guess[0]}`?" if guess else f"use one of: {shown}"
        return f"`{value}` is not an allowed value for {field}", hint, "bad-value"
    if kind in _TYPE_WORDS:
        return _type_problem(kind, loc, value, source)
    if kind in ("greater_than_equal", "greater_than", "less_than_equal", "less_than"):
        return _bound_problem(kind, _field_name(loc), value, ctx)
    if kind in ("too_long", "string_too_long"):
        return _length_problem(kind, _field_name(loc), value, ctx)
    if kind == "finite_number":
        return (f"{field} must be a finite number, got {_show(value)}", f"write a number for {field}, "
                "not .inf or .nan", "out-of-range")
    if kind == "string_pattern_mismatch":
        words, example = _PATTERN_WORDS.get(ctx.get("pattern"), ("a value of the expected form", ""))
        return f"`{value}` is not {words}", example, "bad-value"
    if kind == "too_short":
        need = ctx.get("min_length", 1)
        what = "character" if isinstance(value, str) else "item"
        return f"{field} needs at least {need} {what}(s)", f"add a {what} to {field}", "bad-value"
    if kind == "value_error":
        problem = ctx.get("error")
        return str(problem or "the value is invalid"), getattr(problem, "hint", ""), "bad-value"
    if kind == "rule-kind":
        return (f"this rule has no recognisable matcher (needs exactly one of {', '.join(models.RULE_KINDS)})",
                "start the rule with one of them, e.g. `keywords: [python]` and `to: python-lora`", "bad-rule")
    if kind == "dict_type" or kind.endswith("_type"):
        return f"{field} has the wrong type", "", "wrong-type"
    return f"{field} is invalid ({kind})", "", "bad-value"


def _type_problem(kind: str, loc: tuple, value, source) -> tuple[str, str, str]:
    wanted = _TYPE_WORDS[kind]
    shown = _show(value)
    hint = ""
    if kind == "string_type" and isinstance(value, int | float | bool):
        # The loader keeps only spellings it cannot rebuild (`1e3`); `16` and `true` are written as shown.
        written = source.plain_scalars.get(loc) or yaml_source.canonical(value)
        hint = f'YAML reads {written} as a {type(value).__name__}; put it in quotes: "{written}"'
    elif kind in ("bool_type", "bool_parsing"):
        hint = _bool_hint(loc, value, source)
    elif kind == "list_type" and isinstance(value, str):
        hint = f"write a list: [{value}]"
    elif kind in ("int_parsing", "int_from_float") and isinstance(value, str | float):
        hint = "write a whole number without quotes or units"
    return f"expected {wanted}, got {shown}", hint, "wrong-type"


def _bool_hint(loc: tuple, value, source) -> str:
    written = source.plain_scalars.get(loc)
    if written is None and not isinstance(value, str):  # a number: plain, written as shown
        written = yaml_source.canonical(value)
    if written is None:  # quoted (or not from the file at all)
        return f"remove the quotes: {value.lower()}" if isinstance(value, str) and value.lower() in ("true", "false") \
            else "write true or false"
    meant = "true" if written.lower() in _YAML_11_TRUE else "false" if written.lower() in _YAML_11_FALSE else ""
    if not meant:
        return "write true or false"
    return f"YAML 1.2 reads {written} as {'text' if isinstance(value, str) else 'a number'}, not a boolean; write {meant}"


def _field_name(loc: tuple) -> str:
    """The field a list item or mapping value belongs to: `ids` for gpus[0].ids[3]."""
    return next((str(p) for p in reversed(loc) if isinstance(p, str)), "the file")


def _number(bound, value) -> str:
    if isinstance(value, float) and isinstance(bound, int):
        bound = float(bound)  # `at most 1.0` for a fraction, `at most 4,096` for a count
    return f"{bound:,}" if isinstance(bound, int) else str(bound)


def _bound_problem(kind: str, field: str, value, ctx: dict) -> tuple[str, str, str]:
    words = {"greater_than_equal": ("at least", "ge"), "greater_than": ("more than", "gt"),
             "less_than_equal": ("at most", "le"), "less_than": ("less than", "lt")}[kind]
    bound = _number(ctx.get(words[1]), value)
    reason = models.LIMIT_REASONS.get(field) if kind.startswith("less") else None
    message = f"{field} must be {words[0]} {bound}, got {_show(value)}"
    if reason:
        message += f"; fleetspec limits it because {reason}"
    return message, f"set {field} to a value {words[0]} {bound}", "out-of-range"


def _length_problem(kind: str, field: str, value, ctx: dict) -> tuple[str, str, str]:
    limit = ctx.get("max_length")
    if kind == "string_too_long":
        return (f"{field} is {len(value):,} characters long; at most {limit:,} are allowed, because "
                f"{models.LIMIT_REASONS.get(field, models.LENGTH_REASON)}", f"shorten {field}", "too-long")
    count = ctx.get("actual_length") or (len(value) if hasattr(value, "__len__") else None)
    reason = models.LIMIT_REASONS.get(field, models.LENGTH_REASON)
    return (f"{field} has {f'{count:,}' if isinstance(count, int) else 'too many'} entries; at most {limit:,} are allowed, because {reason}",
            _split_hint(field), "too-long")


def _split_hint(field: str) -> str:
    return {
        "specialists": "split the fleet into several fleet files, each with its own servers and specialists",
        "servers": "split the fleet into several fleet files",
        "gpus": "describe identical GPUs as one group with a `count`",
        "rules": "merge rules that send prompts to the same specialist",
    }.get(field, f"shorten {field}")


def _show(value) -> str:
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    if value is None:
        return "nothing (null)"
    text = repr(value) if isinstance(value, str) else str(value)
    return f"`{text[:60]}`"


# --- walking the models along a loc ---------------------------------------------------------

def _unwrap(annotation) -> list:
    """The concrete types an annotation may hold (Optional/Union/Annotated/list/dict peeled)."""
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        return _unwrap(typing.get_args(annotation)[0])
    if origin in (typing.Union, types.UnionType):
        return [t for arg in typing.get_args(annotation) for t in _unwrap(arg)]
    return [annotation]


def _members(annotation) -> list:
    """Union members with their own Annotated[..., Tag] wrappers kept."""
    if typing.get_origin(annotation) is typing.Annotated:
        annotation = typing.get_args(annotation)[0]
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return list(typing.get_args(annotation))
    return [annotation]


def _step(annotation, part):
    """The annotation one `loc` segment further down, or None."""
    for member in _members(annotation):
        if isinstance(part, str) and _tag_of(member) == part:
            return typing.get_args(member)[0]
    for candidate in _unwrap(annotation):
        origin = typing.get_origin(candidate)
        if isinstance(candidate, type) and issubclass(candidate, pydantic.BaseModel):
            field = candidate.model_fields.get(part) if isinstance(part, str) else None
            if field is not None:
                return field.annotation
        elif origin is list and isinstance(part, int):
            return typing.get_args(candidate)[0]
        elif origin is dict and isinstance(part, str):
            return typing.get_args(candidate)[1]
    return None


def _tag_of(annotation) -> str | None:
    if typing.get_origin(annotation) is typing.Annotated:
        for meta in typing.get_args(annotation)[1:]:
            if isinstance(meta, pydantic.Tag):
                return meta.tag
    return None


def _annotation_at(raw_loc: tuple):
    annotation = models.FleetSpec
    for part in raw_loc:
        annotation = _step(annotation, part)
        if annotation is None:
            return None
    return annotation


def _fields_at(raw_loc: tuple) -> list[str]:
    annotation = _annotation_at(raw_loc)
    if annotation is None:
        return []
    names: list[str] = []
    for candidate in _unwrap(annotation):
        if isinstance(candidate, type) and issubclass(candidate, pydantic.BaseModel):
            names.extend(candidate.model_fields)
    return names


def _literal_choices(raw_loc: tuple) -> list[str]:
    annotation = _annotation_at(raw_loc)
    choices: list[str] = []
    for candidate in _unwrap(annotation) if annotation is not None else []:
        if typing.get_origin(candidate) is typing.Literal:
            choices.extend(str(c) for c in typing.get_args(candidate))
    return choices
