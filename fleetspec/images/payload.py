"""What goes on top of the base image: fleetspec from the working tree plus its dependencies.

Dependencies are copied from the Python environment running this code (the project's .venv)
rather than fetched by pip inside the image: no network is needed, and the image runs exactly the
versions the tests run. That works because the base image's python3 has the same minor version
(checked below), so compiled wheels such as pydantic-core load unchanged.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import importlib.metadata
import io
import os
import pathlib
import re
import sys
import tarfile
import tomllib

import fleetspec
from fleetspec import errors

SIM_REPOSITORY = "fleetspec/sim"  # the offline-built image with fleetspec: sim engine and router

IMAGE_PYTHON = (3, 11)  # python3 of rootfs.SUITE
SITE_PACKAGES = f"/usr/local/lib/python{IMAGE_PYTHON[0]}.{IMAGE_PYTHON[1]}/dist-packages"
PACKAGE_DIR = pathlib.Path(fleetspec.__file__).resolve().parent
_REQUIREMENT_NAME = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)")


@dataclasses.dataclass(frozen=True)
class Payload:
    """Files for the build context: archive path → bytes (and whether it is executable)."""

    files: dict[str, tuple[bytes, bool]]
    dependencies: tuple[tuple[str, str], ...]  # (name, version), sorted

    def inputs_hash(self, *extra: str) -> str:
        digest = hashlib.sha256()
        for part in extra:
            digest.update(part.encode() + b"\0")
        for path in sorted(self.files):
            content, executable = self.files[path]
            digest.update(f"{path}\0{int(executable)}\0".encode() + hashlib.sha256(content).digest())
        return digest.hexdigest()

    def context_tar(self) -> io.BytesIO:
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w") as tar:
            for path in sorted(self.files):
                content, executable = self.files[path]
                info = tarfile.TarInfo(path)
                info.size, info.mode, info.mtime = len(content), 0o755 if executable else 0o644, 0
                tar.addfile(info, io.BytesIO(content))
        buffer.seek(0)
        return buffer


def project_version() -> str:
    pyproject = PACKAGE_DIR.parent / "pyproject.toml"
    if pyproject.exists():
        return tomllib.loads(pyproject.read_text())["project"]["version"]
    return importlib.metadata.version("fleetspec")


def collect(extra_files: dict[str, tuple[bytes, bool]]) -> Payload:
    """fleetspec's source tree and dependency closure, laid out under `site-packages/`."""
    _check_python()
    files = dict(extra_files)
    files.update(_package_files())
    version = project_version()
    files[f"site-packages/fleetspec-{version}.dist-info/METADATA"] = (
        f"Metadata-Version: 2.1\nName: fleetspec\nVersion: {version}\n".encode(), False,
    )
    dependencies = dependency_closure(_direct_requirements())
    for dist in dependencies:
        files.update(_distribution_files(dist))
    pinned = tuple(sorted((d.metadata["Name"], d.version) for d in dependencies))
    return Payload(files=files, dependencies=pinned)


def dependency_closure(requirements: list[str]) -> list[importlib.metadata.Distribution]:
    """Installed distributions needed by `requirements`, transitively, each once."""
    found: dict[str, importlib.metadata.Distribution] = {}
    pending = list(requirements)
    while pending:
        requirement = pending.pop()
        name, conditional = _parse(requirement)
        if name is None or _normalise(name) in found:
            continue
        try:
            dist = importlib.metadata.distribution(name)
        except importlib.metadata.PackageNotFoundError as exc:
            if conditional:
                continue  # an environment marker excluded it here, and so in the image (same Python)
            raise errors.PermanentError(
                f"fleetspec needs {name}, which is not installed in {sys.prefix}. "
                "Run `./scripts/test` (or `pip install -e '.[test]'`) to set up the environment first."
            ) from exc
        found[_normalise(name)] = dist
        pending.extend(dist.requires or [])
    return sorted(found.values(), key=lambda d: _normalise(d.metadata["Name"]))


