"""The one jinja2 Environment every compile target renders through.

Templates are data: they live in the top-level `templates/` directory (compose/, k8s/, router/),
shipped inside the wheel as `fleetspec/templates` (a symlink in the checkout, copied by setuptools
when the wheel is built). `--templates DIR` puts a user directory in front, so any single template
can be overridden by a file of the same relative name.

Safety: templates never print a value bare. Every value goes through the `q` filter, which emits a
JSON document (JSON is YAML), so a name, path or env value holding quotes, colons, newlines, `{{ }}`,
`#` or a YAML tag can never change the structure around it. StrictUndefined turns a misspelled
variable into an error instead of an empty string.

Checking: a template from `--templates DIR` is rendered, loaded back (`parse_back`) and handed to
the target's check before anything is written, since fleetspec cannot know what it does. The
shipped templates are not loaded back at run time: their structure is fixed by fleetspec's own code
and proven by the tests (every output passes `q`, golden files, hostile values read back and
checked), and loading every file back with PyYAML cost more than planning the fleet (issue 17).
"""

from __future__ import annotations

import functools
import json
import os
import pathlib
import re
from collections.abc import Callable

import jinja2
import yaml

from fleetspec import errors

_SAFE_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
# Characters JSON leaves raw but a YAML reader treats as line breaks or refuses (C1 controls, NEL,
# line/paragraph separators, BOM, lone surrogates, non-characters): escaped as \\uXXXX, which JSON
# and YAML read back to the same character.
_YAML_UNSAFE = re.compile("[\u007f-\u009f\u2028\u2029\ufeff\ud800-\udfff\ufffe\uffff]")
# json.dumps' own encoder of one string (C when available), the text json.dumps(s, ensure_ascii=False)
# returns, without the JSONEncoder json.dumps builds per call: templates print tens of thousands.
_JSON_STRING = json.encoder.encode_basestring


def q(value, indent: int | None = None) -> str:
    """Any JSON value as text that YAML and JSON both read back to exactly that value."""
    kind = type(value)
    if kind is str:
        text = _JSON_STRING(value)
    elif kind is bool or value is None:
        return "null" if value is None else "true" if value else "false"
    elif kind is int:
        return str(value)
    else:
        if isinstance(value, jinja2.Undefined):
            value._fail_with_undefined_error()  # StrictUndefined: name the missing variable
        text = json.dumps(value, ensure_ascii=False, indent=indent, sort_keys=False)
    return _YAML_UNSAFE.sub(_escape_unsafe, text)


def _escape_unsafe(match: re.Match) -> str:
    return f"\\u{ord(match.group(0)):04x}"


class TemplateError(errors.FleetspecError):
    """A template (usually a user override) failed to render or produced text that is not valid."""


@functools.lru_cache(maxsize=1)
def _default_dir() -> pathlib.Path:
    import importlib.resources

    return pathlib.Path(str(importlib.resources.files("fleetspec") / "templates"))


@functools.lru_cache(maxsize=8)
def environment(override_dir: str | None = None) -> jinja2.Environment:
    loaders: list[jinja2.BaseLoader] = []
    if override_dir is not None:
        loaders.append(jinja2.FileSystemLoader(override_dir))
    loaders.append(jinja2.FileSystemLoader(str(_default_dir())))
    env = jinja2.Environment(
        loader=jinja2.ChoiceLoader(loaders),
        undefined=jinja2.StrictUndefined,
        autoescape=False,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["q"] = q
    return env


def _render(name: str, context: dict, override_dir: str | pathlib.Path | None) -> tuple[str, bool]:
    """The text, and whether it came from a template in `override_dir` rather than a shipped one."""
    env = environment(str(override_dir) if override_dir is not None else None)
    try:
        template = env.get_template(name)
        return template.render(**context), not _is_shipped(template)
    except jinja2.TemplateNotFound:
        raise TemplateError(f"the template {name} was not found in the templates directory") from None
    except jinja2.UndefinedError as exc:
        raise TemplateError(
            f"the template {name} uses a variable that does not exist ({exc.message}); "
            "check the override in --templates against the shipped template"
        ) from None
    except jinja2.TemplateSyntaxError as exc:
        raise TemplateError(f"the template {name} has a syntax error on line {exc.lineno}: {exc.message}") from None


def parse_back(name: str, text: str) -> object:
    """The rendered text as data; a template that produced invalid YAML is an error, never output."""
    try:
        return yaml.load(text, Loader=_SAFE_LOADER)  # safe; libyaml when present
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise TemplateError(
            f"the template {name} produced text that is not valid YAML{where}; "
            "every value in a template must pass through the `q` filter"
        ) from None


def _is_shipped(template: jinja2.Template) -> bool:
    # FileSystemLoader names a template by its search path joined with the name, so a prefix test is exact.
    return template.filename is not None and \
        os.path.normpath(template.filename).startswith(os.path.normpath(_default_dir()) + os.sep)


def render_checked(name: str, context: dict, override_dir: str | pathlib.Path | None,
                   check: Callable[[object], None]) -> str:
    """The rendered text; an override's text is first loaded back and passed to `check`, which raises
    TemplateError when the data is not what was compiled (see the module docstring)."""
    text, overridden = _render(name, context, override_dir)
    if overridden:
        check(parse_back(name, text))
    return text
