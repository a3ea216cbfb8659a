"""The shipped fleets through the real command line: `python -m fleetspec` as a user runs it."""

from __future__ import annotations

import importlib.util
import pathlib
import shutil
import subprocess
import sys

import pytest
import require

ROOT = pathlib.Path(__file__).resolve().parents[2]
FLEETS = [*sorted((ROOT / "examples").glob("*.yaml")), ROOT / "fleet.yaml"]


def fleetspec(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "fleetspec", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=60)


def test_validate_every_shipped_fleet_exits_0():
    done = fleetspec("validate", *(str(p.relative_to(ROOT)) for p in FLEETS))
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.count(" is valid.") == len(FLEETS)


@pytest.mark.parametrize("path", FLEETS, ids=lambda p: p.name)
def test_plan_every_shipped_fleet_exits_0(path: pathlib.Path):
    done = fleetspec("plan", str(path.relative_to(ROOT)), "--format", "json")
    assert done.returncode == 0, done.stdout + done.stderr


def test_a_broken_copy_of_the_default_fleet_exits_1_and_names_the_line(tmp_path: pathlib.Path):
    text = (ROOT / "fleet.yaml").read_text(encoding="utf-8")
    broken = tmp_path / "fleet.yaml"
    broken.write_text(text.replace("max_lora_rank: 8", "max_lora_rank: 48"), encoding="utf-8")
    line = next(i for i, row in enumerate(text.splitlines(), 1) if "max_lora_rank: 8" in row)
    done = fleetspec("validate", str(broken))
    assert done.returncode == 1
    assert f"{broken}:{line}:" in done.stdout + done.stderr


def test_demo_adapters_on_disk_are_what_the_script_writes():
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "make-demo-adapters"), "--check"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr


def test_docker_compose_accepts_the_benchmark_compose_file(tmp_path: pathlib.Path):
    tool = shutil.which("docker-compose")
    if tool is None:
        require.unavailable("ORACLES", "docker-compose is not installed; run scripts/setup-oracles")
    spec = importlib.util.spec_from_file_location("bench_validate", ROOT / "bench" / "bench_validate.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    compose = tmp_path / "docker-compose.yaml"
    compose.write_text(bench.generate_compose(5, 60), encoding="utf-8")
    done = subprocess.run([tool, "-f", str(compose), "config", "--services"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == [f"svc-{i:04d}" for i in range(5)]