def _parse(requirement: str) -> tuple[str | None, bool]:
    """(name, has a marker); requirements only wanted for an extra are skipped (name None)."""
    spec, _, marker = requirement.partition(";")
    if "extra" in marker:
        return None, True
    match = _REQUIREMENT_NAME.match(spec)
    return (match.group(1) if match else None), bool(marker.strip())


def _normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _direct_requirements() -> list[str]:
    pyproject = PACKAGE_DIR.parent / "pyproject.toml"
    if pyproject.exists():
        return list(tomllib.loads(pyproject.read_text())["project"]["dependencies"])
    return list(importlib.metadata.requires("fleetspec") or [])


def _package_files() -> dict[str, tuple[bytes, bool]]:
    files = {}
    for directory, subdirs, names in os.walk(PACKAGE_DIR, followlinks=True):
        subdirs[:] = sorted(d for d in subdirs if d != "__pycache__" and not d.startswith("."))
        for name in sorted(names):
            if name.endswith((".pyc", ".pyo")) or name.startswith("."):
                continue
            path = pathlib.Path(directory, name)
            relative = path.relative_to(PACKAGE_DIR.parent).as_posix()
            files[f"site-packages/{relative}"] = (path.read_bytes(), False)
    return files


def _distribution_files(dist: importlib.metadata.Distribution) -> dict[str, tuple[bytes, bool]]:
    """A distribution's files as the image gets them: the same bytes whichever virtualenv or clone
    path they were installed into, so the image's cache key (`inputs_hash`) is the same too."""
    files = {}
    for entry in dist.files or []:
        parts = entry.parts
        # Console scripts live outside site-packages ("../../bin"); bytecode is rebuilt in the image.
        if parts[0] == ".." or "__pycache__" in parts or entry.suffix == ".pyc":
            continue
        if _install_record(parts):
            continue  # how this environment got the package (pip or uv, asked for or pulled in, from where)
        path = pathlib.Path(dist.locate_file(entry))
        if path.is_file():
            content = path.read_bytes()
            if entry.name == "RECORD" and len(parts) == 2 and parts[0].endswith(".dist-info"):
                content = _portable_record(content)
            files[f"site-packages/{entry.as_posix()}"] = (content, False)
    return files


# Files an installer writes about one install, not the package: where the wheel came from (a file://
# URL, a temp dir), which tool installed it, and whether the user asked for it or it was pulled in.
_INSTALL_RECORDS = ("direct_url.json", "INSTALLER", "REQUESTED")


def _install_record(parts: tuple[str, ...]) -> bool:
    return len(parts) == 2 and parts[0].endswith(".dist-info") and parts[1] in _INSTALL_RECORDS


def _portable_record(content: bytes) -> bytes:
    """RECORD without the rows of files the image does not get: console scripts ("../../../bin/x",
    whose hash covers a `#!` line naming this virtualenv's python), bytecode and the install
    records above. Rows are CSV."""
    kept = io.StringIO()
    writer = csv.writer(kept, lineterminator="\n")
    for row in csv.reader(io.StringIO(content.decode("utf-8", "replace"))):
        if not row or row[0].startswith("../") or "__pycache__/" in row[0] or row[0].endswith(".pyc"):
            continue
        if _install_record(tuple(row[0].split("/"))):
            continue
        writer.writerow(row)
    return kept.getvalue().encode()


def _check_python() -> None:
    if sys.version_info[:2] != IMAGE_PYTHON:
        have = f"{sys.version_info[0]}.{sys.version_info[1]}"
        want = f"{IMAGE_PYTHON[0]}.{IMAGE_PYTHON[1]}"
        raise errors.PermanentError(
            f"The sim image copies fleetspec's dependencies from this Python ({have}), but the image's "
            f"python3 is {want}, so compiled packages would not load. Build with a Python {want} "
            f"virtualenv (`python{want} -m venv .venv`)."
        )
