"""`./scripts/run` on a fresh clone, with stand-ins for python, pip and fleetspec (issue #16: the
first run showed one line for ~53 s of installing, and apply printed the plan a second time)."""

from __future__ import annotations

import os
import pathlib
import shutil
import subprocess

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]

# What the stand-in venv's python does for `-m pip install`: pip's kind of output, then fleetspec.
PIP = """
echo "Obtaining file://$PWD"
echo "Collecting pydantic>=2 (from fleetspec==0.1.0)"
echo "  Downloading pydantic-2.12.0-py3-none-any.whl.metadata (85 kB)"
echo "Collecting click>=8 (from fleetspec==0.1.0)"
echo "Installing collected packages: click, pydantic, fleetspec"
if [ -n "${FAKE_PIP_FAILS:-}" ]; then echo "ERROR: No matching distribution found for pydantic>=2"; exit 1; fi
cat > "$VENV/bin/fleetspec" <<'STUB'
#!/bin/sh
echo "$*" >> "$FLEETSPEC_CALLS"
STUB
chmod +x "$VENV/bin/fleetspec"
echo "Successfully installed click-8.3.0 fleetspec-0.1.0 pydantic-2.12.0"
"""


@pytest.fixture
def clone(tmp_path):
    shutil.copytree(ROOT / "scripts", tmp_path / "scripts")
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    (tmp_path / "fleet.yaml").write_text("name: demo\n")
    system = tmp_path / "system-python"
    venv_python = '#!/bin/bash\nVENV=$(cd "$(dirname "$0")/.." && pwd)\n' + PIP
    # The system python: passes the version check, and `-m venv DIR` makes the stand-in venv.
    system.write_text('#!/bin/bash\nif [ "$1" = "-m" ] && [ "$2" = "venv" ]; then\n'
                      f'  mkdir -p "$3/bin"\n  cat > "$3/bin/python" <<\'VENV\'\n{venv_python}VENV\n'
                      '  chmod +x "$3/bin/python"\nfi\nexit 0\n')
    system.chmod(0o755)
    return tmp_path


def run(clone: pathlib.Path, **env) -> subprocess.CompletedProcess:
    environment = {**os.environ, "PYTHON": str(clone / "system-python"), "FLEETSPEC_RUN_WATCH": "0",
                   "FLEETSPEC_CALLS": str(clone / "calls"), **env}
    return subprocess.run([str(clone / "scripts" / "run")], cwd=clone, env=environment, capture_output=True,
                          text=True, timeout=60)


def test_the_first_run_shows_install_progress_and_how_long_it_takes(clone):
    done = run(clone)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "first run only: about a minute" in done.stdout
    assert "    [1] pydantic>=2 (from fleetspec==0.1.0)" in done.stdout
    assert "    [2] click>=8 (from fleetspec==0.1.0)" in done.stdout
    assert "the next runs skip this step" in done.stdout
    assert "Collecting pydantic" in (clone / ".venv" / "pip-install.log").read_text()  # pip's own words kept

    again = run(clone)
    assert again.returncode == 0 and "installing" not in again.stdout  # the second run starts at once


def test_the_plan_of_changes_is_printed_once_by_apply(clone):
    assert run(clone).returncode == 0
    calls = (clone / "calls").read_text().splitlines()
    assert calls == ["validate fleet.yaml", "plan --memory-only fleet.yaml", "apply --yes fleet.yaml",
                     "status fleet.yaml"]


def test_a_failed_install_says_so_with_the_end_of_pips_output(clone):
    done = run(clone, FAKE_PIP_FAILS="1")
    assert done.returncode == 1
    assert "Installing into .venv failed (pip exited with 1)" in done.stderr
    assert "ERROR: No matching distribution found for pydantic>=2" in done.stderr
    assert not (clone / "calls").exists()
