"""A ConfigMap volume written the way kubelet writes it (its AtomicWriter), for the agent's tests.

Each update goes into a fresh `..<timestamp>` directory; a `..data_tmp` symlink to it is renamed over
`..data` (one atomic rename), each key is a symlink `key -> ..data/key`, and the old timestamped
directory is removed afterwards. A reader that opens `key` sees the whole old or the whole new data.
"""

from __future__ import annotations

import datetime
import itertools
import os
import pathlib
import shutil

_sequence = itertools.count()


class ConfigMapVolume:
    def __init__(self, directory: pathlib.Path):
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)

    def publish(self, data: dict[str, str]) -> str:
        """Swap in new content; returns the new revision (the `..data` target)."""
        stamp = datetime.datetime.now(datetime.UTC).strftime("%Y_%m_%d_%H_%M_%S")
        revision = f"..{stamp}.{next(_sequence):09d}"
        fresh = self.directory / revision
        fresh.mkdir()
        for key, text in data.items():
            (fresh / key).write_text(text)
        old = self._current()
        link = self.directory / "..data_tmp"
        os.symlink(revision, link)
        os.rename(link, self.directory / "..data")
        for key in data:
            entry = self.directory / key
            if not entry.is_symlink():
                os.symlink(f"..data/{key}", entry)
        if old is not None:
            shutil.rmtree(self.directory / old)
        return revision

    def _current(self) -> str | None:
        try:
            return os.readlink(self.directory / "..data")
        except OSError:
            return None
