"""Reading the mounted ConfigMap the way kubelet writes it.

kubelet never edits a mounted ConfigMap in place. It writes the new content into a fresh hidden
directory (`..2026_12_03_23_10_00.123456789`), then renames a new `..data` symlink over the old
one, and each key (`adapters.json`) is a symlink to `..data/adapters.json`. So one read of the key
through the symlinks sees either the whole old or the whole new content, and the `..data` target
names the revision. A directory that is not kubelet's (a plain file, in tests or by hand) is read
the same way; its revision is then a hash of the content.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import pathlib

DATA_LINK = "..data"


@dataclasses.dataclass(frozen=True)
class Snapshot:
    revision: str  # the `..data` target, or "sha256:<12 hex>" of the content
    text: str | None  # None: the key is missing
    problem: str | None = None  # why it could not be read, for the operator


def read(directory: pathlib.Path, key: str) -> Snapshot:
    # The `..data` link is read before and after the key: a swap in between would pair the old
    # revision with the new text, so the read is repeated until both name the same revision.
    for _ in range(5):
        before = _data_target(directory)
        snapshot = _read_once(directory, key, before)
        if _data_target(directory) == before:
            return snapshot
    return snapshot


def _read_once(directory: pathlib.Path, key: str, target: str | None) -> Snapshot:
    path = directory / key
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return Snapshot(
            target or "missing",
            None,
            f"{path} does not exist: the ConfigMap has no key {key}, or it is not mounted",
        )
    except OSError as exc:
        return Snapshot(target or "unreadable", None, f"{path} cannot be read: {exc.strerror}")
    revision = target or "sha256:" + hashlib.sha256(data).hexdigest()[:12]
    try:
        return Snapshot(revision, data.decode("utf-8"))
    except UnicodeDecodeError:
        return Snapshot(revision, None, f"{path} is not UTF-8 text")


def _data_target(directory: pathlib.Path) -> str | None:
    try:
        return os.readlink(directory / DATA_LINK)
    except OSError:
        return None
