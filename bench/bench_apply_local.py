"""Benchmark: `fleetspec apply` on the local runtime, 10 servers of the sim engine, every adapter on each.

Three things, each a whole `fleetspec apply FILE --yes` process (median and max of `--runs`):
- no-op, fast path: nothing changed; the standard-library shortcut (reconcile.fastpath) answers;
- no-op, full path: the same with FLEETSPEC_NO_FASTPATH=1 (load, validate, plan, observe, diff);
- adapter-only change: the specialist's version moves (1.0.0 ↔ 1.1.0), timed from the command's
  start until every one of the 10 engines lists the new version on /v1/models (apply returns after
  loading it everywhere, moving the router and unloading the old one; the engines are then checked).

Target (issue 17): the adapter-only change served everywhere in under 1 s. Exit 1 when missed.

    .venv/bin/python bench/bench_apply_local.py [--runs 5]
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

import yaml

ROOT = pathlib.Path(__file__).resolve().parents[1]
SERVERS, BASE_PORT = 10, 18100
TARGET_S = 1.0


def write_fleet(directory: pathlib.Path, version: str) -> pathlib.Path:
    document = {
        "name": "bench-apply-local", "base_model": {"id": "fleetspec/tiny-test-llama", "max_model_len": 2048},
        "gpus": [{"type": "sim", "count": SERVERS}],
        "servers": [{"name": f"s{i}", "gpu_memory_utilization": 0.45, "port": BASE_PORT + 10 * i,
                     "lora": {"max_loras": 2, "max_cpu_loras": 4, "max_lora_rank": 8}} for i in range(SERVERS)],
        "specialists": [{"name": "python", "version": version, "path": f"./adapters/python/{version}", "rank": 8,
                         "keywords": ["python"]}],
        "runtime": {"target": "local", "engine": "sim", "adapter_roots": ["./adapters"],
                    "router": {"port": BASE_PORT - 1}},
    }
    path = directory / "fleet.yaml"
    path.write_text(yaml.safe_dump(document, sort_keys=False), encoding="utf-8")
    return path


def apply(path: pathlib.Path, env: dict | None = None) -> float:
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "fleetspec", "apply", str(path), "--yes"], cwd=path.parent,
                          capture_output=True, text=True, env={**os.environ, **(env or {})}, check=False)
    elapsed = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"fleetspec apply exited {done.returncode}:\n{done.stdout[-2000:]}{done.stderr[-2000:]}")
    return elapsed


def served_everywhere(name: str) -> bool:
    for i in range(SERVERS):
        with urllib.request.urlopen(f"http://127.0.0.1:{BASE_PORT + 10 * i}/v1/models", timeout=5) as response:
            if name not in {card["id"] for card in json.loads(response.read())["data"]}:
                return False
    return True


def change(directory: pathlib.Path, version: str) -> float:
    path = write_fleet(directory, version)
    start = time.perf_counter()
    apply(path)
    deadline = start + 30
    while not served_everywhere(f"python--{version}"):
        if time.perf_counter() > deadline:
            raise SystemExit(f"python {version} was not served by every engine within 30 s")
        time.sleep(0.005)
    return time.perf_counter() - start


def cell(values: list[float]) -> str:
    return f"{statistics.median(values) * 1000:.0f} (max {max(values) * 1000:.0f})"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="fleetspec-apply-") as tmp:
        directory = pathlib.Path(tmp)
        for version in ("1.0.0", "1.1.0"):
            shutil.copytree(ROOT / "adapters/python/1.0.0", directory / "adapters/python" / version)
        path = write_fleet(directory, "1.0.0")
        try:
            apply(path)  # bring-up, untimed
            apply(path)  # warm
            fast = [apply(path) for _ in range(args.runs)]
            full = [apply(path, {"FLEETSPEC_NO_FASTPATH": "1"}) for _ in range(args.runs)]
            changes = [change(directory, "1.1.0" if i % 2 == 0 else "1.0.0") for i in range(args.runs)]
        finally:
            subprocess.run([sys.executable, "-m", "fleetspec", "destroy", str(path), "--yes"], cwd=directory,
                           capture_output=True, check=False)
    print(f"{SERVERS} servers (local processes, sim engine), one adapter each, the router on; "
          f"ms, median of {args.runs} (max)\n")
    print("| what | whole `fleetspec apply` process |")
    print("|---|---:|")
    print(f"| no-op, fast path | {cell(fast)} |")
    print(f"| no-op, full path (FLEETSPEC_NO_FASTPATH=1) | {cell(full)} |")
    print(f"| adapter-only change, start → new version served by all {SERVERS} engines | {cell(changes)} |")
    median = statistics.median(changes)
    print(f"\nTarget (adapter-only change served everywhere under {TARGET_S:.0f} s): "
          f"{'met' if median < TARGET_S else 'MISSED'}, median {median:.2f} s")
    return 0 if median < TARGET_S else 1


if __name__ == "__main__":
    sys.exit(main())
