"""Is a recorded local process still ours and alive? /proc, read with the standard library only.

The local driver asks this on every observe; the fast path (`reconcile.fastpath`) asks it too and
must not leave the standard library, so the rule lives here, once. A pid alone does not identify a
process (pids are reused): the record keeps the kernel's start time of the process (/proc/<pid>/stat
field 22), and a live pid with another start time is someone else's.
"""

from __future__ import annotations

import pathlib

PROC = pathlib.Path("/proc")
ALIVE, DEAD, REUSED = "alive", "dead", "reused"


def stat_fields(pid: int) -> list[str] | None:
    """/proc/<pid>/stat from field 3 (state) on; None when there is no such process."""
    try:
        text = (PROC / str(pid) / "stat").read_text()
    except OSError:
        return None
    return text[text.rindex(")") + 2:].split()  # field 2 (comm) may hold spaces and parentheses


def start_time(pid: int) -> int | None:
    fields = stat_fields(pid)
    return int(fields[19]) if fields else None  # field 22


def leader(pid: int, proc_start: int | None) -> str:
    """ALIVE: our process runs; DEAD: it is gone (or a zombie); REUSED: its pid is someone else's now."""
    fields = stat_fields(pid)
    if fields is None:
        return DEAD
    if proc_start is not None and int(fields[19]) != proc_start:
        return REUSED
    return DEAD if fields[0] in ("Z", "X") else ALIVE
