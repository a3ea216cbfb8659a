"""`fleetspec apply` against Debian's docker-compose (v1) on the same compiled fleet, sim image.

    .venv/bin/python bench/bench_reconcile.py [--repeat 5] [--startup-seconds 0.2] [--json FILE]

Needs a running Docker engine and /usr/bin/docker-compose. Both tools run the same fleet: one
server, one replica, the fleetspec sim engine in the offline-built image. docker-compose gets the
project `fleetspec compile --target compose` writes, with two edits: the engine image is the sim
image instead of vllm/vllm-openai (no registry here), and the router service is dropped (its image
is not built by this repository yet). Three phases per run, each timed as a whole process:

- bring-up from nothing: from starting the command until a completion on the adapter answers;
- no-op re-apply: `docker-compose up -d` / `fleetspec apply --yes` when nothing changed, to exit;
- adapter-only change (a second specialist added): from starting the command until a completion
  on the new adapter answers; how many engine containers were restarted (new id or new start
  time); and, from a client calling the existing adapter every 20 ms throughout, how many of its
  requests failed and the longest stretch without an answer.

The compose file is recompiled before each change outside the timing (fleetspec needs no compile
step). Tools alternate (A B B A ...) after one untimed warm-up of each. Prints a markdown table.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import pathlib
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request

import yaml

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # the PEFT adapter factory the tests use

from adapter_factory import TINY_LLAMA, write_adapter  # noqa: E402

from fleetspec.compile import labels  # noqa: E402
from fleetspec.drivers import docker as docker_driver  # noqa: E402
from fleetspec.images import build  # noqa: E402

COMPOSE = "/usr/bin/docker-compose"
MODEL = "fleetspec/tiny-test-llama"
DEADLINE_S = 120.0


# --- the fleet, written for both tools ---------------------------------------------------------


@dataclasses.dataclass
class Setup:
    tool: str  # "fleetspec" or "compose"
    directory: pathlib.Path
    name: str  # fleet name (and compose project)
    port: int
    startup_s: float
    sim_image: str

    @property
    def file(self) -> pathlib.Path:
        return self.directory / "fleet.yaml"

    @property
    def compose_file(self) -> pathlib.Path:
        return self.directory / "compose" / "docker-compose.yaml"

    def write(self, specialists: list[str]) -> None:
        document = {
            "name": self.name,
            "base_model": {"id": MODEL, "max_model_len": 1024},
            "gpus": [{"type": "sim", "count": 1}],
            "servers": [{"name": "main", "replicas": 1, "gpu_memory_utilization": 0.2,
                         "env": {"FLEETSPEC_SIM_STARTUP_SECONDS": str(self.startup_s)},
                         "lora": {"max_loras": 2, "max_cpu_loras": 4, "max_lora_rank": 8}}],
            "specialists": [{"name": s, "version": "1.0.0", "path": f"./adapters/{s}/1.0.0"} for s in specialists],
            "runtime": {"target": "docker", "engine": "sim", "base_port": self.port,
                        "adapter_roots": [str(self.directory / "adapters")]},
        }
        self.file.write_text(yaml.safe_dump(document, sort_keys=False))
        if self.tool == "compose":
            self._compile()

    def _compile(self) -> None:
        out = self.compose_file.parent
        shutil.rmtree(out, ignore_errors=True)
        run([sys.executable, "-m", "fleetspec", "compile", str(self.file), "--target", "compose", "-o", str(out)])
        project = yaml.safe_load(self.compose_file.read_text())
        project["services"].pop("router", None)  # fleetspec/router is not built yet; engines only
        for service in project["services"].values():
            service["image"] = self.sim_image
        self.compose_file.write_text(yaml.safe_dump(project, sort_keys=False))

    def command(self) -> list[str]:
        if self.tool == "compose":
            return [COMPOSE, "-p", self.name, "-f", str(self.compose_file), "up", "-d"]
        return [sys.executable, "-m", "fleetspec", "apply", str(self.file), "--yes"]

    def teardown(self) -> None:
        if self.tool == "compose":
            if self.compose_file.exists():
                run([COMPOSE, "-p", self.name, "-f", str(self.compose_file), "down", "-v", "-t", "10"])
        elif self.file.exists():
            run([sys.executable, "-m", "fleetspec", "destroy", str(self.file), "--yes"])

    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


# Both tools run as an installed package would: from bytecode. (Some sandboxes export
# PYTHONDONTWRITEBYTECODE, which would make every fleetspec run compile its modules afresh.)
ENV = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}


def run(argv: list[str]) -> float:
    """Run a command to completion; its wall time. A failure stops the benchmark with its output."""
    started = time.monotonic()
    done = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT, env=ENV)
    elapsed = time.monotonic() - started
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} exited {done.returncode}:\n{done.stdout[-3000:]}")
    return elapsed


# --- observing the engine ---------------------------------------------------------------------


def completes(url: str, model: str, timeout_s: float = 2.0) -> bool:
    body = json.dumps({"model": model, "prompt": "hello", "max_tokens": 4}).encode()
    request = urllib.request.Request(url + "/v1/completions", data=body, method="POST",
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            return response.status == 200
    except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
        return False


def wait_completes(url: str, model: str, started: float) -> float:
    """Seconds from `started` until a completion on `model` answers 200."""
    while time.monotonic() - started < DEADLINE_S:
        if completes(url, model, timeout_s=1.0):
            return time.monotonic() - started
        time.sleep(0.02)
    raise TimeoutError(f"{model} did not answer at {url} within {DEADLINE_S} s")


def engines(client, fleet: str) -> dict[str, tuple[str, str]]:
    """Engine containers of the fleet (both tools stamp fleetspec's labels): name → (id, start time)."""
    found = {}
    for summary in client.api.containers(all=True, filters=labels.fleet_filter(fleet)):
        attrs = client.api.inspect_container(summary["Id"])
        if attrs["Config"]["Labels"].get(labels.ROLE) == labels.ROLE_ENGINE:
            found[attrs["Name"].lstrip("/")] = (attrs["Id"], attrs["State"].get("StartedAt", ""))
    return found


def restarts(before: dict, after: dict) -> int:
    return sum(1 for name, state in before.items() if after.get(name) != state) + \
        sum(1 for name in after if name not in before)


class Prober:
    """Calls one adapter every 20 ms in a thread; counts failures and the longest unanswered stretch."""

    def __init__(self, url: str, model: str):
        self.url, self.model = url, model
        self.failures = 0
        self.longest_gap_s = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Prober:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        last_ok, failing = time.monotonic(), False
        while not self._stop.is_set():
            ok = completes(self.url, self.model, timeout_s=1.0)
            now = time.monotonic()
            if ok and failing:  # the stretch ends with the first answer after failures
                self.longest_gap_s = max(self.longest_gap_s, now - last_ok)
            if ok:
                last_ok, failing = now, False
            else:
                self.failures, failing = self.failures + 1, True
            self._stop.wait(0.02)
        if failing:
            self.longest_gap_s = max(self.longest_gap_s, time.monotonic() - last_ok)


# --- one run of one tool ----------------------------------------------------------------------


def cycle(setup: Setup, client) -> dict[str, float]:
    setup.write(["python"])
    started = time.monotonic()
    run(setup.command())
    bring_up = wait_completes(setup.url(), "python--1.0.0", started)

    steady = engines(client, setup.name)
    noop = run(setup.command())
    if engines(client, setup.name) != steady:
        raise RuntimeError(f"{setup.tool}: a no-op run changed the containers")

    setup.write(["python", "sql"])
    with Prober(setup.url(), "python--1.0.0") as prober:
        started = time.monotonic()
        command_s = run(setup.command())
        change = wait_completes(setup.url(), "sql--1.0.0", started)
        wait_completes(setup.url(), "python--1.0.0", time.monotonic())  # the old adapter is back, if it went
    changed = engines(client, setup.name)
    setup.teardown()
    return {"bring-up": bring_up, "no-op": noop, "change": change, "change command": command_s,
            "restarts": restarts(steady, changed), "failed requests": prober.failures,
            "longest gap": prober.longest_gap_s}


def make_setups(root: pathlib.Path, startup_s: float, sim_image: str) -> dict[str, Setup]:
    setups = {}
    for offset, tool in enumerate(("compose", "fleetspec")):
        directory = root / tool
        for specialist in ("python", "sql"):
            write_adapter(directory / "adapters" / specialist / "1.0.0", TINY_LLAMA, rank=8, base_model=MODEL)
        name = f"fsb-{os.getpid()}-{tool[:2]}"
        setups[tool] = Setup(tool, directory, name, 21000 + (os.getpid() % 500) * 4 + offset, startup_s, sim_image)
    return setups


# --- report -----------------------------------------------------------------------------------

ROWS = [  # (metric, label, unit)
    ("bring-up", "bring-up from nothing, until the adapter answers", "s"),
    ("no-op", "no-op re-apply (command to exit)", "s"),
    ("change", "adapter-only change, until the new adapter answers", "s"),
    ("change command", "adapter-only change, command to exit", "s"),
    ("restarts", "engine containers restarted by the change", ""),
    ("failed requests", "requests to the existing adapter that failed during the change", ""),
    ("longest gap", "longest time the existing adapter did not answer", "s"),
]


def quartiles(samples: list[float]) -> tuple[float, float]:
    if len(samples) < 2:
        return samples[0], samples[0]
    q = statistics.quantiles(samples, n=4, method="inclusive")
    return q[0], q[2]


def fmt(value: float, unit: str) -> str:
    return f"{value:.3f}" if unit == "s" else f"{value:g}"


def cell(samples: list[float], unit: str) -> str:
    low, high = quartiles(samples)
    return (f"{fmt(statistics.median(samples), unit)} ({fmt(low, unit)}–{fmt(high, unit)}; "
            f"{fmt(min(samples), unit)}–{fmt(max(samples), unit)})")


def table(results: dict[str, list[dict[str, float]]]) -> str:
    lines = ["| metric | docker-compose: median (p25–p75; min–max) | fleetspec: median (p25–p75; min–max) "
             "| fleetspec / compose |", "|---|---:|---:|---:|"]
    for metric, label, unit in ROWS:
        samples = {tool: [r[metric] for r in results[tool]] for tool in ("compose", "fleetspec")}
        medians = [statistics.median(samples[tool]) for tool in ("compose", "fleetspec")]
        ratio = f"{medians[1] / medians[0]:.2f}" if medians[0] else "–"
        lines.append(f"| {label}{f' ({unit})' if unit else ''} | {cell(samples['compose'], unit)} | "
                     f"{cell(samples['fleetspec'], unit)} | {ratio} |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--startup-seconds", type=float, default=0.2,
                        help="the sim's model-load delay (FLEETSPEC_SIM_STARTUP_SECONDS); 0.2 is its default")
    parser.add_argument("--json", type=pathlib.Path, help="also write every sample here")
    args = parser.parse_args()
    client = docker_driver.connect()
    image = build.ensure_sim_image(client)
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(ROOT / "fleetspec")], check=True, env=ENV)
    root = pathlib.Path(tempfile.mkdtemp(prefix="fleetspec-bench-reconcile-"))
    setups = make_setups(root, args.startup_seconds, image.tag)
    results: dict[str, list[dict[str, float]]] = {"compose": [], "fleetspec": []}
    try:
        for tool in ("compose", "fleetspec"):  # warm-up: page cache, image layers, compose's network code
            cycle(setups[tool], client)
        for index in range(args.repeat):
            order = ("compose", "fleetspec") if index % 2 == 0 else ("fleetspec", "compose")
            for tool in order:
                results[tool].append(cycle(setups[tool], client))
                print(f"run {index + 1} {tool}: " + ", ".join(f"{k} {v:.3f}" for k, v in results[tool][-1].items()),
                      file=sys.stderr)
    finally:
        for setup in setups.values():
            with contextlib.suppress(Exception):
                setup.teardown()
        shutil.rmtree(root, ignore_errors=True)
    if client.images.get(image.tag).id != image.id:
        print("note: the sim image was rebuilt during the run (a fleetspec file changed); expect outliers",
              file=sys.stderr)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    compose_version = subprocess.run([COMPOSE, "version", "--short"], capture_output=True, text=True).stdout.strip()
    print(f"docker-compose {compose_version}, sim startup {args.startup_seconds} s, n={args.repeat} per tool\n")
    print(table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
