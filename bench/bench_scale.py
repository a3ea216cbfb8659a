"""Benchmark: how validate, plan and compile grow with the fleet, 10 → 10,000 specialists, 1 → 512 GPUs.

Every command runs as a whole process (interpreter start to exit) on generated fleets; each figure
is the median of `--runs` runs (3 by default), with the process's peak memory (max RSS). The floor
for validate is a bare `yaml.load(..., Loader=yaml.CSafeLoader)` of the same file in its own
process, measured in the same run. The fleets are bench_plan's shape: half the servers H100-80GB at
tensor parallel 2, half A100-80GB with 2 replicas (so servers = GPUs / 2, at least one), every
specialist on two servers, 3 keywords, a domain and an extension each.

    .venv/bin/python bench/bench_scale.py [--runs 3] [--specialists 10,1000,10000] [--gpus 1,64,512]

Targets (issue 17): plan at 1,000 × 64 under 0.5 s and at 10,000 × 512 under 3 s; each compile
target within 1.3× of plan (from 1,000 specialists); validate within 1.5× of the bare YAML load (at
10,000 specialists, where parsing, not start-up, is the time). Exit 1 when one is missed.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import platform
import statistics
import subprocess
import sys
import tempfile
import time

import yaml

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

import bench_plan  # noqa: E402  (the shared fleet generator)

FLOOR = "yaml.load (CSafeLoader)"
COMMANDS = {
    FLOOR: None,
    "validate": ["validate", "{fleet}"],
    "plan": ["plan", "{fleet}", "--format", "json"],
    "compile vllm": ["compile", "{fleet}", "--target", "vllm", "--format", "json", "-o", "{out}"],
    "compile compose": ["compile", "{fleet}", "--target", "compose", "-o", "{out}"],
    "compile k8s": ["compile", "{fleet}", "--target", "k8s", "-o", "{out}"],
}
PLAN_TARGETS_S = {(1000, 64): 0.5, (10000, 512): 3.0}
COMPILE_OVER_PLAN, VALIDATE_OVER_FLOOR = 1.3, 1.5
# The ratio targets are about growth, so they are checked where the fleet, not process start-up,
# decides the time: a bare `python -c "import yaml"` is ~30 ms, fleetspec's imports (pydantic models,
# click) ~150 ms, which alone is 1.5× the floor of a 1,000-specialist file; compile also imports jinja2.
COMPILE_TARGET_FROM, VALIDATE_TARGET_FROM = 1000, 10000


def fleet(specialists: int, gpus: int) -> dict:
    servers = max(1, gpus // 2)
    document = bench_plan.generate(specialists, servers)
    if gpus == 1:  # one GPU: one H100 server at tensor parallel 1
        document["servers"][0].update(tensor_parallel_size=1, replicas=1)
        document["gpus"] = [{"type": "H100-80GB", "count": 1}]
    else:
        document["gpus"] = [{"type": "H100-80GB", "count": gpus // 2}, {"type": "A100-80GB", "count": gpus // 2}]
    return document


def argv(name: str, path: pathlib.Path, out: pathlib.Path) -> list[str]:
    if COMMANDS[name] is None:
        code = f"import yaml; yaml.load(open({str(path)!r}, encoding='utf-8'), Loader=yaml.CSafeLoader)"
        return [sys.executable, "-c", code]
    return [sys.executable, "-m", "fleetspec", *(w.format(fleet=path, out=out) for w in COMMANDS[name])]


def measure(path: pathlib.Path, work: pathlib.Path, runs: int) -> dict[str, tuple[float, float]]:
    """name → (median s, median peak MiB), round-robin over the commands after one warm-up each."""
    names = list(COMMANDS)
    samples: dict[str, list[tuple[float, int]]] = {name: [] for name in names}
    for name in names:
        timed(argv(name, path, work / "warm"))
    for i in range(runs):
        for name in names[i % len(names):] + names[:i % len(names)]:
            samples[name].append(timed(argv(name, path, work / f"out-{i}")))
    return {name: (statistics.median(s for s, _ in values), statistics.median(m for _, m in values) / 1024)
            for name, values in samples.items()}


def timed(words: list[str]) -> tuple[float, int]:
    """Wall time and the process's own peak RSS (KiB, from the rusage of its exit)."""
    with tempfile.TemporaryFile() as errors:
        start = time.perf_counter()
        child = subprocess.Popen(words, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=errors)
        _, status, usage = os.wait4(child.pid, 0)
        elapsed = time.perf_counter() - start
        child.returncode = os.waitstatus_to_exitcode(status)
        if child.returncode != 0:
            errors.seek(0)
            raise SystemExit(f"{' '.join(words)} exited {child.returncode}: {errors.read().decode()[-800:]}")
    return elapsed, usage.ru_maxrss


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--specialists", default="10,1000,10000")
    parser.add_argument("--gpus", default="1,64,512")
    args = parser.parse_args()
    grid = [(s, g) for s in map(int, args.specialists.split(",")) for g in map(int, args.gpus.split(","))]
    print(f"# {platform.platform()}, {os.cpu_count()} CPUs, Python {platform.python_version()}; "
          f"median of {args.runs} whole-process runs\n")
    print("| specialists × GPUs | file KiB | " + " | ".join(COMMANDS) + " | validate / floor | worst compile / plan |")
    print("|---|---:|" + "---:|" * len(COMMANDS) + "---:|---:|")
    missed = []
    with tempfile.TemporaryDirectory(prefix="fleetspec-scale-") as tmp:
        work = pathlib.Path(tmp)
        for specialists, gpus in grid:
            path = work / f"fleet-{specialists}x{gpus}.yaml"
            path.write_text(yaml.safe_dump(fleet(specialists, gpus), sort_keys=False), encoding="utf-8")
            found = measure(path, work, args.runs)
            plan_s = found["plan"][0]
            validate_ratio = found["validate"][0] / found[FLOOR][0]
            compile_ratio = max(found[n][0] for n in COMMANDS if n.startswith("compile")) / plan_s
            cells = " | ".join(f"{s:.2f} s / {m:.0f} MiB" for s, m in found.values())
            print(f"| {specialists:,} × {gpus} | {path.stat().st_size / 1024:.0f} | {cells} | "
                  f"{validate_ratio:.2f}× | {compile_ratio:.2f}× |", flush=True)
            target = PLAN_TARGETS_S.get((specialists, gpus))
            if target is not None and plan_s >= target:
                missed.append(f"plan {specialists} × {gpus}: {plan_s:.2f} s, target under {target} s")
            if specialists >= COMPILE_TARGET_FROM and compile_ratio > COMPILE_OVER_PLAN:
                missed.append(f"compile {specialists} × {gpus}: {compile_ratio:.2f}× plan, target {COMPILE_OVER_PLAN}×")
            if specialists >= VALIDATE_TARGET_FROM and validate_ratio > VALIDATE_OVER_FLOOR:
                missed.append(f"validate {specialists} × {gpus}: {validate_ratio:.2f}× the YAML floor, "
                              f"target {VALIDATE_OVER_FLOOR}×")
    print("\nTargets: " + ("all met" if not missed else "MISSED: " + "; ".join(missed)))
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
