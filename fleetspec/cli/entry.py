"""The `fleetspec` executable: answers a no-op `apply` before importing anything heavy.

Everything else goes to `cli.app`. See `reconcile.fastpath` for what the shortcut checks.
"""

from __future__ import annotations

import os
import pathlib
import sys

NOOP_FLAGS = {"--yes", "-y"}


def noop_candidate(argv: list[str]) -> str | None:
    """The fleet file of a plain `apply FILE [--yes]`, the only form the shortcut answers."""
    if not argv or argv[0] != "apply":
        return None
    words = [w for w in argv[1:] if w not in NOOP_FLAGS]
    if len(words) != 1 or words[0].startswith("-"):
        return None
    return words[0]


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    file = noop_candidate(argv)
    if file is not None and not os.environ.get("FLEETSPEC_NO_FASTPATH"):
        from fleetspec.reconcile import fastpath

        if fastpath.is_noop(pathlib.Path(file)):
            print("No changes. The running fleet matches the fleet file.")
            return 0
    from fleetspec.cli import app

    return app.main(argv)


if __name__ == "__main__":
    sys.exit(main())
