"""Every example × every compile target, byte for byte against tests/golden/compile/.

Adapter paths relative to fleet.yaml are resolved against a fixed directory (/srv/fleet) so the
golden files do not depend on where the checkout lives. `pytest --update-golden` rewrites them.
"""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import pytest

from fleetspec.compile import slots, targets
from fleetspec.planner import report
from fleetspec.spec import loading

ROOT = pathlib.Path(__file__).resolve().parents[2]
FLEETS = sorted(ROOT.glob("examples/*.yaml")) + [ROOT / "fleet.yaml"]
BASE_DIR = pathlib.Path("/srv/fleet")
GOLDEN = ROOT / "tests" / "golden" / "compile"
CASES = [("vllm", "shell"), ("vllm", "json"), ("vllm", "config"), ("compose", None), ("k8s", None), ("router", None)]


def _compile(fleet: pathlib.Path, target: str, fmt: str | None) -> targets.Output:
    loaded = loading.load_path(fleet)
    plan = report.plan_fleet(loaded.spec)
    assert plan.fits, [d.render() for d in plan.errors]
    return targets.compile_target(loaded.spec, slots.from_plan(plan), target, fmt=fmt or "shell", base_dir=BASE_DIR)


@pytest.mark.parametrize("fleet", FLEETS, ids=[f.stem for f in FLEETS])
@pytest.mark.parametrize(("target", "fmt"), CASES, ids=[f"{t}-{f}" if f else t for t, f in CASES])
def test_compiled_output_matches_golden(golden, fleet, target, fmt):
    out = _compile(fleet, target, fmt)
    folder = f"compile/{fleet.stem}/{target}" + (f"-{fmt}" if fmt else "")
    golden.check_tree(folder, out.files)


def test_every_golden_folder_is_a_case_that_runs():
    """A golden folder no case compiles (a renamed example, a dropped target) would never be checked."""
    expected = {f"{fleet.stem}/{target}" + (f"-{fmt}" if fmt else "") for fleet in FLEETS for target, fmt in CASES}
    on_disk = {f"{fleet.name}/{case.name}" for fleet in GOLDEN.iterdir() for case in fleet.iterdir()}
    assert on_disk - expected == set(), "golden folders no test compiles; delete them or add the case"


# One child per hash seed compiles every fleet × case and prints it all as JSON: set and dict order that
# leaks into the output differs between seeds, which one process compiling twice cannot see.
_DRIVER = """
import json, pathlib, sys
from fleetspec.compile import slots, targets
from fleetspec.planner import report
from fleetspec.spec import loading
out = {}
for fleet, target, fmt in json.loads(sys.argv[1]):
    loaded = loading.load_path(fleet)
    plan = report.plan_fleet(loaded.spec)
    files = targets.compile_target(loaded.spec, slots.from_plan(plan), target, fmt=fmt or "shell",
                                   base_dir=pathlib.Path(sys.argv[2])).files
    out[f"{pathlib.Path(fleet).stem}/{target}-{fmt}"] = files
sys.stdout.write(json.dumps(out, sort_keys=True))
"""


def test_compiled_bytes_do_not_depend_on_the_hash_seed():
    jobs = json.dumps([[str(fleet), target, fmt] for fleet in FLEETS for target, fmt in CASES])
    outputs = {}
    for seed in ("1", "2"):
        done = subprocess.run([sys.executable, "-c", _DRIVER, jobs, str(BASE_DIR)], cwd=ROOT, capture_output=True,
                              env={**os.environ, "PYTHONHASHSEED": seed}, timeout=120)
        assert done.returncode == 0, done.stderr.decode()
        outputs[seed] = json.loads(done.stdout)
    assert len(outputs["1"]) == len(FLEETS) * len(CASES)
    differing = sorted(
        f"{case}/{name}" for case in outputs["1"]
        for name in set(outputs["1"][case]) | set(outputs["2"][case])
        if outputs["1"][case].get(name) != outputs["2"][case].get(name)
    )
    assert differing == [], "output differs between PYTHONHASHSEED=1 and =2"


@pytest.mark.parametrize("fleet", FLEETS, ids=[f.stem for f in FLEETS])
def test_the_sim_engine_accepts_every_compiled_argv(fleet):
    """The sim must start from exactly what real vLLM gets (vLLM's own parser: the oracle tests)."""
    from fleetspec.compile import vllm_args
    from fleetspec.sim import args as sim_args

    loaded = loading.load_path(fleet)
    plan = report.plan_fleet(loaded.spec)
    for launch in targets.launches(loaded.spec, slots.from_plan(plan), BASE_DIR):
        parsed = sim_args.parse(launch.argv[1:], launch.env)
        model = vllm_args.resolve_path(loaded.spec.base_model.id, BASE_DIR)  # a local model dir: absolute
        assert (parsed.model, parsed.port) == (model, launch.settings["port"])
        assert parsed.enable_lora == bool(launch.settings.get("enable_lora"))
