"""`fleetspec compile` as a user runs it: real processes, real files, a real shell, a real wheel."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys
import zipfile

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "001-hi-moe-awq.yaml"
FLEETSPEC = [sys.executable, "-m", "fleetspec.cli.app"]


def run(*args: str, cwd: pathlib.Path = ROOT, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([*FLEETSPEC, *args], cwd=cwd, capture_output=True, text=True, timeout=120,
                          env={**os.environ, **(env or {})})


def test_compiling_to_a_directory_twice_gives_byte_identical_files(tmp_path):
    for target in ("vllm", "compose", "k8s", "router"):
        first, second = tmp_path / f"{target}-1", tmp_path / f"{target}-2"
        assert run("compile", str(EXAMPLE), "--target", target, "-o", str(first)).returncode == 0
        assert run("compile", str(EXAMPLE), "--target", target, "-o", str(second)).returncode == 0
        names = sorted(p.name for p in first.iterdir())
        assert names == sorted(p.name for p in second.iterdir()) and names
        assert all((first / n).read_bytes() == (second / n).read_bytes() for n in names)
    assert sorted(p.name for p in (tmp_path / "compose-1").iterdir()) == ["docker-compose.yaml", "router.json"]
    assert (tmp_path / "k8s-1" / "kustomization.yaml").exists()


def test_a_fleet_that_does_not_fit_is_refused_with_the_plan_findings(tmp_path):
    fleet = tmp_path / "fleet.yaml"
    fleet.write_text("""name: too-big
base_model: {id: meta-llama/Llama-3.1-70B-Instruct, max_model_len: 8192}
gpus: "1x L4"
servers: [{name: main}]
""")
    result = run("compile", str(fleet), "--target", "compose", "-o", str(tmp_path / "out"))
    assert result.returncode == 1
    assert "fleetspec compiles only fleets that plan" in result.stderr
    assert "error" in result.stderr and "servers[0]" in result.stderr
    assert not (tmp_path / "out").exists()


def test_vllm_json_is_a_list_per_replica():
    result = run("compile", str(EXAMPLE), "--target", "vllm", "--format", "json")
    assert result.returncode == 0, result.stderr
    (replica,) = json.loads(result.stdout)
    assert (replica["server"], replica["replica"]) == ("main", 0)
    assert replica["argv"][:3] == ["vllm", "serve", "Qwen/QwQ-32B-Preview-AWQ"]
    assert replica["env"]["CUDA_VISIBLE_DEVICES"] == "0"


def test_the_shell_line_runs_in_a_real_shell_with_every_word_intact(tmp_path):
    """A fake `vllm` on PATH records its argv and environment; secrets come from the caller's env."""
    from fleetspec.compile import vllm_args

    fake = tmp_path / "bin" / "vllm"
    fake.parent.mkdir()
    fake.write_text(f"#!{sys.executable}\nimport json, os, sys\n"
                    "print(json.dumps({'argv': sys.argv[1:], 'token': os.environ.get('HF_TOKEN'),"
                    " 'note': os.environ.get('NOTE')}))\n")
    fake.chmod(0o755)
    argv = ["vllm", "serve", "m", "--lora-modules", "a--1=/x y/'q'\"d\"$HOME`id`", '{"name":"b","path":"/p,q"}']
    line = vllm_args.to_shell(argv, {"HF_TOKEN": "${HF_TOKEN}", "NOTE": "it's $5\nnext"})
    result = subprocess.run(["/bin/sh", "-c", line], capture_output=True, text=True, timeout=30,
                            env={"PATH": f"{fake.parent}:/usr/bin:/bin", "HF_TOKEN": "hf_from_env"})
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {"argv": argv[1:], "token": "hf_from_env", "note": "it's $5\nnext"}


@pytest.mark.slow
def test_the_wheel_ships_the_templates_and_compiles_from_them(tmp_path):
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path), str(ROOT)],
                           capture_output=True, text=True, timeout=600)
    assert build.returncode == 0, build.stderr[-2000:]
    (wheel,) = tmp_path.glob("fleetspec-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    shipped = sorted(n.split("fleetspec/templates/", 1)[1] for n in names if n.startswith("fleetspec/templates/"))
    in_checkout = sorted(str(p.relative_to(ROOT / "templates")) for p in (ROOT / "templates").rglob("*.j2"))
    assert shipped == in_checkout and shipped
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    assert not (site / "fleetspec" / "templates").is_symlink()
    env = {**os.environ, "PYTHONPATH": str(site)}
    where = subprocess.run([sys.executable, "-c", "from fleetspec.compile import templating; print(templating._default_dir())"],
                           cwd=tmp_path, capture_output=True, text=True, timeout=60, env=env)
    assert where.stdout.strip() == str(site / "fleetspec" / "templates")
    result = subprocess.run([*FLEETSPEC, "compile", str(EXAMPLE), "--target", "k8s"], cwd=tmp_path,
                            capture_output=True, text=True, timeout=120, env=env)
    assert result.returncode == 0, result.stderr
    assert 'kind: "Deployment"' in result.stdout
