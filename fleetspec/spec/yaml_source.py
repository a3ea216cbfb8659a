"""YAML → plain Python values plus a source map from field paths to file positions.

PyYAML (libyaml when installed) only produces the parser's event stream; values are built here, one
event at a time, so that:
- every budget is enforced while parsing, before anything else is built: the number of values, the
  nesting depth and the values that aliases (`*name`) copy in. A refused file costs what was read up
  to the point of refusal, never a whole composed document (docs/spec.md, "Limits");
- an alias bomb is told apart from a large honest file: aliases are counted by what they expand to,
  under their own budget, while values written out in the file have a larger one;
- duplicate keys are errors instead of "last one wins";
- scalars follow the YAML 1.2 core schema, not PyYAML's YAML 1.1: `yes`, `on`, `1_000` and `2025-06-06`
  stay strings and only true/false are booleans (what people writing adapter tags and keywords
  expect), while `1e3`, `0o17` and `0x1F` are numbers and `017` is seventeen;
- tags other than the core schema's (`!!str`, `!!int`, `!!float`, `!!bool`, `!!null`, `!!map`, `!!seq`)
  are refused: `!!python/object`, `!!timestamp`, custom `!foo`.

Positions are kept compactly (one integer per mapping key, one array slot per list item), so the
source map of a 10,000-specialist fleet stays a few megabytes.
"""

from __future__ import annotations

import array
import dataclasses
import math
import re

import yaml

from fleetspec.errors import Diagnostic, Location, Severity

# A 10,000-specialist fleet with 20 keywords each is ~4.4 MiB in block YAML; 16 MiB leaves room for
# examples and long keyword lists while a refused file still costs well under 200 MiB to read.
MAX_DOCUMENT_BYTES = 16 * 1024 * 1024
# Values written out in the file (every scalar, list and mapping). 10,000 specialists × 20 keywords
# is ~310,000 (40 keywords each, ~510,000); a refusal at the limit has built at most this many small values.
MAX_NODES = 600_000
# Values that aliases copy in. Honest files alias a few shared blocks (server settings, keyword
# lists); an alias bomb (aliases of aliases of aliases) expands to billions.
MAX_ALIAS_VALUES = 100_000
# A fleet file nests about eight levels deep (routing.rules[0].hash_clusters.map.key); 64 leaves room
# for inline architectures and anchors while refusing `[[[[...]]]]` before it costs anything.
MAX_DEPTH = 64

_STANDARD = "tag:yaml.org,2002:"
_CORE_TAGS = {_STANDARD + t for t in ("str", "int", "float", "bool", "null")}  # YAML 1.2 core schema
_Parser = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # only its event stream is used

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
# Plain words YAML 1.1 read as booleans: remembered as written so a boolean field can say so.
_YAML_11_BOOL_WORDS = {"yes", "no", "on", "off", "y", "n"}

# Where the bulk of a too-large file usually is, and what to do about it.
_SPLIT_HINTS = {
    "specialists": "split the fleet into several fleet files (one per group of servers and the specialists "
                   "they host), or trim long keyword and example lists",
    "routing": "move large hash-cluster maps into a `map_file` next to the fleet file",
    "servers": "split the fleet into several fleet files, one per group of servers",
    "gpus": "describe identical GPUs as one group with a `count` instead of one entry each",
}
_GENERIC_SPLIT = "split the fleet into several fleet files"

Path = tuple  # of str (mapping keys) and int (list indices)


def _mark(mark) -> int:
    return (mark.line << 32) | mark.column


