"""Compiled compose files checked by Debian's `docker-compose config`; manifests by
`kubernetes-validate --strict` against a pinned Kubernetes release. Without docker-compose the compose
tests skip with the reason, and fail instead under FLEETSPEC_REQUIRE_ORACLES=1 (CI); kubernetes-validate
is in the `test` extra, so its absence always fails."""

from __future__ import annotations

import os
import pathlib
import shutil
import subprocess
import sys

import pytest
import require
import yaml

from fleetspec.cli import compile_cmd, plan_cmd
from fleetspec.compile import compose, deploy, k8s, k8s_changes, slots, targets, vllm_args

ROOT = pathlib.Path(__file__).resolve().parents[2]
FLEETS = sorted(ROOT.glob("examples/*.yaml")) + [ROOT / "fleet.yaml"]
KUBERNETES_VERSION = "1.33.0"  # pinned: the release manifests must be valid for


def _require(tool: str | None, what: str) -> str:
    if tool:
        return tool
    require.unavailable("ORACLES", f"{what} is not installed; run scripts/setup-oracles to enable this oracle")


def _compile(fleet: pathlib.Path, target: str, directory: pathlib.Path) -> dict[str, str]:
    loaded, plan = plan_cmd.build_plan(str(fleet))
    assert plan.fits, [d.render() for d in plan.errors]
    out = targets.compile_target(loaded.spec, slots.from_plan(plan), target, base_dir=loaded.base_dir)
    compile_cmd.write_files(directory, out.files)
    return out.files


def docker_compose_config(directory: pathlib.Path, env: dict[str, str] | None = None) -> dict:
    tool = _require(shutil.which("docker-compose"), "docker-compose (Debian package docker-compose)")
    result = subprocess.run([tool, "config"], cwd=directory, capture_output=True, text=True, timeout=60,
                            env={**os.environ, **(env or {})})
    assert result.returncode == 0, result.stderr
    return yaml.safe_load(result.stdout)


def kubernetes_validate(files: list[pathlib.Path]) -> None:
    # In the `test` extra, so never a skip: a test environment without it is broken.
    tool = shutil.which("kubernetes-validate", path=str(pathlib.Path(sys.executable).parent)) \
        or shutil.which("kubernetes-validate")
    assert tool, "kubernetes-validate is not installed; it is in the test extra: pip install -e '.[test]'"
    result = subprocess.run([tool, "--strict", "--kubernetes-version", KUBERNETES_VERSION, *map(str, files)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("fleet", FLEETS, ids=[f.name for f in FLEETS])
def test_every_compose_project_passes_docker_compose_config_and_runs_the_compiled_argv(fleet, tmp_path):
    _compile(fleet, "compose", tmp_path)
    resolved = docker_compose_config(tmp_path)
    loaded, plan = plan_cmd.build_plan(str(fleet))
    for slot in slots.from_plan(plan):
        service = resolved["services"][f"{slot.server}-{slot.replica}"]
        launch = vllm_args.replica_launch(loaded.spec, loaded.spec.server(slot.server), slot.replica,
                                          host="0.0.0.0", port=8000, base_dir=loaded.base_dir)
        assert [*service["entrypoint"], *service["command"]] == launch.argv
        server = loaded.spec.server(slot.server)
        # A CPU host reserves no device: vLLM's CPU build runs in host RAM.
        reserves_gpus = loaded.spec.runtime.engine == "vllm" and not deploy.on_host(loaded.spec, server)
        expected_ids = [str(g) for g in slot.gpus] if reserves_gpus else None
        devices = service.get("deploy", {}).get("resources", {}).get("reservations", {}).get("devices")
        assert (devices[0]["device_ids"] if devices else None) == expected_ids


@pytest.mark.parametrize("fleet", FLEETS, ids=[f.name for f in FLEETS])
def test_every_manifest_passes_kubernetes_validate_strict(fleet, tmp_path):
    files = _compile(fleet, "k8s", tmp_path)
    manifests = [tmp_path / name for name in files if name != k8s.KUSTOMIZATION]
    kubernetes_validate(manifests)
    kustomization = yaml.safe_load((tmp_path / k8s.KUSTOMIZATION).read_text())
    assert kustomization["resources"] == [m.name for m in manifests]
    assert all((tmp_path / name).exists() for name in kustomization["resources"])


def kustomize_build(directory: pathlib.Path) -> list[dict]:
    """`kustomize build` (or `kubectl kustomize`, the same kustomize inside): offline, no cluster."""
    tool = shutil.which("kustomize")
    words = [tool, "build"] if tool else [shutil.which("kubectl") or "", "kustomize"]
    if not words[0]:
        # Not installed by scripts/setup-oracles, so a plain skip, not FLEETSPEC_REQUIRE_ORACLES' failure.
        pytest.skip("neither kustomize nor kubectl is installed; `kubectl apply -k` is not checked")
    result = subprocess.run([*words, str(directory)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return [d for d in yaml.safe_load_all(result.stdout) if d is not None]


@pytest.mark.parametrize("fleet", FLEETS, ids=[f.name for f in FLEETS])
def test_kustomize_builds_exactly_the_compiled_objects_from_the_multi_document_files(fleet, tmp_path):
    """What `kubectl apply -k DIR` would send: every document of every listed file, nothing changed."""
    files = _compile(fleet, "k8s", tmp_path)
    built = kustomize_build(tmp_path)
    compiled = k8s_changes.objects(files)
    assert len(built) == len(compiled)  # no object lost or doubled between files
    assert {(d["kind"], d["metadata"]["name"]): d for d in built} == compiled


def test_compose_resolves_secret_references_from_the_operators_environment(tmp_path):
    from fleetspec.spec import models

    spec = models.FleetSpec.model_validate({
        "name": "f", "base_model": {"id": "m/m"}, "gpus": "1x L4", "runtime": {"engine": "vllm"},
        "servers": [{"name": "main", "env": {"HF_TOKEN": "${HF_TOKEN}", "PRICE": "costs $5, not $HOME or $(no)"},
                     "extra_args": ["--tokenizer", "${TOKENIZER_REPO}"]}]})
    files = compose.compile_project(spec, slots.sequential(spec))
    compile_cmd.write_files(tmp_path, files)
    service = docker_compose_config(tmp_path, {"HF_TOKEN": "hf_secret", "TOKENIZER_REPO": "org/tok"})["services"]["main-0"]
    assert service["environment"]["HF_TOKEN"] == "hf_secret"
    # `config` prints literal dollars escaped again ($$); unescaped, the value is the literal text,
    # not the operator's $HOME.
    assert compose.unescape(service["environment"]["PRICE"]) == "costs $5, not $HOME or $(no)"
    assert service["command"][-2:] == ["--tokenizer", "org/tok"]
    assert "hf_secret" not in files[compose.COMPOSE_FILE]
