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
    return pathlib.Path(_absolute(value, str(base_dir)))


def _absolute(value: str, base_dir: str) -> str:
    candidate = os.path.expanduser(value)
    return os.path.normpath(candidate if os.path.isabs(candidate) else os.path.join(base_dir, candidate))


def within(path: pathlib.Path, roots: Sequence[pathlib.Path]) -> bool:
    return _within(str(path), [str(r) for r in roots])


def _within(path: str, roots: Sequence[str]) -> bool:
    """String form of `within` for normalised absolute paths (pathlib's is_relative_to costs ~10 µs
    a call, and a large fleet asks it tens of thousands of times)."""
    return any(path == root or path.startswith(root.rstrip("/") + "/") for root in roots)


class Confinement:
    """The adapter roots of one fleet, resolved once (links followed) and checked against each
    adapter path; building it per path re-resolved every root for every specialist."""

    def __init__(self, roots: Sequence[str], base_dir: pathlib.Path):
        self.roots = list(roots)
        self.base_dir = base_dir
        self.root_paths = [_absolute(r, str(base_dir)) for r in self.roots]
        self.real_roots = [os.path.realpath(r) for r in self.root_paths]

    def check(self, value: str, where: tuple = (), locate: Locate | None = None,
              ) -> tuple[pathlib.Path | None, list[Diagnostic]]:
        """The real directory to read for an adapter path, or None with the reason it is refused."""
        text = _absolute(value, str(self.base_dir))
        if not self.roots:
            return pathlib.Path(text), []  # allowed; `roots_warning` says once per fleet that roots should be declared
        shown = ", ".join(self.roots)

        def refuse(code: str, message: str, hint: str) -> tuple[None, list[Diagnostic]]:
            location = locate(where) if locate else None
            return None, [Diagnostic(Severity.ERROR, code, field_paths.format_path(where), message, hint, location)]

        if not _within(text, self.root_paths) and not _within(text, self.real_roots):
            if ".." in pathlib.PurePath(value).parts:
                return refuse("adapter-path-escapes-root",
                              f"the adapter path {value} climbs out of the adapter roots ({shown}) with '..' and "
                              f"lands on {text}", "write the path inside one of runtime.adapter_roots, without '..'")
            return refuse("adapter-path-outside-roots",
                          f"the adapter path {value} is outside the adapter roots ({shown})",
                          "move the adapter under one of runtime.adapter_roots, or add its directory to adapter_roots")
        real_dir = os.path.realpath(text)
        # The directory itself always (a parent may be a link out); its files only when it is a
        # directory that exists, since nothing inside a missing one can be a link.
        targets = [(text, real_dir)]
        if os.path.isdir(real_dir):
            targets += [(f, os.path.realpath(f)) for f in (os.path.join(text, n) for n in ADAPTER_FILES)
                        if os.path.lexists(f)]
        for target, real in targets:
            if not _within(real, self.real_roots):
                return refuse("adapter-path-symlink-escape",
                              f"the adapter path {value} follows a symbolic link: {target} leads to {real}, outside "
                              f"the adapter roots ({shown})",
                              "replace the link with the real files, or add that directory to runtime.adapter_roots "
                              "if you trust it")
        return pathlib.Path(real_dir), []


def check_path(
    value: str, base_dir: pathlib.Path, roots: Sequence[str], where: tuple = (), locate: Locate | None = None,
) -> tuple[pathlib.Path | None, list[Diagnostic]]:
    """One adapter path against `roots`; to check many, build one Confinement and reuse it."""
    return Confinement(roots, base_dir).check(value, where, locate)


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