@dataclasses.dataclass(frozen=True)
class SourceMap:
    """Field path → location of the key (for mapping entries) or of the node (list items, root)."""

    file: str
    marks: dict[Path, int]  # mapping keys and the root: line << 32 | column, 0-based
    item_marks: dict[Path, array.array]  # a list's path → the mark of each of its items
    plain_scalars: dict[Path, str]  # unquoted non-text scalars as written (for "put it in quotes" hints)

    def locate(self, path: Path) -> Location | None:
        """The location of `path`, or of its closest ancestor present in the file."""
        path = tuple(path)
        while True:
            mark = self.marks.get(path)
            if mark is None and path and isinstance(path[-1], int):
                items = self.item_marks.get(path[:-1])
                if items is not None and 0 <= path[-1] < len(items):
                    mark = items[path[-1]]
            if mark is not None:
                return Location(self.file, (mark >> 32) + 1, (mark & 0xFFFFFFFF) + 1)
            if not path:
                return None
            path = path[:-1]


class YamlProblem(Exception):
    def __init__(self, diagnostic: Diagnostic):
        super().__init__(diagnostic.message)
        self.diagnostic = diagnostic


def _location(file: str, mark) -> Location:
    return Location(file, mark.line + 1, mark.column + 1)


def too_large(size: int, file: str, sections: dict[str, int] | None = None) -> YamlProblem:
    """The refusal of a file over MAX_DOCUMENT_BYTES, naming its biggest top-level section if known."""
    biggest = max(sections, key=sections.get) if sections else None
    where = f"; `{biggest}` takes {sections[biggest] / 2**20:.1f} MiB of it" if biggest else ""
    return YamlProblem(Diagnostic(
        Severity.ERROR, "document-too-large", "",
        f"the file is {size / 2**20:.1f} MiB{where}; fleet files are limited to {MAX_DOCUMENT_BYTES // 2**20} MiB "
        "so that every command reads them in a second and a few hundred MiB",
        _SPLIT_HINTS.get(biggest, _GENERIC_SPLIT), Location(file, 1, 1),
    ))


_TOP_KEY = re.compile(r"^([A-Za-z_][A-Za-z0-9_-]*)\s*:", re.MULTILINE)


def section_sizes(text: str) -> dict[str, int]:
    """Bytes per top-level key of a block-style file (approximate: by character offsets)."""
    sizes: dict[str, int] = {}
    starts = [(m.start(), m.group(1)) for m in _TOP_KEY.finditer(text)]
    ends = [start for start, _ in starts[1:]] + [len(text)]
    for (start, key), end in zip(starts, ends, strict=False):
        sizes[key] = sizes.get(key, 0) + end - start
    return sizes


def parse(text: str, file: str) -> tuple[object, SourceMap]:
    """Parse one YAML document; raise YamlProblem with a located diagnostic on any failure."""
    # len(text) is at most the UTF-8 size; only a text near the limit pays for the exact count.
    if len(text) * 4 > MAX_DOCUMENT_BYTES:
        size = len(text.encode("utf-8", errors="replace"))
        if size > MAX_DOCUMENT_BYTES:
            raise too_large(size, file, section_sizes(text))
    builder = _Builder(file)
    try:
        value = builder.run(yaml.parse(text, Loader=_Parser))
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        if "nesting depth" in str(exc.problem):  # libyaml's own guard, met before ours in flow style
            raise YamlProblem(_too_deep(_location(file, mark) if mark else Location(file, 1, 1), "")) from None
        problem = exc.problem or "the YAML syntax is invalid"
        hint = "check indentation and quoting on this line and the one above"
        if mark is not None and "\t" in _line(text, mark.line):
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
    return value, SourceMap(file, builder.marks, builder.item_marks, builder.plain_scalars)


def _line(text: str, number: int) -> str:
    """Line `number` (0-based) of text, without splitting the whole text."""
    start = 0
    for _ in range(number):
        start = text.find("\n", start) + 1
        if start == 0:
            return ""
    end = text.find("\n", start)
    return text[start:] if end < 0 else text[start:end]


