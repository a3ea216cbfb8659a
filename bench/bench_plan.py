"""Benchmark: `fleetspec plan` as a whole process on a large generated fleet.

1,000 specialists on 32 servers over 64 GPUs (32 H100 + 32 A100-80GB, half the servers at
tensor parallel 2). Target: under 1 second per run, process start to exit.

    .venv/bin/python bench/bench_plan.py [--runs 20]
"""

from __future__ import annotations

import argparse
import pathlib
import statistics
import subprocess
import sys
import tempfile
import time

import yaml

ROOT = pathlib.Path(__file__).resolve().parents[1]
RANKS = (8, 16, 32, 64)


def generate(specialists: int = 1000, servers: int = 32) -> dict:
    fleet_servers = []
    for i in range(servers):
        h100 = i % 2 == 0
        fleet_servers.append({
            "name": f"pool-{i:02d}", "replicas": 1 if h100 else 2, "tensor_parallel_size": 2 if h100 else 1,
            "gpu_type": "H100-80GB" if h100 else "A100-80GB", "port": 9000 + 10 * i,
            "lora": {"max_loras": 8, "max_cpu_loras": 64, "max_lora_rank": 64},
        })
    fleet_specialists = [
        {
            "name": f"spec-{n:04d}", "version": "1.0.0", "path": f"/adapters/spec-{n:04d}/v1.0.0",
            "rank": RANKS[n % len(RANKS)], "domains": [f"domain-{n % 50}"],
            "keywords": [f"kw{n}a", f"kw{n}b", f"topic{n % 97}"], "extensions": [f".x{n % 40}"],
            "servers": [f"pool-{n % servers:02d}", f"pool-{(n + 1) % servers:02d}"],
        }
        for n in range(specialists)
    ]
    return {
        "name": "bench-fleet",
        "base_model": {"id": "meta-llama/Llama-3.1-8B-Instruct", "max_model_len": 16384},
        "gpus": [{"type": "H100-80GB", "count": 32}, {"type": "A100-80GB", "count": 32}],
        "servers": fleet_servers,
        "specialists": fleet_specialists,
        "runtime": {"target": "docker", "engine": "vllm", "adapter_roots": ["/adapters"]},
    }


def run_once(command: str, path: pathlib.Path) -> tuple[float, int]:
    argv = [sys.executable, "-m", "fleetspec", command, str(path)] + (["--format", "json"] if command == "plan" else [])
    start = time.perf_counter()
    done = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, check=False)
    return time.perf_counter() - start, done.returncode


def interleaved(path: pathlib.Path, runs: int) -> dict[str, list[float]]:
    """plan and validate on the same file, A B B A ..., after one untimed warm-up of each."""
    times: dict[str, list[float]] = {"plan": [], "validate": []}
    for command in times:
        run_once(command, path)
    for i in range(runs):
        for command in (("plan", "validate") if i % 2 == 0 else ("validate", "plan")):
            elapsed, code = run_once(command, path)
            if code != 0:
                raise SystemExit(f"`fleetspec {command} {path}` exited {code}")
            times[command].append(elapsed)
    return times


def row(label: str, command: str, values: list[float]) -> str:
    ms = sorted(v * 1000 for v in values)
    q = statistics.quantiles(ms, n=4)
    return (f"| {label} | `fleetspec {command}` | {statistics.median(ms):.0f} | {q[0]:.0f}–{q[2]:.0f} | "
            f"{ms[0]:.0f}–{ms[-1]:.0f} |")


def in_process(path: pathlib.Path) -> dict[str, float]:
    """Where the time goes inside one process (imports excluded)."""
    from fleetspec.planner import report
    from fleetspec.spec import loading
    from fleetspec.validation import checks

    t0 = time.perf_counter()
    loaded = loading.load_path(path)
    t1 = time.perf_counter()
    checks.check(loaded)
    t2 = time.perf_counter()
    plan = report.plan_fleet(loaded.spec, locate=loaded.locate)
    t3 = time.perf_counter()
    plan.to_json()
    t4 = time.perf_counter()
    return {"load": t1 - t0, "checks": t2 - t1, "plan": t3 - t2, "json": t4 - t3}


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=20)
    args = parser.parse_args()
    rows, medians = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        generated = pathlib.Path(tmp) / "fleet.yaml"
        generated.write_text(yaml.safe_dump(generate(), sort_keys=False), encoding="utf-8")
        inputs = [("examples/001-hi-moe-awq.yaml", ROOT / "examples/001-hi-moe-awq.yaml"),
                  ("generated: 1000 specialists, 32 servers, 64 GPUs", generated)]
        for label, path in inputs:
            times = interleaved(path, args.runs)
            medians[label] = statistics.median(times["plan"])
            rows += [row(label, "plan", times["plan"]), row(label, "validate", times["validate"])]
        stages = in_process(generated)
    print("| input | command | median ms | p25–p75 ms | min–max ms |")
    print("|---|---|---:|---:|---:|")
    print("\n".join(rows))
    print("in process (generated fleet): " + ", ".join(f"{k} {v * 1000:.0f} ms" for k, v in stages.items()))
    return 0 if max(medians.values()) < 1.0 else 1


if __name__ == "__main__":
    sys.exit(main())
