"""Benchmark: `fleetspec compile` to every target, whole process, on the generated 1,000-specialist fleet.

The fleet is bench_plan's (1,000 specialists on 32 servers over 64 GPUs, 48 replicas), so the
numbers compare with `fleetspec plan` on the same file, which every compile runs first.

    .venv/bin/python bench/bench_compile.py [--runs 10]
"""

from __future__ import annotations

import argparse
import pathlib
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

import yaml

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

import bench_plan  # noqa: E402  (the shared fleet generator)

COMMANDS = {
    "plan (baseline)": ["plan", "{fleet}", "--format", "json"],
    "compile vllm (json)": ["compile", "{fleet}", "--target", "vllm", "--format", "json", "-o", "{out}"],
    "compile compose": ["compile", "{fleet}", "--target", "compose", "-o", "{out}"],
    "compile k8s": ["compile", "{fleet}", "--target", "k8s", "-o", "{out}"],
    "compile router": ["compile", "{fleet}", "--target", "router", "-o", "{out}"],
}


def run_once(words: list[str], fleet: pathlib.Path, out: pathlib.Path) -> float:
    shutil.rmtree(out, ignore_errors=True)
    argv = [sys.executable, "-m", "fleetspec", *(w.format(fleet=fleet, out=out) for w in words)]
    start = time.perf_counter()
    done = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, check=False)
    elapsed = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} exited {done.returncode}: {done.stderr[-500:]}")
    return elapsed


def measure(fleet: pathlib.Path, work: pathlib.Path, runs: int) -> dict[str, list[float]]:
    """Round-robin over the commands (rotating the start) after one untimed warm-up of each."""
    names = list(COMMANDS)
    times: dict[str, list[float]] = {name: [] for name in names}
    for name in names:
        run_once(COMMANDS[name], fleet, work / "warm")
    for i in range(runs):
        for name in names[i % len(names):] + names[:i % len(names)]:
            times[name].append(run_once(COMMANDS[name], fleet, work / "out"))
    return times


def output_size(fleet: pathlib.Path, work: pathlib.Path, name: str) -> tuple[int, int]:
    out = work / "size"
    run_once(COMMANDS[name], fleet, out)
    files = list(out.iterdir()) if out.exists() else []
    return len(files), sum(f.stat().st_size for f in files)


def in_process(fleet: pathlib.Path) -> dict[str, float]:
    """Where the time goes inside one process (imports excluded)."""
    from fleetspec.cli import plan_cmd
    from fleetspec.compile import slots, targets

    t0 = time.perf_counter()
    loaded, plan = plan_cmd.build_plan(str(fleet))
    found = {"load + checks + plan": time.perf_counter() - t0}
    placed = slots.from_plan(plan)
    for target in targets.TARGETS:
        t = time.perf_counter()
        targets.compile_target(loaded.spec, placed, target, fmt="json", base_dir=loaded.base_dir)
        found[f"render {target}"] = time.perf_counter() - t
    return found


def row(label: str, values: list[float], files: int | None = None, size: int | None = None) -> str:
    ms = sorted(v * 1000 for v in values)
    q = statistics.quantiles(ms, n=4) if len(ms) > 1 else [ms[0], ms[0], ms[0]]
    out = f"{files} / {size / 1024:.0f} KiB" if files else "–"
    return f"| {label} | {statistics.median(ms):.0f} | {q[0]:.0f}–{q[2]:.0f} | {ms[0]:.0f}–{ms[-1]:.0f} | {out} |"


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=10)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = pathlib.Path(tmp)
        fleet = work / "fleet.yaml"
        fleet.write_text("# yaml-language-server: $schema=x\n" + yaml.safe_dump(bench_plan.generate(), sort_keys=False))
        times = measure(fleet, work, args.runs)
        print(f"{args.runs} runs each, interleaved; ms, process start to exit\n")
        print("| command | median | IQR | min–max | output (files / size) |")
        print("|---|---|---|---|---|")
        for name, values in times.items():
            files, size = output_size(fleet, work, name) if name.startswith("compile") else (None, None)
            print(row(name, values, files, size))
        print("\nin-process (one run, imports excluded):")
        for stage, seconds in in_process(fleet).items():
            print(f"  {stage}: {seconds * 1000:.0f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
