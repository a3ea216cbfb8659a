"""Keep adapter paths inside the directories the fleet declares (`runtime.adapter_roots`).

An adapter path ends up mounted into engine containers and read by vLLM, so a fleet file (or an
adapter directory someone else controls) must not reach `/etc` or a home directory through `..` or
a symbolic link. The lexical check catches `..`; resolving links catches symlinks, including a
link planted inside an adapter directory in place of adapter_config.json or the weights.

Roots are resolved relative to the fleet file's directory. This module reads the filesystem only
to resolve links.
"""

from __future__ import annotations

import os
import pathlib
from collections.abc import Callable, Sequence

from fleetspec.adapters import inspect as adapter_inspect
from fleetspec.errors import Diagnostic, Location, Severity
from fleetspec.spec import models
from fleetspec.spec import paths as field_paths

Locate = Callable[[tuple], Location | None]
ADAPTER_FILES = (adapter_inspect.CONFIG_FILE, *(name for name, _ in adapter_inspect.WEIGHT_FILES))


def absolute(value: str, base_dir: pathlib.Path) -> pathlib.Path:
    """A path from the fleet file, made absolute against the file's directory, `..` folded. Pure."""
    candidate = pathlib.Path(value).expanduser()
    if not candidate.is_absolute():
        candidate = base_dir / candidate
    return pathlib.Path(os.path.normpath(candidate))


def within(path: pathlib.Path, roots: Sequence[pathlib.Path]) -> bool:
    return any(path == root or path.is_relative_to(root) for root in roots)


def check_path(
    value: str, base_dir: pathlib.Path, roots: Sequence[str], where: tuple = (), locate: Locate | None = None,
) -> tuple[pathlib.Path | None, list[Diagnostic]]:
    """The real directory to read for an adapter path, or None with the reason it is refused."""
    lexical = absolute(value, base_dir)
    if not roots:
        return lexical, []  # allowed; `roots_warning` says once per fleet that roots should be declared
    root_paths = [absolute(r, base_dir) for r in roots]
    real_roots = [pathlib.Path(os.path.realpath(r)) for r in root_paths]
    shown = ", ".join(roots)

    def refuse(code: str, message: str, hint: str) -> tuple[None, list[Diagnostic]]:
        location = locate(where) if locate else None
        return None, [Diagnostic(Severity.ERROR, code, field_paths.format_path(where), message, hint, location)]

    if not within(lexical, root_paths) and not within(lexical, real_roots):
        if ".." in pathlib.PurePath(value).parts:
            return refuse("adapter-path-escapes-root",
                          f"the adapter path {value} climbs out of the adapter roots ({shown}) with '..' and "
                          f"lands on {lexical}", "write the path inside one of runtime.adapter_roots, without '..'")
        return refuse("adapter-path-outside-roots", f"the adapter path {value} is outside the adapter roots ({shown})",
                      "move the adapter under one of runtime.adapter_roots, or add its directory to adapter_roots")
    for target in (lexical, *(lexical / name for name in ADAPTER_FILES)):
        if target != lexical and not os.path.lexists(target):
            continue
        real = pathlib.Path(os.path.realpath(target))
        if not within(real, real_roots):
            return refuse("adapter-path-symlink-escape",
                          f"the adapter path {value} follows a symbolic link: {target} leads to {real}, outside "
                          f"the adapter roots ({shown})",
                          "replace the link with the real files, or add that directory to runtime.adapter_roots "
                          "if you trust it")
    return pathlib.Path(os.path.realpath(lexical)), []


def roots_warning(spec: models.FleetSpec, locate: Locate | None = None) -> Diagnostic | None:
    """One warning per fleet that has adapters but no roots to confine them."""
    if spec.runtime.adapter_roots or not spec.specialists:
        return None
    where = ("runtime", "adapter_roots")
    return Diagnostic(
        Severity.WARNING, "adapter-roots-undeclared", field_paths.format_path(where),
        "no runtime.adapter_roots are declared, so adapter paths may point anywhere on the host",
        "declare the directories that hold your adapters, e.g. runtime: {adapter_roots: [/adapters]}",
        locate(where) if locate else None,
    )
