"""Benchmark: how fast `fleetspec watch` follows a saved edit and repairs a killed engine.

Two figures per runtime (local processes; Docker with the sim image when an engine answers), each
next to what the engine itself needs, measured in the same run, so the watch loop's own share is
the difference:

1. save → converged: a fleet file that adds one adapter is saved (temp file + rename, as editors
   do) and `/v1/models` is polled every 5 ms until the engine serves it. Baseline: the same adapter
   loaded straight through `POST /v1/load_lora_adapter` on a second engine. Target: the loop adds
   under 1 s (its debounce quiet period is 0.3 s of that).
2. kill → restored: the engine is killed (`docker kill` / SIGKILL) and `/health` is polled until a
   new engine answers (and, separately, until its adapters are back). Baseline: the same container
   spec started straight through the driver until `/health` answers. Target: under 1 s added.

Kills are spaced so each one finds the previous restart settled (the loop treats an engine that
dies within seconds of its start as a crash loop and backs off; that is not what is measured).

Usage: .venv/bin/python bench/bench_watch.py [--runs 5] [--runtime local --runtime docker]
Figures go to docs/benchmarks.md, section "Watch".
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import pathlib
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from fleetspec import drivers, errors  # noqa: E402
from fleetspec.compile import desired, labels  # noqa: E402
from fleetspec.engine_api import client as engine_client  # noqa: E402
from fleetspec.reconcile import session  # noqa: E402

POLL_S = 0.005
SETTLE_S = 11.0  # > the loop's settle_s (10 s): the previous restart no longer counts as a crash loop
ADAPTER = "shell--1.0.0"
TIME_LINE = re.compile(r"^\[\d\d:\d\d:\d\d\] cycle \d+, woken by periodic check")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def fleet_text(name: str, target: str, port: int, router_port: int, adapters: tuple[str, ...]) -> str:
    specialists = "".join(f"  - {{name: {a}, version: 1.0.0, path: ./adapters/{a}/1.0.0, rank: 8}}\n"
                          for a in adapters)
    return (f"name: {name}\nbase_model: {{id: fleetspec/tiny-test-llama, max_model_len: 2048}}\n"
            "gpus: [{type: sim, count: 1}]\nservers:\n  - name: main\n    gpu_memory_utilization: 0.45\n"
            "    lora: {max_loras: 2, max_cpu_loras: 3, max_lora_rank: 8}\n"
            f"specialists:\n{specialists}"
            f"runtime: {{target: {target}, engine: sim, base_port: {port}, adapter_roots: [./adapters], "
            f"router: {{port: {router_port}}}}}\n")


def save(path: pathlib.Path, text: str) -> None:
    temp = path.with_name(f".{path.name}.bench")
    temp.write_text(text)
    os.replace(temp, path)


def adapters_of(port: int) -> set[str] | None:
    try:
        return set(engine_client.EngineClient(f"http://127.0.0.1:{port}").models(timeout=1.0).adapters)
    except errors.FleetspecError:
        return None


def wait(condition, timeout_s: float, what: str):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(POLL_S)
    raise SystemExit(f"{what} did not happen within {timeout_s} s")


class Watcher:
    def __init__(self, path: pathlib.Path, interval: float):
        self.lines: list[tuple[float, str]] = []
        self.process = subprocess.Popen([sys.executable, "-m", "fleetspec", "watch", str(path), "--interval",
                                         str(interval)], cwd=path.parent, stdout=subprocess.PIPE,
                                        stderr=subprocess.STDOUT, text=True)
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.process.stdout:
            self.lines.append((time.monotonic(), line.rstrip("\n")))

    def settled_since(self, when: float) -> bool:
        """A periodic check ran SETTLE_S after `when`: the loop has forgotten the last restart."""
        return any(t >= when + SETTLE_S and TIME_LINE.match(line) for t, line in self.lines)

    def stop(self) -> None:
        self.process.send_signal(signal.SIGTERM)
        self.process.wait(timeout=30)


@dataclasses.dataclass
class Figures:
    runtime: str
    engine_start: list[float] = dataclasses.field(default_factory=list)
    adapter_load: list[float] = dataclasses.field(default_factory=list)
    save_to_served: list[float] = dataclasses.field(default_factory=list)
    kill_to_started: list[float] = dataclasses.field(default_factory=list)  # the runtime's own start stamp
    kill_to_healthy: list[float] = dataclasses.field(default_factory=list)
    kill_to_adapters: list[float] = dataclasses.field(default_factory=list)


# --- baselines: the engine on its own ----------------------------------------------------------


def baseline_spec(container: desired.ContainerSpec, target: str, port: int) -> desired.ContainerSpec:
    """The watched replica's container, as a separate fleet on another port."""
    argv = list(container.argv)
    if target == "local":  # a process listens where its argv says
        argv[argv.index("--port") + 1] = str(port)
        ports = [dataclasses.replace(p, container_port=port, host_port=port) for p in container.ports]
    else:
        ports = [dataclasses.replace(p, host_port=port) for p in container.ports]
    return dataclasses.replace(container, name="benchbase-main-0", argv=argv, ports=ports,
                               labels={**container.label_dict, labels.FLEET: "benchbase"})


