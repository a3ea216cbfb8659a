"""Router proxy overhead under concurrent load, measured with wrk (a C load generator) instead of
Python client threads, so the client does not compete with the router for the GIL-free cores.

    .venv/bin/python bench/bench_router_wrk.py [--concurrency 1,8,32] [--seconds 4] [--rounds 2]

Needs Debian's `wrk`. Each level runs direct (the no-work stub engine of bench_router.py) and
through the router, alternating A B B A, after an untimed warm-up; reports wrk's p50 latency and
requests per second. Figures go to docs/benchmarks.md, section "Router".
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import re
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from netkit import free_port  # noqa: E402

from fleetspec.routing import config  # noqa: E402
from fleetspec.spec import models  # noqa: E402

LUA = 'wrk.method = "POST"\nwrk.headers["Content-Type"] = "application/json"\nwrk.body = os.getenv("WRK_BODY")\n'
BODY = {"prompt": "how do I use pytest fixtures", "max_tokens": 4}


def wait_ready(url: str, deadline_s: float = 20.0) -> None:
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=1):
                return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"{url} did not answer within {deadline_s} s")


def wrk(port: int, model: str, connections: int, seconds: int, script: pathlib.Path) -> tuple[float, float]:
    """(p50 ms, requests/s) of one wrk run."""
    out = subprocess.run(
        ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--latency", "-s", str(script),
         f"http://127.0.0.1:{port}/v1/completions"],
        env={**os.environ, "WRK_BODY": json.dumps({"model": model, **BODY})}, capture_output=True, text=True,
        check=True,
    ).stdout
    value, unit = re.search(r"50%\s+([\d.]+)(us|ms|s)\b", out).groups()
    scale = {"us": 1e-3, "ms": 1.0, "s": 1e3}[unit]
    return float(value) * scale, float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--concurrency", default="1,8,32")
    parser.add_argument("--seconds", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    work = pathlib.Path(tempfile.mkdtemp(prefix="bench-router-wrk-"))
    script = work / "post.lua"
    script.write_text(LUA)
    engine_port, router_port = free_port(), free_port()
    engine = subprocess.Popen([sys.executable, str(ROOT / "bench/bench_router.py"), "--stub-engine", str(engine_port)],
                              stderr=subprocess.DEVNULL)
    router = None
    try:
        wait_ready(f"http://127.0.0.1:{engine_port}/health")
        spec = models.FleetSpec.model_validate({
            "name": "bench", "base_model": {"id": "fleetspec/tiny-test-llama"}, "gpus": [{"type": "sim", "count": 1}],
            "servers": [{"name": "main", "lora": {"max_loras": 2, "max_lora_rank": 8}}],
            "specialists": [{"name": "python", "version": "1.0.0", "path": "/adapters/python", "keywords": ["pytest"]}],
        })
        path = work / "router.json"
        path.write_text(config.dumps(config.document(spec, [config.Upstream("main", 0, f"http://127.0.0.1:{engine_port}")])))
        router = subprocess.Popen([sys.executable, "-m", "fleetspec.router", "serve", "--config", str(path),
                                   "--port", str(router_port), "--log-level", "warning"])
        wait_ready(f"http://127.0.0.1:{router_port}/health")
        print("| concurrency | direct p50 ms | router p50 ms | added at p50 ms | direct req/s | router req/s |")
        print("|---:|---:|---:|---:|---:|---:|")
        for level in (int(c) for c in args.concurrency.split(",")):
            wrk(engine_port, "python--1.0.0", level, 1, script)
            wrk(router_port, "auto", level, 1, script)
            direct, routed = [], []
            for _ in range(args.rounds):  # A B B A
                direct.append(wrk(engine_port, "python--1.0.0", level, args.seconds, script))
                routed.append(wrk(router_port, "auto", level, args.seconds, script))
                routed.append(wrk(router_port, "auto", level, args.seconds, script))
                direct.append(wrk(engine_port, "python--1.0.0", level, args.seconds, script))
            d50, r50 = statistics.median(x[0] for x in direct), statistics.median(x[0] for x in routed)
            print(f"| {level} | {d50:.3f} | {r50:.3f} | {r50 - d50:.3f} | "
                  f"{statistics.median(x[1] for x in direct):,.0f} | {statistics.median(x[1] for x in routed):,.0f} |")
    finally:
        for proc in (router, engine):
            if proc is not None:
                proc.terminate()
                proc.wait(timeout=10)


if __name__ == "__main__":
    main()
