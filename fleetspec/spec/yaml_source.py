"""YAML → plain Python values plus a source map from field paths to file positions.

PyYAML is used only to compose the node graph (which keeps line/column marks); values are built
here so that:
- duplicate keys are errors instead of "last one wins";
- scalars follow the YAML 1.2 core schema, not PyYAML's YAML 1.1: `yes`, `on`, `1_000` and `2025-06-06`
  stay strings and only true/false are booleans (what people writing adapter tags and keywords
  expect), while `1e3`, `0o17` and `0x1F` are numbers and `017` is seventeen;
- anchors/aliases are expanded under a node budget, so an alias bomb is refused in milliseconds;
- tags other than the core schema's (`!!str`, `!!int`, `!!float`, `!!bool`, `!!null`, `!!map`, `!!seq`)
  are refused: `!!python/object`, `!!timestamp`, custom `!foo`.
"""

from __future__ import annotations

import dataclasses
import math
import re

import yaml

from fleetspec.errors import Diagnostic, Location, Severity

MAX_DOCUMENT_BYTES = 4 * 1024 * 1024
MAX_NODES = 200_000  # after alias expansion; a 1,000-specialist fleet is ~30,000

_STANDARD = "tag:yaml.org,2002:"
_MERGE_TAG = _STANDARD + "merge"
# An untagged plain scalar. PyYAML's resolver is YAML 1.1's (`1e3` is text there, `yes` and `1_000` are
# not), so the loader below keeps it from resolving anything: these scalars are resolved here, by YAML
# 1.2's core schema, and only quoting or an explicit tag says otherwise.
_PLAIN_TAG = "tag:fleetspec.dev,2025:plain"
_CORE_TAGS = {_STANDARD + t for t in ("str", "int", "float", "bool", "null")}  # YAML 1.2 core schema


class _Loader(getattr(yaml, "CSafeLoader", yaml.SafeLoader)):
    def resolve(self, kind, value, implicit):
        if kind is yaml.ScalarNode and implicit[0]:
            return _MERGE_TAG if value == "<<" else _PLAIN_TAG
        return super().resolve(kind, value, implicit)


# The YAML 1.2 core schema's regular expressions (spec 1.2.2, section 10.3.2), nothing looser.
_NULL = re.compile(r"^(?:~|null|Null|NULL|)$")
_BOOL = {"true": True, "True": True, "TRUE": True, "false": False, "False": False, "FALSE": False}
_INT = re.compile(r"^(?:[-+]?[0-9]+|0o[0-7]+|0x[0-9a-fA-F]+)$")
_FLOAT = re.compile(r"^[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?$")
_SPECIAL_FLOAT = {
    **{sign + inf: (-math.inf if sign == "-" else math.inf) for sign in ("", "+", "-") for inf in (".inf", ".Inf", ".INF")},
    **{nan: math.nan for nan in (".nan", ".NaN", ".NAN")},
}
_TAG_WORDS = {"int": "a whole number", "float": "a number", "bool": "true or false", "null": "null"}

Path = tuple  # of str (mapping keys) and int (list indices)


@dataclasses.dataclass(frozen=True)
class SourceMap:
    """Field path → location of the key (for mapping entries) or of the node (list items, root)."""

    file: str
    positions: dict[Path, Location]
    plain_scalars: dict[Path, str]  # unquoted scalars as written (for "put it in quotes" hints)

    def locate(self, path: Path) -> Location | None:
        """The location of `path`, or of its closest ancestor present in the file."""
        path = tuple(path)
        while True:
            if path in self.positions:
                return self.positions[path]
            if not path:
                return None
            path = path[:-1]


class YamlProblem(Exception):
    def __init__(self, diagnostic: Diagnostic):
        super().__init__(diagnostic.message)
        self.diagnostic = diagnostic


def _location(file: str, mark) -> Location:
    return Location(file, mark.line + 1, mark.column + 1)


def parse(text: str, file: str) -> tuple[object, SourceMap]:
    """Parse one YAML document; raise YamlProblem with a located diagnostic on any failure."""
    size = len(text.encode("utf-8", errors="replace"))
    if size > MAX_DOCUMENT_BYTES:
        raise YamlProblem(Diagnostic(
            Severity.ERROR, "document-too-large", "",
            f"the file is {size / 2**20:.1f} MiB; fleet files are limited to {MAX_DOCUMENT_BYTES // 2**20} MiB",
            "split large routing maps into a `map_file` next to the fleet file",
            Location(file, 1, 1),
        ))
    try:
        nodes = list(yaml.compose_all(text, Loader=_Loader))
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        problem = exc.problem or "the YAML syntax is invalid"
        hint = "check indentation and quoting on this line and the one above"
        if "\t" in text.splitlines()[mark.line] if mark and mark.line < len(text.splitlines()) else False:
            hint = "YAML does not allow tabs for indentation: use spaces"
        raise YamlProblem(Diagnostic(
            Severity.ERROR, "yaml-syntax", "", f"the file is not valid YAML: {problem}", hint,
            _location(file, mark) if mark else Location(file, 1, 1),
        )) from None
    except yaml.YAMLError as exc:  # reader errors: bad bytes, control characters
        raise YamlProblem(Diagnostic(
            Severity.ERROR, "yaml-syntax", "", f"the file could not be read as YAML: {exc}",
            "save the file as UTF-8 text", Location(file, 1, 1),
        )) from None
    if len(nodes) > 1:
        raise YamlProblem(Diagnostic(
            Severity.ERROR, "multiple-documents", "", "the file holds several YAML documents; a fleet is one",
            "remove the extra `---` separators", _location(file, nodes[1].start_mark),
        ))
    if not nodes or nodes[0] is None:
        raise YamlProblem(Diagnostic(
            Severity.ERROR, "empty-document", "", "the file is empty",
            "start from examples/ or run `fleetspec schema` to see the fields", Location(file, 1, 1),
        ))
    builder = _Builder(file)
    value = builder.build(nodes[0], ())
    return value, SourceMap(file, builder.positions, builder.plain_scalars)