def measure_baseline(prepared, driver, kill, figures: Figures) -> None:
    """The engine on its own: restarted straight through the driver (killed, removed, created) while
    a client polls /health exactly as in `measure_kill`, then one adapter loaded into it directly.

    The client polls during the restart as in `measure_kill`, so both figures see the same port
    forwarding (on Docker a connection made while a published port changes hands can stall)."""
    container = prepared.desired.replicas[("main", 0)].container
    adapter_path = prepared.desired.replicas[("main", 0)].adapters["python--1.0.0"]
    port = free_port()
    spec = baseline_spec(container, figures.runtime, port)
    container_id = driver.create(spec)
    try:
        wait(lambda: engine_client.EngineClient(f"http://127.0.0.1:{port}").healthy(timeout=0.5), 60, "baseline /health")
        started = time.perf_counter()
        kill(spec.name)
        restored = []
        poller = threading.Thread(target=lambda: restored.append(wait_restored(port)))
        poller.start()
        driver.remove(container_id)
        container_id = driver.create(spec)
        poller.join()
        figures.engine_start.append(restored[0] - started)
        started = time.perf_counter()
        engine_client.EngineClient(f"http://127.0.0.1:{port}").load_adapter("python--1.0.0", adapter_path)
        figures.adapter_load.append(time.perf_counter() - started)
    finally:
        driver.remove(container_id)


def wait_restored(port: int) -> float:
    """Poll /health until it fails, then until it answers 200; return that moment."""
    wait(lambda: not engine_client.EngineClient(f"http://127.0.0.1:{port}").healthy(timeout=0.2), 10, "the engine to go down")
    wait(lambda: engine_client.EngineClient(f"http://127.0.0.1:{port}").healthy(timeout=0.2), 60, "the restarted engine")
    return time.perf_counter()


# --- the watch loop ----------------------------------------------------------------------------


def measure_edit(path, text, port: int, figures: Figures) -> None:
    started = time.perf_counter()
    save(path, text(("python", "sql", "shell")))
    wait(lambda: ADAPTER in (adapters_of(port) or ()), 30, "the added adapter")
    figures.save_to_served.append(time.perf_counter() - started)
    save(path, text(("python", "sql")))
    wait(lambda: (adapters_of(port) or {ADAPTER}) == {"python--1.0.0", "sql--1.0.0"}, 30, "the removal")


def measure_kill(kill, driver, name: str, port: int, figures: Figures) -> None:
    started, wall = time.perf_counter(), time.time()
    kill(f"{name}-main-0")
    figures.kill_to_healthy.append(wait_restored(port) - started)
    [engine] = [c for c in driver.observe(name) if c.running and c.role == labels.ROLE_ENGINE]
    figures.kill_to_started.append(_epoch(engine.started_at) - wall)
    wait(lambda: (adapters_of(port) or set()) >= {"python--1.0.0", "sql--1.0.0"}, 30, "the adapters")
    figures.kill_to_adapters.append(time.perf_counter() - started)


def _epoch(iso: str) -> float:
    """Docker's StartedAt has nanoseconds; Python reads microseconds."""
    iso = re.sub(r"(\.\d{6})\d+", r"\1", iso).replace("Z", "+00:00")
    return datetime.datetime.fromisoformat(iso).timestamp()


