"""The compiled `--target vllm` shell scripts, run: a golden file is not an oracle, /bin/sh is.

A stub `vllm` first on PATH prints the argv and environment it was started with, so each script
is checked for what it really execs: the same argv and env as the JSON form, every `${VAR}`
expanded by the shell, and a clear stop when a referenced variable is not set.
"""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
FLEETS = sorted((ROOT / "examples").glob("*.yaml")) + [ROOT / "fleet.yaml"]

STUB = """#!{python}
import json, os, sys
print(json.dumps({{"argv": sys.argv[1:], "env": dict(os.environ)}}))
"""


def compile_to(fleet: pathlib.Path, out: pathlib.Path, fmt: str) -> None:
    done = subprocess.run([sys.executable, "-m", "fleetspec", "compile", str(fleet), "--target", "vllm",
                           "--format", fmt, "-o", str(out)], capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0, done.stderr


@pytest.fixture
def stub_path(tmp_path) -> str:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    stub = bin_dir / "vllm"
    stub.write_text(STUB.format(python=sys.executable))
    stub.chmod(0o755)
    return f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"


@pytest.mark.parametrize("fleet", FLEETS, ids=[f.stem for f in FLEETS])
def test_every_compiled_script_execs_vllm_with_the_compiled_argv_and_env(fleet, tmp_path, stub_path):
    compile_to(fleet, tmp_path / "sh", "shell")
    compile_to(fleet, tmp_path / "json", "json")
    launches = {(x["server"], x["replica"]): x for x in json.loads((tmp_path / "json" / "launch.json").read_text())}
    scripts = sorted((tmp_path / "sh").glob("*.sh"))
    assert len(scripts) == len(launches)
    for script in scripts:
        server, replica = script.stem.rsplit("-", 1)
        want = launches[(server, int(replica))]
        references = {value[2:-1] for value in want["env"].values() if value.startswith("${")}
        values = {name: f"value-of-{name}" for name in references}
        done = subprocess.run(["sh", str(script)], capture_output=True, text=True, timeout=30,
                              env={"PATH": stub_path, **values})
        assert done.returncode == 0, f"{script.name}: {done.stderr}"
        got = json.loads(done.stdout)
        assert ["vllm", *got["argv"]] == want["argv"]
        expected_env = {k: values.get(v[2:-1], v) if v.startswith("${") else v for k, v in want["env"].items()}
        assert {k: got["env"].get(k) for k in expected_env} == expected_env


def test_a_script_whose_secret_is_not_set_stops_instead_of_starting_vllm(tmp_path, stub_path):
    fleet = tmp_path / "fleet.yaml"
    text = (ROOT / "examples" / "cpu-real-vllm.yaml").read_text()
    fleet.write_text(text.replace("  engine: vllm\n", "  engine: vllm\n  engine_api_key: ${MY_ENGINE_KEY}\n")
                     .replace("../.cache", str(ROOT / ".cache")))
    compile_to(fleet, tmp_path / "sh", "shell")
    script = sorted((tmp_path / "sh").glob("*.sh"))[0]

    done = subprocess.run(["sh", str(script)], capture_output=True, text=True, timeout=30, env={"PATH": stub_path})

    assert done.returncode != 0 and done.stdout == ""  # vLLM never started
    assert "MY_ENGINE_KEY" in done.stderr
