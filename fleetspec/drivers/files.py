"""Where fleetspec keeps its files beside fleet.yaml (`.fleetspec/`: the state file, the local
runtime's process records and logs, the fast path's records), and how they are written: atomically
(temp file + fsync + rename), so a reader never sees half a file.
"""

from __future__ import annotations

import contextlib
import os
import pathlib
import tempfile


def state_dir(fleet_file: pathlib.Path) -> pathlib.Path:
    return fleet_file.resolve().parent / ".fleetspec"


def write_atomic(path: pathlib.Path, text: str) -> None:
    """Replace `path` with `text` so that a reader sees the old file or the new one, never a part.

    The temp file is unique per call (threads of one process may write the same record at once)
    and starts with a dot, which readers of a directory of records skip; a failed write removes it.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with open(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(temp, 0o644)  # mkstemp makes 0600; records are as readable as any file written here
        os.replace(temp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temp)
        raise
    with contextlib.suppress(OSError):  # directory fsync makes the rename durable; not all FS allow it
        fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