def killer(target: str, path: pathlib.Path, name: str, driver):
    """kill(container_name): `docker kill`, or SIGKILL to the local process (records live in the
    bench fleet's run directory, whichever fleet the process belongs to)."""
    def kill(container_name: str) -> None:
        if target == "docker":
            driver.client.api.kill(container_name)
        else:
            record = drivers.run_dir(path, name) / "procs" / f"{container_name}.json"
            os.kill(json.loads(record.read_text())["pid"], signal.SIGKILL)
    return kill


def run_runtime(target: str, runs: int) -> Figures:
    figures = Figures(target)
    with tempfile.TemporaryDirectory(prefix="bench-watch-") as tmp:
        base = pathlib.Path(tmp)
        shutil.copytree(ROOT / "adapters", base / "adapters")
        name, port, router_port, path = f"benchwatch{os.getpid()}", free_port(), free_port(), base / "fleet.yaml"
        text = lambda adapters: fleet_text(name, target, port, router_port, adapters)  # noqa: E731
        save(path, text(("python", "sql")))
        prepared = session.prepare(path)
        driver = session.open_driver(prepared)
        watcher = Watcher(path, interval=2.0)
        try:
            wait(lambda: adapters_of(port) == {"python--1.0.0", "sql--1.0.0"}, 120, "the first apply")
            restored_at = time.monotonic()
            # Interleaved, so a busy moment on the machine hits the baseline and the watch alike.
            kill = killer(target, path, name, driver)
            for _ in range(runs):
                measure_baseline(prepared, driver, kill, figures)
                measure_edit(path, text, port, figures)
                wait(lambda since=restored_at: watcher.settled_since(since), 60, "a settled fleet")
                measure_kill(kill, driver, name, port, figures)
                restored_at = time.monotonic()
        finally:
            watcher.stop()
            subprocess.run([sys.executable, "-m", "fleetspec", "destroy", str(path), "--yes"], cwd=base,
                           capture_output=True, timeout=120)
    return figures


def docker_available() -> bool:
    try:
        from fleetspec.drivers import docker as docker_driver

        docker_driver.connect(timeout_s=3).close()
    except errors.FleetspecError:
        return False
    return True


def ms(values: list[float]) -> str:
    return f"{statistics.median(values) * 1000:.0f} (max {max(values) * 1000:.0f})"


def report(all_figures: list[Figures], runs: int) -> str:
    rows = ["| runtime | kill → new engine started | engine restart alone | kill → /health 200 | watch's share "
            "| kill → adapters back | adapter load alone | save → adapter served | watch's share |",
            "|---|---|---|---|---|---|---|---|---|"]
    for f in all_figures:
        share_kill = [k - s for k, s in zip(f.kill_to_healthy, f.engine_start, strict=True)]
        share_edit = [e - load for e, load in zip(f.save_to_served, f.adapter_load, strict=True)]
        rows.append(f"| {f.runtime} | {ms(f.kill_to_started)} | {ms(f.engine_start)} | {ms(f.kill_to_healthy)} | {ms(share_kill)} "
                    f"| {ms(f.kill_to_adapters)} | {ms(f.adapter_load)} | {ms(f.save_to_served)} "
                    f"| {ms(share_edit)} |")
    return (f"Milliseconds, median of {runs} (max in brackets); the watch's share is the median of the paired "
            "differences (each run: watched minus the engine alone, measured back to back).\n\n" + "\n".join(rows))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--runtime", action="append", choices=["local", "docker"])
    args = parser.parse_args()
    runtimes = args.runtime or ["local", "docker"]
    results = []
    for target in runtimes:
        if target == "docker" and not docker_available():
            print("No Docker engine answers: skipping the docker runtime.", file=sys.stderr)
            continue
        if target == "docker":
            from fleetspec.drivers import docker as docker_driver
            from fleetspec.images import build

            build.ensure_sim_image(docker_driver.connect())
        print(f"measuring {target} ({args.runs} runs)…", file=sys.stderr)
        results.append(run_runtime(target, args.runs))
    print(report(results, args.runs))


if __name__ == "__main__":
    main()