class _Builder:
    def __init__(self, file: str):
        self.file = file
        self.positions: dict[Path, Location] = {}
        self.plain_scalars: dict[Path, str] = {}
        self.budget = MAX_NODES

    def _fail(self, code: str, node, path: Path, message: str, hint: str) -> YamlProblem:
        from fleetspec.spec import paths

        return YamlProblem(Diagnostic(
            Severity.ERROR, code, paths.format_path(path), message, hint, _location(self.file, node.start_mark)
        ))

    def build(self, node, path: Path):
        self.budget -= 1
        if self.budget < 0:
            raise self._fail(
                "too-many-nodes", node, path,
                f"the file expands to more than {MAX_NODES:,} values (an alias/anchor bomb?)",
                "remove deeply nested aliases (*name); a fleet file never needs this many values",
            )
        self.positions.setdefault(path, _location(self.file, node.start_mark))
        if isinstance(node, yaml.ScalarNode):
            return self._scalar(node, path)
        if isinstance(node, yaml.SequenceNode):
            self._check_tag(node, path, _STANDARD + "seq")
            return [self.build(item, (*path, i)) for i, item in enumerate(node.value)]
        self._check_tag(node, path, _STANDARD + "map")
        return self._mapping(node, path)

    def _check_tag(self, node, path: Path, expected: str) -> None:
        if node.tag != expected:
            raise self._fail(
                "yaml-tag", node, path, f"the YAML tag `{node.tag}` is not supported in a fleet file",
                "remove the tag; fleet files hold plain mappings, lists and scalars",
            )

    def _mapping(self, node, path: Path) -> dict:
        result: dict = {}
        merged: dict = {}
        for key_node, value_node in node.value:
            if key_node.tag == _MERGE_TAG:
                merged.update(self._merge_source(value_node, path))
                continue
            if not isinstance(key_node, yaml.ScalarNode):
                raise self._fail("bad-key", key_node, path, "a mapping key must be a plain word",
                                 "write keys as `name: value`")
            key = str(self._scalar(key_node, path, key=True))
            child = (*path, key)
            if key in result:
                first = self.positions.get(child)
                raise self._fail(
                    "duplicate-key", key_node, child,
                    f"the key `{key}` appears twice in the same mapping"
                    + (f" (first on line {first.line})" if first else ""),
                    "remove one of them; YAML would otherwise silently keep only the last",
                )
            self.positions[child] = _location(self.file, key_node.start_mark)
            result[key] = self.build(value_node, child)
        for key, value in merged.items():
            result.setdefault(key, value)
        return result

    def _merge_source(self, node, path: Path) -> dict:
        sources = node.value if isinstance(node, yaml.SequenceNode) else [node]
        merged: dict = {}
        for source in sources:
            if not isinstance(source, yaml.MappingNode):
                raise self._fail("bad-merge", source, path, "`<<` must merge a mapping (an anchored block)",
                                 "write `<<: *name` where `&name` marks a mapping")
            for key, value in self._mapping(source, path).items():
                merged.setdefault(key, value)
        return merged

    def _scalar(self, node, path: Path, key: bool = False):
        text = node.value
        if node.tag == _PLAIN_TAG:
            if not key:  # `path` is the mapping's own for a key; only values are shown in hints
                self.plain_scalars[path] = text
            return resolve_plain(text)
        if node.tag not in _CORE_TAGS:
            raise self._fail(
                "yaml-tag", node, path, f"the YAML tag `{node.tag}` is not supported in a fleet file",
                "remove the tag; write the value as plain text",
            )
        if node.tag == _STANDARD + "str":  # quoted, a block scalar, or an explicit !!str: always text
            return text
        return self._tagged(node, path, node.tag.removeprefix(_STANDARD))

    def _tagged(self, node, path: Path, tag: str):
        """An explicit `!!int`, `!!float`, `!!bool` or `!!null`: the text must be one of that type's forms."""
        text = node.value
        value = resolve_plain(text)
        if tag == "float" and isinstance(value, int) and not isinstance(value, bool):
            return float(value)
        wanted = {"int": int, "float": float, "bool": bool, "null": type(None)}[tag]
        if isinstance(value, wanted) and (tag != "int" or not isinstance(value, bool)):
            return value
        raise self._fail(
            "yaml-tag", node, path, f"`!!{tag} {text}`: `{text}` is not {_TAG_WORDS[tag]} in YAML 1.2",
            f"write {_TAG_WORDS[tag]}, or remove the tag",
        )


def resolve_plain(text: str):
    """YAML 1.2 core schema for an untagged, unquoted scalar: null, bool, int (also 0o/0x), float (also
    1e3, .inf, .nan), else text. So `yes`, `on`, `1_000`, `0b1`, `2025-06-06` and `-0x1F` stay text, and
    `017` is seventeen."""
    if _NULL.match(text):
        return None
    if text in _BOOL:
        return _BOOL[text]
    if _INT.match(text):
        return int(text, 0) if text.startswith(("0x", "0o")) else int(text, 10)
    if _FLOAT.match(text):
        return float(text)
    if text in _SPECIAL_FLOAT:
        return _SPECIAL_FLOAT[text]
    return text
