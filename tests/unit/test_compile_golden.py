"""Every example × every compile target, byte for byte against tests/golden/compile/.

Adapter paths relative to fleet.yaml are resolved against a fixed directory (/srv/fleet) so the
golden files do not depend on where the checkout lives. `pytest --update-golden` rewrites them.
"""

from __future__ import annotations

import pathlib

import pytest

from fleetspec.compile import slots, targets
from fleetspec.planner import report
from fleetspec.spec import loading

ROOT = pathlib.Path(__file__).resolve().parents[2]
FLEETS = sorted(ROOT.glob("examples/*.yaml")) + [ROOT / "fleet.yaml"]
BASE_DIR = pathlib.Path("/srv/fleet")
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
    for name, text in out.files.items():
        golden.check(f"{folder}/{name}", text)


@pytest.mark.parametrize("target", ["compose", "k8s", "router", "vllm"])
def test_compiling_twice_gives_the_same_bytes(target):
    fleet = ROOT / "examples" / "001-hi-moe-awq.yaml"
    assert _compile(fleet, target, None) == _compile(fleet, target, None)


@pytest.mark.parametrize("fleet", FLEETS, ids=[f.stem for f in FLEETS])
def test_the_sim_engine_accepts_every_compiled_argv(fleet):
    """The sim must start from exactly what real vLLM gets (vLLM's own parser: the oracle tests)."""
    from fleetspec.sim import args as sim_args

    loaded = loading.load_path(fleet)
    plan = report.plan_fleet(loaded.spec)
    for launch in targets.launches(loaded.spec, slots.from_plan(plan), BASE_DIR):
        parsed = sim_args.parse(launch.argv[1:], launch.env)
        assert (parsed.model, parsed.port) == (loaded.spec.base_model.id, launch.settings["port"])
        assert parsed.enable_lora == bool(launch.settings.get("enable_lora"))
