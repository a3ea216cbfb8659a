"""The one jinja2 Environment every compile target renders through.

Templates are data: they live in the top-level `templates/` directory (compose/, k8s/, router/),
shipped inside the wheel as `fleetspec/templates` (a symlink in the checkout, copied by setuptools
when the wheel is built). `--templates DIR` puts a user directory in front, so any single template
can be overridden by a file of the same relative name.

Safety: templates never print a value bare. Every value goes through the `q` filter, which emits a
JSON document (JSON is YAML), so a name, path or env value holding quotes, colons, newlines, `{{ }}`,
`#` or a YAML tag can never change the structure around it. StrictUndefined turns a misspelled
variable into an error instead of an empty string. `parse_back` loads every rendered text with
yaml.safe_load before anything is written.
"""

from __future__ import annotations

import functools
import json
import pathlib
import re

import jinja2
import yaml

from fleetspec import errors

# Characters JSON leaves raw but a YAML reader treats as line breaks or refuses (C1 controls, NEL,
# line/paragraph separators, BOM, lone surrogates, non-characters): escaped as \\uXXXX, which JSON
# and YAML read back to the same character.
_SAFE_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_YAML_UNSAFE = re.compile("[\u007f-\u009f\u2028\u2029\ufeff\ud800-\udfff\ufffe\uffff]")


def q(value, indent: int | None = None) -> str:
    """Any JSON value as text that YAML and JSON both read back to exactly that value."""
    if isinstance(value, jinja2.Undefined):
        value._fail_with_undefined_error()  # StrictUndefined: name the missing variable
    text = json.dumps(value, ensure_ascii=False, indent=indent, sort_keys=False)
    return _YAML_UNSAFE.sub(lambda m: f"\\u{ord(m.group(0)):04x}", text)


class TemplateError(errors.FleetspecError):
    """A template (usually a user override) failed to render or produced text that is not valid."""


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


def render(name: str, context: dict, override_dir: str | pathlib.Path | None = None) -> str:
    env = environment(str(override_dir) if override_dir is not None else None)
    try:
        return env.get_template(name).render(**context)
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


def render_checked(name: str, context: dict, override_dir: str | pathlib.Path | None = None,
                   ) -> tuple[str, object]:
    text = render(name, context, override_dir)
    return text, parse_back(name, text)
