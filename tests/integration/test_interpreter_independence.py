"""Which interpreter runs fleetspec is a fact of this shell, not of the fleet: a fleet applied with
`.venv/bin/fleetspec` and planned with `python -m fleetspec` (another argv[0], maybe another path to
the same venv) has nothing to change, so no engine restarts."""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys

import yaml
from adapter_factory import TINY_LLAMA, write_adapter
from netkit import free_port

MODEL = "fleetspec/tiny-test-llama"


def run(argv: list[str], cwd: pathlib.Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "FLEETSPEC_SIM_STARTUP_SECONDS": "0"}
    return subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=120)


def test_plan_from_another_interpreter_path_sees_no_change(tmp_path):
    write_adapter(tmp_path / "adapters/python/1", TINY_LLAMA, rank=8, base_model=MODEL)
    fleet = tmp_path / "fleet.yaml"
    fleet.write_text(yaml.safe_dump({
        "name": "interp", "base_model": {"id": MODEL, "max_model_len": 1024}, "gpus": [{"type": "sim"}],
        "servers": [{"name": "main", "gpu_memory_utilization": 0.2,
                     "lora": {"max_loras": 1, "max_cpu_loras": 2, "max_lora_rank": 8}}],
        "specialists": [{"name": "python", "version": "1", "path": "./adapters/python/1"}],
        "runtime": {"target": "local", "engine": "sim", "base_port": free_port(), "router": {"enabled": False},
                    "adapter_roots": ["./adapters"]},
    }))
    script = pathlib.Path(sys.executable).parent / "fleetspec"
    # Another spelling of the same venv's interpreter than the script's `#!` line (python vs python3).
    shebang = script.read_text().splitlines()[0][2:].strip()
    alias = next(p for p in sorted(script.parent.glob("python*")) if str(p) != shebang)
    try:
        applied = run([str(script), "apply", str(fleet), "--yes"], tmp_path)
        assert applied.returncode == 0, applied.stdout + applied.stderr
        planned = run([str(alias), "-m", "fleetspec", "plan", str(fleet), "--detailed-exitcode"], tmp_path)
        assert planned.returncode == 0, f"a plan from {alias} wants changes:\n{planned.stdout}{planned.stderr}"
    finally:
        destroyed = run([str(script), "destroy", str(fleet), "--yes"], tmp_path)
        assert destroyed.returncode == 0, destroyed.stdout + destroyed.stderr
