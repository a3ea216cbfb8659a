"""Where fleetspec keeps its files beside fleet.yaml (`.fleetspec/`: the state file, the local
runtime's process records and logs, the fast path's records), and how they are written: atomically
(temp file + fsync + rename), so a reader never sees half a file.
"""

from __future__ import annotations

import contextlib
import os
import pathlib


def state_dir(fleet_file: pathlib.Path) -> pathlib.Path:
    return fleet_file.resolve().parent / ".fleetspec"


def write_atomic(path: pathlib.Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(temp, "w", encoding="utf-8") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temp, path)
    with contextlib.suppress(OSError):  # directory fsync makes the rename durable; not all FS allow it
        fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
