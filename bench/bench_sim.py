"""Benchmark: how fast the sim engine comes up and answers, next to a bare stdlib HTTP server.

The sim stands in for `vllm serve` in tests and on machines without a GPU, so what matters is
(1) process start to the first `GET /health` = 200 (with FLEETSPEC_SIM_STARTUP_SECONDS=0), measured
side by side with `python -m http.server` (the floor for any Python HTTP server), interleaved
A B B A; (2) `EngineClient.load_adapter` round trips (GET /v1/models, then POST, reading a real
adapter directory); (3) non-streaming `/v1/completions` round trips.

Usage: .venv/bin/python bench/bench_sim.py [--runs 20] [--requests 200]
Figures go to docs/benchmarks.md, section "Sim engine".
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

import adapter_factory  # noqa: E402

from fleetspec.catalog import models as catalog  # noqa: E402
from fleetspec.engine_api import client as engine_client  # noqa: E402
from fleetspec.spec import models  # noqa: E402

MODEL = "fleetspec/tiny-test-llama"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def spawn(kind: str, port: int) -> subprocess.Popen:
    if kind == "sim":
        argv = [sys.executable, "-m", "fleetspec.sim", "serve", MODEL, "--host", "127.0.0.1", "--port", str(port),
                "--enable-lora", "--max-loras", "4", "--max-cpu-loras", "8", "--disable-uvicorn-access-log"]
        url_path = "/health"
    else:
        argv = [sys.executable, "-m", "http.server", "--bind", "127.0.0.1", str(port)]
        url_path = "/"
    env = {**os.environ, "FLEETSPEC_SIM_STARTUP_SECONDS": "0", "VLLM_ALLOW_RUNTIME_LORA_UPDATING": "true"}
    process = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    process.url_path = url_path  # type: ignore[attr-defined]
    return process


def time_to_ready(kind: str) -> float:
    port = free_port()
    start = time.perf_counter()
    process = spawn(kind, port)
    try:
        deadline = start + 30
        while time.perf_counter() < deadline:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}{process.url_path}", timeout=1) as reply:
                    if reply.status == 200:
                        return time.perf_counter() - start
            except OSError:
                pass
        raise RuntimeError(f"{kind} did not become ready")
    finally:
        process.kill()
        process.wait()


def row(label: str, seconds: list[float]) -> str:
    ms = sorted(s * 1000 for s in seconds)
    q = statistics.quantiles(ms, n=4)
    return f"| {label} | {len(ms)} | {statistics.median(ms):.1f} | {q[0]:.1f}–{q[2]:.1f} | {ms[0]:.1f}–{ms[-1]:.1f} |"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--requests", type=int, default=200)
    options = parser.parse_args()

    time_to_ready("sim"), time_to_ready("http.server")  # warm-up, untimed
    ready: dict[str, list[float]] = {"sim": [], "http.server": []}
    for i in range(options.runs):
        for kind in (("sim", "http.server") if i % 2 == 0 else ("http.server", "sim")):
            ready[kind].append(time_to_ready(kind))

    port = free_port()
    process = spawn("sim", port)
    url = f"http://127.0.0.1:{port}"
    arch = catalog.resolve(models.BaseModelSpec(id=MODEL)).architecture
    loads, completions = [], []
    try:
        engine_client.EngineClient(url).wait_healthy(time.monotonic() + 30)
        with tempfile.TemporaryDirectory() as scratch:
            for i in range(options.runs * 5):
                path = str(adapter_factory.write_adapter(pathlib.Path(scratch) / f"a{i}", arch, rank=8, base_model=MODEL))
                start = time.perf_counter()
                engine_client.EngineClient(url).load_adapter(f"a{i}", path)
                loads.append(time.perf_counter() - start)
            body = json.dumps({"model": "a0", "prompt": "write a python function", "max_tokens": 16}).encode()
            for _ in range(options.requests):
                request = urllib.request.Request(url + "/v1/completions", data=body,
                                                 headers={"Content-Type": "application/json"})
                start = time.perf_counter()
                with urllib.request.urlopen(request, timeout=10) as reply:
                    reply.read()
                completions.append(time.perf_counter() - start)
    finally:
        process.kill()
        process.wait()

    ratio = statistics.median(ready["sim"]) / statistics.median(ready["http.server"])
    print("| what | n | median ms | p25–p75 ms | min–max ms |")
    print("|---|---:|---:|---:|---:|")
    print(row("sim: start → /health 200", ready["sim"]))
    print(row("`python -m http.server`: start → GET / 200", ready["http.server"]))
    print(row("`EngineClient.load_adapter` (GET /v1/models + POST, rank-8 adapter)", loads))
    print(row("`POST /v1/completions` through an adapter, 16 tokens", completions))
    print(f"\nsim / http.server start-up: {ratio:.2f}x")


if __name__ == "__main__":
    main()
