"""Fixtures and options shared by every test directory.

Keep this file to cross-cutting helpers; fixtures for one area belong in that area's conftest.py
(Docker fixtures live in tests/integration/conftest.py).
"""

from __future__ import annotations

import difflib
import pathlib

import pytest

GOLDEN_DIR = pathlib.Path(__file__).parent / "golden"


# scripts/test runs the suite under pytest-xdist with `--dist loadfile`: each file runs whole in one
# worker, in order (the real-vLLM fleet scenarios build on each other; a file's module fixtures
# start its engines once). The files of tests/vllm are the suite's longest chains (a real engine
# takes about a minute to start), so they are collected first and workers start on them while the
# others share out everything else; serial runs are not slowed by the order.
VLLM_DIR = pathlib.Path(__file__).parent / "vllm"


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    real_engines = [item for item in items if pathlib.Path(str(item.path)).parent == VLLM_DIR]
    if real_engines:
        chosen = set(map(id, real_engines))
        items[:] = real_engines + [item for item in items if id(item) not in chosen]


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--update-golden",
        action="store_true",
        default=False,
        help="Rewrite the files under tests/golden/ from the current output instead of comparing.",
    )


class Golden:
    """Compares rendered text with tests/golden/<name>, byte for byte; rewrites it on --update-golden."""

    def __init__(self, update: bool, directory: pathlib.Path = GOLDEN_DIR):
        self.update = update
        self.directory = directory

    def path(self, name: str) -> pathlib.Path:
        path = (self.directory / name).resolve()
        if self.directory.resolve() not in path.parents:
            raise ValueError(f"golden name {name!r} leaves {self.directory}")
        return path

    def check(self, name: str, text: str) -> None:
        path = self.path(name)
        actual = text.encode("utf-8")
        if self.update:
            if not path.exists() or path.read_bytes() != actual:
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(actual)
            return
        if not path.exists():
            pytest.fail(
                f"tests/golden/{name} does not exist yet. Create it with `pytest --update-golden` and review it.",
                pytrace=False,
            )
        expected = path.read_bytes().decode("utf-8")
        if text != expected:
            diff = "".join(
                difflib.unified_diff(
                    expected.splitlines(keepends=True), text.splitlines(keepends=True),
                    fromfile=f"tests/golden/{name}", tofile="actual output",
                )
            )
            pytest.fail(
                f"Output differs from tests/golden/{name}; if the change is intended, run "
                f"`pytest --update-golden` and review the diff.\n{diff}",
                pytrace=False,
            )

    def check_tree(self, folder: str, files: dict[str, str]) -> None:
        """Two-way: every file in `files` matches tests/golden/<folder>/<name>, and the folder holds no
        other file, so a file the compiler stops emitting fails as surely as one that changes."""
        root = self.path(folder)
        on_disk = sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()) \
            if root.is_dir() else []
        extra = sorted(set(on_disk) - set(files))
        if self.update:
            for name in extra:
                (root / name).unlink()
        elif extra:
            pytest.fail(
                f"tests/golden/{folder}/ holds {', '.join(extra)}, which the output no longer contains; "
                "if the file was dropped on purpose, run `pytest --update-golden` and review the deletion.",
                pytrace=False,
            )
        missing = sorted(set(files) - set(on_disk))
        if missing and not self.update:
            pytest.fail(
                f"the output has {', '.join(missing)}, which tests/golden/{folder}/ lacks; if the file is new "
                "on purpose, create it with `pytest --update-golden` and review it.",
                pytrace=False,
            )
        for name in sorted(files):
            self.check(f"{folder}/{name}", files[name])


@pytest.fixture
def golden(request: pytest.FixtureRequest) -> Golden:
    return Golden(update=request.config.getoption("--update-golden"))