def _too_deep(location: Location, path: str) -> Diagnostic:
    return Diagnostic(
        Severity.ERROR, "too-deep", path,
        f"the file nests more than {MAX_DEPTH} levels deep here; a fleet file needs about eight, and deeper "
        "nesting is refused so that reading it cannot exhaust memory",
        "flatten this part of the file", location,
    )


class _Frame:
    """A mapping or list being built."""

    __slots__ = ("value", "path", "anchor", "size", "key", "key_event", "merged", "items")

    def __init__(self, value, path: Path, anchor: str | None):
        self.value, self.path, self.anchor = value, path, anchor
        self.size = 1  # values in this subtree, aliases expanded
        self.key = None  # mappings: the key whose value comes next (None: a key comes next)
        self.key_event = None
        self.merged: list[dict] = []  # mappings: `<<` sources, applied under the explicit keys at the end
        self.items = array.array("Q") if isinstance(value, list) else None


_NO_KEY = object()


class _Builder:
    def __init__(self, file: str):
        self.file = file
        self.marks: dict[Path, int] = {}
        self.item_marks: dict[Path, array.array] = {}
        self.plain_scalars: dict[Path, str] = {}
        self.anchors: dict[str, tuple[object, int]] = {}  # name → (value, expanded size)
        self.stack: list[_Frame] = []
        self.nodes = 0
        self.alias_values = 0
        self.per_section: dict[str, int] = {}

    # -- the event loop ----------------------------------------------------------------------------

    def run(self, events):
        documents = 0
        result = None
        for event in events:
            if isinstance(event, yaml.DocumentStartEvent):
                documents += 1
                if documents > 1:
                    raise self._fail("multiple-documents", event, (),
                                     "the file holds several YAML documents; a fleet is one",
                                     "remove the extra `---` separators")
            elif isinstance(event, yaml.ScalarEvent | yaml.MappingStartEvent | yaml.SequenceStartEvent
                            | yaml.AliasEvent):
                done = self._node(event)
                if done is not _NO_KEY:
                    result = done
            elif isinstance(event, yaml.MappingEndEvent | yaml.SequenceEndEvent):
                done = self._close(event)
                if done is not _NO_KEY:
                    result = done
        if documents == 0:
            raise YamlProblem(Diagnostic(
                Severity.ERROR, "empty-document", "", "the file is empty",
                "start from examples/ or run `fleetspec schema` to see the fields", Location(self.file, 1, 1),
            ))
        return result

    def _node(self, event):
        """A scalar, alias or collection start. Returns the root value when the document is one
        scalar or alias, else _NO_KEY."""
        parent = self.stack[-1] if self.stack else None
        if parent is not None and isinstance(parent.value, dict) and parent.key is None:
            return self._key(parent, event)
        path = self._child_path(parent)
        self._count(event, path)
        if parent is None:
            self.marks[()] = _mark(event.start_mark)
        elif parent.items is not None:
            parent.items.append(_mark(event.start_mark))
        if isinstance(event, yaml.AliasEvent):
            value, size = self._alias(event, path)
            return self._attach(parent, value, size)
        if isinstance(event, yaml.ScalarEvent):
            value = self._scalar(event, path)
            if event.anchor is not None:
                self.anchors[event.anchor] = (value, 1)
            return self._attach(parent, value, 1)
        if len(self.stack) >= MAX_DEPTH:
            from fleetspec.spec import paths

            raise YamlProblem(_too_deep(_location(self.file, event.start_mark), paths.format_path(path)))
        if isinstance(event, yaml.SequenceStartEvent):
            self._check_tag(event, path, _STANDARD + "seq")
            frame = _Frame([], path, event.anchor)
            self.item_marks[path] = frame.items
        else:
            self._check_tag(event, path, _STANDARD + "map")
            frame = _Frame({}, path, event.anchor)
        self.stack.append(frame)
        return _NO_KEY

    def _key(self, frame: _Frame, event):
        if isinstance(event, yaml.ScalarEvent) and event.tag is None and event.implicit[0] and event.value == "<<":
            frame.key, frame.key_event = "<<", event
            frame.merged.append({})  # placeholder: the merge value fills it in `_attach`
            return _NO_KEY
        if not isinstance(event, yaml.ScalarEvent):
            raise self._fail("bad-key", event, frame.path, "a mapping key must be a plain word",
                             "write keys as `name: value`")
        self._count(event, frame.path)
        key = str(self._scalar(event, frame.path, key=True))
        child = (*frame.path, key)
        if key in frame.value:  # a key's value is attached before the next key arrives
            first = self.marks.get(child)
            line = f" (first on line {(first >> 32) + 1})" if first is not None else ""
            raise self._fail(
                "duplicate-key", event, child, f"the key `{key}` appears twice in the same mapping{line}",
                "remove one of them; YAML would otherwise silently keep only the last",
            )
        self.marks[child] = _mark(event.start_mark)
        frame.key, frame.key_event = key, event
        return _NO_KEY

    def _close(self, event):
        frame = self.stack.pop()
        value = frame.value
        if isinstance(value, dict):
            for source in frame.merged:
                for key, item in source.items():
                    value.setdefault(key, item)
        if frame.anchor is not None:
            self.anchors[frame.anchor] = (value, frame.size)
        return self._attach(self.stack[-1] if self.stack else None, value, frame.size)

    def _attach(self, parent: _Frame | None, value, size: int):
        if parent is None:
            return value
        parent.size += size
        if parent.items is not None:
            parent.value.append(value)
        elif parent.key == "<<":
            parent.merged[-1] = self._merge_source(value, parent)
            parent.key = None
        else:
            parent.value[parent.key] = value
            parent.key = None
        return _NO_KEY

    # -- budgets -----------------------------------------------------------------------------------

    def _child_path(self, parent: _Frame | None) -> Path:
        if parent is None:
            return ()
        if parent.items is not None:
            return (*parent.path, len(parent.value))
        return parent.path if parent.key == "<<" else (*parent.path, parent.key)

    def _count(self, event, path: Path) -> None:
        self.nodes += 1
        section = path[0] if path and isinstance(path[0], str) else ""
        self.per_section[section] = self.per_section.get(section, 0) + 1
        if self.nodes > MAX_NODES:
            biggest = max(self.per_section, key=self.per_section.get)
            share = f"; `{biggest}` holds {self.per_section[biggest]:,} of them" if biggest else ""
            raise self._fail(
                "too-many-nodes", event, path,
                f"the file holds more than {MAX_NODES:,} values{share}; fleetspec reads at most that many so that "
                "every command stays fast and small (10,000 specialists with 20 keywords each are about 310,000)",
                _SPLIT_HINTS.get(biggest, _GENERIC_SPLIT),
            )

    def _alias(self, event, path: Path) -> tuple[object, int]:
        anchored = self.anchors.get(event.anchor)
        if anchored is None:  # libyaml refuses unknown aliases itself; the pure parser too
            raise self._fail("yaml-syntax", event, path, f"the alias *{event.anchor} names no anchor",
                             f"mark the value it should repeat with &{event.anchor}")
        value, size = anchored
        self.alias_values += size
        if self.alias_values > MAX_ALIAS_VALUES:
            raise self._fail(
                "alias-expansion-too-large", event, path,
                f"the aliases (*name) of this file expand to more than {MAX_ALIAS_VALUES:,} values; aliases "
                "of aliases multiply, and this is refused so that reading the file cannot exhaust memory "
                "(an alias bomb)",
                "write the repeated part out, or alias only small shared blocks such as server settings",
            )
        return _copy(value), size

    def _merge_source(self, value, frame: _Frame) -> dict:
        sources = value if isinstance(value, list) else [value]
        merged: dict = {}
        for source in sources:
            if not isinstance(source, dict):
                raise self._fail("bad-merge", frame.key_event, frame.path,
                                 "`<<` must merge a mapping (an anchored block)",
                                 "write `<<: *name` where `&name` marks a mapping")
            for key, item in source.items():
                merged.setdefault(key, item)
        return merged

    # -- scalars and tags --------------------------------------------------------------------------

    def _fail(self, code: str, event, path: Path, message: str, hint: str) -> YamlProblem:
        from fleetspec.spec import paths

        return YamlProblem(Diagnostic(
            Severity.ERROR, code, paths.format_path(path), message, hint, _location(self.file, event.start_mark)
        ))

    def _check_tag(self, event, path: Path, expected: str) -> None:
        if event.tag not in (None, "!", expected):
            raise self._fail(
                "yaml-tag", event, path, f"the YAML tag `{event.tag}` is not supported in a fleet file",
                "remove the tag; fleet files hold plain mappings, lists and scalars",
            )

    def _scalar(self, event, path: Path, key: bool = False):
        text, tag = event.value, event.tag
        if tag is None and event.implicit[0]:  # plain: resolved by the core schema
            value = resolve_plain(text)
            # Remembered only where a hint needs the spelling and cannot rebuild it: mapping values (never
            # keys, whose `path` is the mapping's own, nor list items, which a hostile file has millions
            # of) that are YAML 1.1's boolean words or numbers not written the canonical way (`1e3`).
            if not key and path and isinstance(path[-1], str) and (
                    text.lower() in _YAML_11_BOOL_WORDS if isinstance(value, str) else text != canonical(value)):
                self.plain_scalars[path] = text
            return value
        if tag in (None, "!", _STANDARD + "str"):  # quoted, a block scalar, `!` or `!!str`: always text
            return text
        if tag not in _CORE_TAGS:
            raise self._fail(
                "yaml-tag", event, path, f"the YAML tag `{tag}` is not supported in a fleet file",
                "remove the tag; write the value as plain text",
            )
        return self._tagged(event, path, tag.removeprefix(_STANDARD))

    def _tagged(self, event, path: Path, tag: str):
        """An explicit `!!int`, `!!float`, `!!bool` or `!!null`: the text must be one of that type's forms."""
        text = event.value
        value = resolve_plain(text)
        if tag == "float" and isinstance(value, int) and not isinstance(value, bool):
            return float(value)
        wanted = {"int": int, "float": float, "bool": bool, "null": type(None)}[tag]
        if isinstance(value, wanted) and (tag != "int" or not isinstance(value, bool)):
            return value
        raise self._fail(
            "yaml-tag", event, path, f"`!!{tag} {text}`: `{text}` is not {_TAG_WORDS[tag]} in YAML 1.2",
            f"write {_TAG_WORDS[tag]}, or remove the tag",
        )


def canonical(value) -> str:
    """How a plain scalar of this value is usually written: `16`, `0.5`, `true`, `null`."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _copy(value):
    """A fresh copy of an aliased value (callers may change what they load); its size was budgeted."""
    if isinstance(value, dict):
        return {k: _copy(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_copy(v) for v in value]
    return value


def resolve_plain(text: str):
    """YAML 1.2 core schema for an untagged, unquoted scalar: null, bool, int (also 0o/0x), float (also
    1e3, .inf, .nan), else text. So `yes`, `on`, `1_000`, `0b1`, `2025-06-06` and `-0x1F` stay text, and
    `017` is seventeen."""
    if _NULL.match(text):
        return None
    if text in _BOOL:
        return _BOOL[text]
    if _INT.match(text):
        if len(text) > 1000:  # Python refuses int() of 4,300+ digits; no field takes such a number
            return text  # so it stays text, and the field says it wants a whole number
        return int(text, 0) if text.startswith(("0x", "0o")) else int(text, 10)
    if _FLOAT.match(text):
        return float(text)
    if text in _SPECIAL_FLOAT:
        return _SPECIAL_FLOAT[text]
    return text
