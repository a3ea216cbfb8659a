"""A minimal Debian root filesystem from debootstrap, cached as a tarball for `docker import`.

No registry is reachable where the tests run, but a Debian mirror is (apt needs one), so the base
of every test image is bootstrapped from that mirror. The tarball is keyed by what goes into it,
so it is built once per machine and reused until this recipe changes.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import pathlib
import re
import shutil
import subprocess
import tempfile

from fleetspec import errors

SUITE = "bookworm"  # its python3 is 3.11: the same minor as fleetspec's, so host wheels fit
VARIANT = "minbase"
PACKAGES = ("python3",)
# Bulk that nothing in the images reads; removing it halves the tarball.
STRIP = (
    "var/cache/apt",
    "var/lib/apt/lists",
    "usr/share/doc",
    "usr/share/man",
    "usr/share/info",
    "usr/share/locale",
    "var/log",
)
DEFAULT_MIRROR = "http://deb.debian.org/debian"
RECIPE_VERSION = 1  # bump when the steps below change in a way the fields above do not show


@dataclasses.dataclass(frozen=True)
class Recipe:
    suite: str = SUITE
    variant: str = VARIANT
    packages: tuple[str, ...] = PACKAGES
    strip: tuple[str, ...] = STRIP
    version: int = RECIPE_VERSION

    def inputs_hash(self) -> str:
        # The mirror is left out: every mirror serves the same suite.
        text = json.dumps(dataclasses.asdict(self), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()


def ensure_tarball(cache_dir: pathlib.Path, recipe: Recipe = Recipe(), mirror: str | None = None) -> pathlib.Path:
    """The cached rootfs tarball for `recipe`, bootstrapping it first when absent."""
    tarball = cache_dir / f"rootfs-{recipe.suite}-{recipe.inputs_hash()[:16]}.tar"
    if tarball.exists():
        return tarball
    _check_can_bootstrap()
    cache_dir.mkdir(parents=True, exist_ok=True)
    work = pathlib.Path(tempfile.mkdtemp(prefix="rootfs-", dir=cache_dir))
    try:
        root = work / "root"
        _debootstrap(root, recipe, mirror or find_mirror(), work / "debootstrap.log")
        for relative in recipe.strip:
            _empty_dir(root / relative)
        partial = work / "rootfs.tar"
        _run(["tar", "--numeric-owner", "-C", str(root), "-cf", str(partial), "."], "pack the root filesystem")
        os.replace(partial, tarball)  # atomic: a killed build never leaves a half tarball behind
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return tarball


def find_mirror(sources_dir: pathlib.Path = pathlib.Path("/etc/apt")) -> str:
    """The Debian mirror apt already uses on this machine (FLEETSPEC_DEBIAN_MIRROR overrides)."""
    override = os.environ.get("FLEETSPEC_DEBIAN_MIRROR")
    if override:
        return override
    files = [sources_dir / "sources.list", *sorted((sources_dir / "sources.list.d").glob("*"))]
    for path in files:
        if path.suffix not in (".list", ".sources") or not path.is_file():
            continue
        mirror = _mirror_in(path.read_text(errors="replace"))
        if mirror:
            return mirror
    return DEFAULT_MIRROR


def _mirror_in(text: str) -> str | None:
    # One-line style: "deb [opts] URI suite components"; deb822 style: "URIs: URI".
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        match = re.match(r"^deb\s+(?:\[[^\]]*\]\s+)?(\S+)\s+(\S+)", line) or re.match(r"^URIs:\s*(\S+)()", line)
        if not match:
            continue
        uri = match.group(1).rstrip("/")
        if uri.endswith("/debian") and "security" not in uri:
            return uri
    return None


def _check_can_bootstrap() -> None:
    if shutil.which("debootstrap") is None:
        raise errors.PermanentError(
            "debootstrap is not installed, and the test images are built from a Debian root filesystem. "
            "Install it with `apt-get install -y debootstrap`."
        )
    if os.geteuid() != 0:
        raise errors.PermanentError(
            "Building the base image runs debootstrap, which needs root. Run "
            "`sudo .venv/bin/python -m fleetspec.images build` once; later runs reuse the cached result."
        )


def _debootstrap(root: pathlib.Path, recipe: Recipe, mirror: str, log: pathlib.Path) -> None:
    argv = [
        "debootstrap", f"--variant={recipe.variant}", f"--include={','.join(recipe.packages)}",
        recipe.suite, str(root), mirror,
    ]
    with log.open("w") as out:
        done = subprocess.run(argv, stdout=out, stderr=subprocess.STDOUT, check=False)
    if done.returncode != 0:
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-15:])
        raise errors.TemporaryError(
            f"debootstrap of Debian {recipe.suite} from {mirror} failed (exit {done.returncode}). "
            f"Check that the mirror is reachable, or set FLEETSPEC_DEBIAN_MIRROR. Last lines:\n{tail}"
        )


def _empty_dir(path: pathlib.Path) -> None:
    if not path.is_dir():
        return
    for child in path.iterdir():
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child)
        else:
            child.unlink()


def _run(argv: list[str], action: str) -> None:
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise errors.PermanentError(f"Could not {action}: `{' '.join(argv)}` said: {done.stderr.strip()}")
