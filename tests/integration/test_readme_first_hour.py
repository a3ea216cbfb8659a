"""The README's first-hour commands, run as written where nobody can answer a prompt (issue #16):
`FLEETSPEC_RUN_WATCH=0 ./scripts/run`, then the README's `destroy` line exactly. That line used to
exit 1 off a terminal ("refusing to change the fleet without confirmation").

The clone is a copy of what those commands read (scripts, pyproject.toml, fleet.yaml, adapters) with
a stand-in `.venv` that runs this interpreter on this tree: running pip here would re-point the
shared virtualenv's editable install at the copy. How ./scripts/run installs is tested with
stand-ins in tests/unit/test_scripts_run.py. The copy's fleet.yaml listens on free ports instead of
8000/8001/8080, so the test runs beside a real demo fleet.
"""

from __future__ import annotations

import hashlib
import os
import pathlib
import shutil
import subprocess
import sys

import netkit
import pytest

from fleetspec import drivers

ROOT = pathlib.Path(__file__).resolve().parents[2]
RUN_LINE = "FLEETSPEC_RUN_WATCH=0 ./scripts/run"


def readme_destroy_line() -> str:
    readme = (ROOT / "README.md").read_text()
    assert f"`{RUN_LINE}`" in readme, "the README no longer gives the non-watching run line"
    return next(line for line in readme.splitlines() if line.startswith(".venv/bin/fleetspec destroy fleet.yaml"))


@pytest.fixture
def clone(tmp_path):
    for part in ("scripts", "adapters"):
        shutil.copytree(ROOT / part, tmp_path / part)
    for part in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / part, tmp_path / part)
    port = netkit.free_port_range(3)
    text = (ROOT / "fleet.yaml").read_text()
    moved = text.replace("  adapter_roots: [./adapters]\n",
                         f"  adapter_roots: [./adapters]\n  base_port: {port + 1}\n  router: {{port: {port}}}\n")
    assert moved != text, "fleet.yaml's runtime section changed; move its ports another way"
    (tmp_path / "fleet.yaml").write_text(moved)
    bin_dir = tmp_path / ".venv" / "bin"
    bin_dir.mkdir(parents=True)
    for name, command in (("python", f'exec "{sys.executable}" "$@"'),
                          ("fleetspec", f'exec "{sys.executable}" -m fleetspec "$@"')):
        (bin_dir / name).write_text(f"#!/bin/sh\n{command}\n")
        (bin_dir / name).chmod(0o755)
    # The stamp ./scripts/run compares with pyproject.toml: installed, nothing to do.
    stamp = hashlib.sha256((tmp_path / "pyproject.toml").read_bytes()).hexdigest()
    (tmp_path / ".venv" / ".fleetspec-install-stamp").write_text(stamp + "\n")
    driver = drivers.for_runtime("local", tmp_path / "fleet.yaml", "demo")
    yield tmp_path
    for left in driver.observe("demo"):  # what the destroy line did not remove (it failed)
        driver.remove(left.id)
    assert driver.observe("demo") == []


def shell(line: str, cwd: pathlib.Path) -> subprocess.CompletedProcess:
    """`line` exactly as a user types it, with no terminal on stdin (as in CI)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("FLEETSPEC_RUN_WATCH", None)
    return subprocess.run(["bash", "-c", line], cwd=cwd, env=env, stdin=subprocess.DEVNULL, capture_output=True,
                          text=True, timeout=300)


def test_the_readme_run_and_destroy_lines_work_where_nobody_can_answer(clone):
    ran = shell(RUN_LINE, clone)
    assert ran.returncode == 0, ran.stdout + ran.stderr
    assert "==> fleetspec status fleet.yaml" in ran.stdout
    assert "In sync with the fleet file" in ran.stdout
    running = drivers.for_runtime("local", clone / "fleet.yaml", "demo").observe("demo")
    assert sorted((c.name, c.status) for c in running) == [
        ("demo-main-0", "running"), ("demo-main-1", "running"), ("demo-router", "running")]

    destroyed = shell(readme_destroy_line(), clone)

    assert destroyed.returncode == 0, destroyed.stdout + destroyed.stderr
    assert "Plan: 3 processes to stop and remove." in destroyed.stdout
    assert destroyed.stdout.rstrip().endswith("Destroyed: 3 removed.")
    assert drivers.for_runtime("local", clone / "fleet.yaml", "demo").observe("demo") == []
