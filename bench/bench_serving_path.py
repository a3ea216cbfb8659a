"""Benchmark: what clients see while a 2-replica fleet changes, fleetspec's way against the compose way.

Issue 13's serving-path benchmark. One server with 2 sim replicas behind the router; three changes,
each made under the load loop of the tests (tests/load_loop.py: 4 clients, a quarter streaming,
half the requests for the `python` specialist and half for the base model):

(a) a version bump: `python` 1.0.0 → 1.1.0;
(b) a failed new version: `python` 1.0.0 → 2.0.0 whose adapter directory is missing, so every
    engine refuses it (what the fleet should then do: keep serving 1.0.0);
(c) a restart-requiring change: base_model.max_model_len 1024 → 768 (a new engine process).

Each change is measured, interleaved in one run (a: F C, b: C F, c: F C), two ways:

1. fleetspec: the fleet on the local runtime with the sim engine (`runtime: {target: local,
   engine: sim}`); the file is edited and `fleetspec apply FILE` runs (a new process).
2. compose: the same fleet with `runtime: {target: docker, engine: sim}` compiled with
   `fleetspec compile FILE --target compose` and brought up with `docker-compose up -d`; the change is
   the same edit, compiling again and `docker-compose up -d` again, which is what a compose user
   does. For (a) a second compose row also restarts the router (`docker-compose restart router`):
   see the notes in docs/benchmarks.md for why the first one never serves 1.1.0.

Both ways run the same sim settings (FLEETSPEC_SIM_LOAD_SECONDS, _STARTUP_SECONDS, _TOKEN_SECONDS,
in the server's `env`) and the same code: the compose images are the offline sim image
(fleetspec/images) built from this tree once at the start and tagged for this run only.

Per case: requests ok and failed in the window, p99 latency of the successful ones, how long the
user's commands took ("command s") and when the fleet first served the change as intended
("serving as intended s": (a) the router answers `python` with 1.1.0 and both engines hold it;
(b) both engines hold 1.0.0 and the router answers with it; (c) both engines run with
max_model_len 768 and hold 1.0.0, and the router answers). The window runs from just before the
commands until that moment (or --cap-s after the start, when it never comes) plus the load loop's
2 s. Every fleet is fresh per case and removed after it (fleetspec destroy / docker-compose down -v,
then a sweep by label), as are the temporary directories and the image tag, even on failure.

Usage: .venv/bin/python bench/bench_serving_path.py [--cap-s 20] [--steady-s 3]
Figures go to docs/benchmarks.md, section "Serving path: changes under load, fleetspec against compose".
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import json
import math
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable

import yaml

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))  # the load loop, adapter factory and port helper the tests use

import netkit  # noqa: E402
from adapter_factory import TINY_LLAMA, write_adapter  # noqa: E402
from load_loop import LoadLoop  # noqa: E402

from fleetspec import drivers  # noqa: E402
from fleetspec.compile import labels  # noqa: E402

MODEL = "fleetspec/tiny-test-llama"
COMPOSE = shutil.which("docker-compose") or "docker-compose"
READY_TIMEOUT_S = 120.0
POLL_S = 0.1
SCENARIOS = {
    "a": "version bump 1.0.0 → 1.1.0",
    "b": "failed new version (adapter dir missing)",
    "c": "restart: max_model_len 1024 → 768",
}


def http(method: str, url: str, body: dict | None = None, timeout_s: float = 5.0) -> tuple[int, dict]:
    """(status, JSON body); status 0 when nothing answered."""
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data, {"Content-Type": "application/json"}, method=method)
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:  # noqa: S310 - our own processes
            return response.status, json.loads(response.read() or b"null")
    except urllib.error.HTTPError as exc:
        with contextlib.suppress(ValueError):
            return exc.code, json.loads(exc.read() or b"null")
        return exc.code, {}
    except (OSError, ValueError):
        return 0, {}


def p99_ms(seconds: list[float]) -> float | None:
    """Nearest-rank 99th percentile, in ms."""
    if not seconds:
        return None
    ordered = sorted(seconds)
    return 1000 * ordered[max(0, math.ceil(0.99 * len(ordered)) - 1)]


def run(argv: list[str], cwd: pathlib.Path, timeout_s: float = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "NO_COLOR": "1"}
    return subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout_s)


def must(done: subprocess.CompletedProcess, what: str) -> subprocess.CompletedProcess:
    if done.returncode != 0:
        raise RuntimeError(f"{what} exited {done.returncode}:\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}")
    return done


class Fleet:
    """One server, 2 replicas, the `python` specialist, the router; in its own temporary directory."""

    def __init__(self, way: str, case: str, sim_env: dict[str, str], image: str | None):
        self.way = way
        self.dir = pathlib.Path(tempfile.mkdtemp(prefix=f"bench-serving-{way}-{case}-"))
        self.file = self.dir / "fleet.yaml"
        self.name = f"bsp-{way[0]}{case}-{os.getpid()}"
        self.base_port = netkit.free_port_range(3)
        for version in ("1.0.0", "1.1.0"):  # 2.0.0 is never written: (b)'s missing directory
            write_adapter(self.dir / "adapters" / "python" / version, TINY_LLAMA, rank=8, base_model=MODEL)
        runtime: dict = {"target": "local", "engine": "sim", "base_port": self.base_port,
                         "adapter_roots": [str(self.dir / "adapters")], "router": {"port": self.base_port + 2}}
        if way == "compose":
            runtime.update(target="docker", image=image)
            runtime["router"]["image"] = image
        self.doc = {
            "name": self.name, "base_model": {"id": MODEL, "max_model_len": 1024},
            "gpus": [{"type": "sim", "count": 1}],
            "servers": [{"name": "main", "replicas": 2, "gpu_memory_utilization": 0.2, "env": dict(sim_env),
                         "lora": {"max_loras": 2, "max_cpu_loras": 4, "max_lora_rank": 8}}],
            "specialists": [{"name": "python", "version": "1.0.0", "path": "./adapters/python/1.0.0",
                             "keywords": ["python"]}],
            "routing": {"fallback": "base"},
            "runtime": runtime,
        }
        self.out = self.dir / "compose"
        self.started = False

    # -- the file ------------------------------------------------------------------------------

    def write(self) -> None:
        self.file.write_text(yaml.safe_dump(self.doc, sort_keys=False))

    def edit(self, case: str) -> None:
        python = self.doc["specialists"][0]
        old = {"version": python["version"], "path": python["path"]}
        if case == "a":
            python.update(version="1.1.0", path="./adapters/python/1.1.0", versions=[old])
        elif case == "b":
            python.update(version="2.0.0", path="./adapters/python/2.0.0", versions=[old])
        else:
            self.doc["base_model"]["max_model_len"] = 768
        self.write()

    # -- the user's commands -------------------------------------------------------------------

    def fleetspec(self, *args: str) -> subprocess.CompletedProcess:
        return run([sys.executable, "-m", "fleetspec", *args], self.dir)

    def compose(self, *args: str, timeout_s: float = 180) -> subprocess.CompletedProcess:
        return run([COMPOSE, "-p", self.name, "-f", str(self.out / "docker-compose.yaml"), *args], self.out,
                   timeout_s)

    def up(self) -> None:
        """The initial fleet, from nothing; waits until it serves 1.0.0 everywhere."""
        self.write()
        self.started = True
        if self.way == "fleetspec":
            must(self.fleetspec("apply", str(self.file), "--yes"), "fleetspec apply (initial)")
        else:
            must(self.fleetspec("compile", str(self.file), "--target", "compose", "-o", str(self.out)), "compile")
            must(self.compose("up", "-d"), "docker-compose up -d (initial)")
        deadline = time.monotonic() + READY_TIMEOUT_S
        while not self.serving("python--1.0.0", 1024):
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.way} fleet {self.name} never served python--1.0.0")
            time.sleep(POLL_S)

    def change(self, restart_router: bool = False) -> dict:
        """The change as the user makes it (the file is already edited); what the commands said."""
        if self.way == "fleetspec":
            done = self.fleetspec("apply", str(self.file), "--yes", "--format", "json")
            info: dict = {"exit": done.returncode}
            with contextlib.suppress(ValueError, KeyError, TypeError):
                outcomes = json.loads(done.stdout)["result"]["outcomes"]
                info["failed_actions"] = [
                    {"kind": o["action"].get("kind"), "adapter": o["action"].get("adapter"),
                     "target": o["action"].get("target"), "message": str(o.get("message") or "")[:300]}
                    for o in outcomes if o.get("status") == "failed"]
            if done.returncode not in (0, 1):
                raise RuntimeError(f"fleetspec apply exited {done.returncode}:\n{done.stderr[-3000:]}")
            return info
        compiled = must(self.fleetspec("compile", str(self.file), "--target", "compose", "-o", str(self.out)),
                        "compile")
        up = must(self.compose("up", "-d"), "docker-compose up -d")
        info = {"exit": up.returncode, "compile_exit": compiled.returncode,
                "compose_said": [line.strip() for line in up.stderr.splitlines() if " ... " in line and "done" in line]}
        if restart_router:
            info["restart_exit"] = must(self.compose("restart", "router"), "docker-compose restart router").returncode
        return info

    # -- what the fleet serves -----------------------------------------------------------------

    @property
    def router(self) -> str:
        return f"http://127.0.0.1:{self.base_port + 2}"

    def engine_state(self, replica: int) -> tuple[set[str], int | None] | None:
        """(adapters held, base max_model_len) of one engine, straight from its port; None when down."""
        status, body = http("GET", f"http://127.0.0.1:{self.base_port + replica}/v1/models", timeout_s=2)
        if status != 200 or not isinstance(body, dict):
            return None
        cards = body.get("data") or []
        adapters = {c["id"] for c in cards if c.get("parent")}
        base = [c.get("max_model_len") for c in cards if not c.get("parent")]
        return adapters, (base[0] if base else None)

    def router_answers(self) -> str | None:
        status, body = http("POST", self.router + "/v1/chat/completions",
                            {"model": "python", "messages": [{"role": "user", "content": "hello"}], "max_tokens": 1})
        return body.get("model") if status == 200 and isinstance(body, dict) else None

    def serving(self, adapter: str, max_model_len: int) -> bool:
        for replica in (0, 1):
            state = self.engine_state(replica)
            if state is None or adapter not in state[0] or state[1] != max_model_len:
                return False
        return self.router_answers() == adapter

    # -- teardown ------------------------------------------------------------------------------

    def down(self) -> list[str]:
        """Remove everything this fleet started; returns what survived (should be nothing)."""
        left: list[str] = []
        if self.started and self.way == "fleetspec":
            with contextlib.suppress(Exception):
                self.fleetspec("destroy", str(self.file), "--yes")
            with contextlib.suppress(Exception):
                driver = drivers.for_runtime("local", self.file, self.name)
                for container in driver.observe(self.name):
                    with contextlib.suppress(Exception):
                        driver.remove(container.id)
                left += [f"local process {c.id}" for c in driver.observe(self.name)]
        if self.started and self.way == "compose":
            if (self.out / "docker-compose.yaml").exists():
                with contextlib.suppress(Exception):
                    self.compose("down", "-v", "--remove-orphans", "-t", "5")
            left += sweep_docker(self.name)
        shutil.rmtree(self.dir, ignore_errors=True)
        return left


def sweep_docker(fleet: str) -> list[str]:
    """Containers, networks and volumes of one compose project or fleet label, removed; survivors named."""
    import docker

    client = docker.from_env(timeout=30)
    try:
        filters = [{"label": f"{labels.FLEET}={fleet}"}, {"label": f"com.docker.compose.project={fleet}"}]
        for wanted in filters:
            for container in client.containers.list(all=True, filters=wanted):
                with contextlib.suppress(Exception):
                    container.remove(force=True)
        for network in client.networks.list(filters={"label": f"com.docker.compose.project={fleet}"}):
            with contextlib.suppress(Exception):
                network.remove()
        for volume in client.volumes.list(filters={"label": f"com.docker.compose.project={fleet}"}):
            with contextlib.suppress(Exception):
                volume.remove(force=True)
        return [c.name for wanted in filters for c in client.containers.list(all=True, filters=wanted)]
    finally:
        client.close()


@dataclasses.dataclass
class Row:
    case: str
    way: str
    ok: int
    failed: int
    p99_ms: float | None
    command_s: float | None
    intended_s: float | None  # when the fleet first served the change as intended; None: not within the cap
    window_s: float
    answered: dict
    failures_seen: dict  # first words of each failure → count
    info: dict

    def json(self) -> dict:
        return {k: (round(v, 3) if isinstance(v, float) else v) for k, v in dataclasses.asdict(self).items()}


def failure_kinds(tally) -> dict[str, int]:
    kinds: dict[str, int] = {}
    for failure in tally.failures:
        key = failure.what.split(":", 1)[0] if not failure.what.startswith("HTTP") else failure.what[:8]
        kinds[key] = kinds.get(key, 0) + 1
    return kinds


def intended(case: str) -> tuple[str, int]:
    return {"a": ("python--1.1.0", 1024), "b": ("python--1.0.0", 1024), "c": ("python--1.0.0", 768)}[case]


def measure(fleet: Fleet, case: str, cap_s: float, clients: int, restart_router: bool = False) -> Row:
    adapter, max_model_len = intended(case)
    fleet.edit(case)
    with LoadLoop(fleet.router, ["python", fleet.name], clients=clients) as loop:
        started = time.monotonic()
        info = fleet.change(restart_router)
        command_s = time.monotonic() - started
        reached = None
        while True:  # checked at least once after the commands returned, then until cap_s after the start
            if fleet.serving(adapter, max_model_len):
                reached = time.monotonic() - started
                break
            if time.monotonic() - started >= cap_s:
                break
            time.sleep(POLL_S)
        tally = loop.stop_after_apply()
        window_s = time.monotonic() - started
    way = fleet.way + (" + restart router" if restart_router else "")
    return Row(case, way, tally.ok, len(tally.failures), p99_ms(tally.latencies), command_s, reached, window_s,
               dict(tally.models_answered), failure_kinds(tally), info)


def steady(fleet: Fleet, seconds: float, clients: int) -> Row:
    with LoadLoop(fleet.router, ["python", fleet.name], clients=clients) as loop:
        started = time.monotonic()
        time.sleep(seconds)
    window_s, tally = time.monotonic() - started, loop.tally
    return Row("steady", fleet.way, tally.ok, len(tally.failures), p99_ms(tally.latencies), None, None,
               window_s, dict(tally.models_answered), failure_kinds(tally), {})


def build_image() -> tuple[str, Callable[[], None]]:
    """The sim image of this tree, under a tag of this run's own (a rebuild by someone else mid-run
    would otherwise make `docker-compose up -d` recreate containers for a reason of its own)."""
    import docker

    from fleetspec.images import build

    client = docker.from_env(timeout=120)
    built = build.ensure_sim_image(client)
    repository, tag = "fleetspec/sim", f"bench-serving-{os.getpid()}"
    client.images.get(built.id).tag(repository, tag)
    client.close()

    def untag() -> None:
        again = docker.from_env(timeout=60)
        with contextlib.suppress(Exception):
            again.images.remove(f"{repository}:{tag}", noprune=True)
        again.close()

    return f"{repository}:{tag}", untag


def fmt(value: float | None, scale: float = 1.0, digits: int = 1) -> str:
    return "never" if value is None else f"{value * scale:.{digits}f}"


def table(rows: list[Row], cap_s: float) -> str:
    lines = ["| change | way | requests ok | failed | p99 ms | command s | serving as intended after s | window s |",
             "|---|---|---:|---:|---:|---:|---:|---:|"]
    for row in rows:
        label = SCENARIOS.get(row.case, "no change (steady)")
        intended_s = "—" if row.case == "steady" else (
            fmt(row.intended_s, digits=2) if row.intended_s is not None else f"never (> {cap_s:.0f})")
        label = label if row.case == "steady" else f"({row.case}) {label}"
        lines.append(f"| {label} | {row.way} | {row.ok} | **{row.failed}** | "
                     f"{fmt(row.p99_ms, digits=0) if row.p99_ms is not None else '—'} | "
                     f"{'—' if row.command_s is None else f'{row.command_s:.2f}'} | {intended_s} | {row.window_s:.1f} |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cap-s", type=float, default=20.0,
                        help="longest wait for the intended state after a change starts (default 20)")
    parser.add_argument("--steady-s", type=float, default=3.0, help="steady-state load before the first change")
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--sim-load-s", default="0.3")
    parser.add_argument("--sim-startup-s", default="1.0")
    parser.add_argument("--sim-token-s", default="0.01")
    args = parser.parse_args()
    sim_env = {"FLEETSPEC_SIM_LOAD_SECONDS": args.sim_load_s, "FLEETSPEC_SIM_STARTUP_SECONDS": args.sim_startup_s,
               "FLEETSPEC_SIM_TOKEN_SECONDS": args.sim_token_s}

    def terminated(signum, _frame):
        raise SystemExit(128 + signum)  # so every `finally` below runs: fleets down, dirs and tag removed

    signal.signal(signal.SIGTERM, terminated)
    started = time.monotonic()
    rows: list[Row] = []
    survivors: list[str] = []
    image, untag = build_image()
    print(f"sim image for the compose way: {image}", file=sys.stderr)
    plan = [("a", "fleetspec", False), ("a", "compose", False), ("a", "compose", True),
            ("b", "compose", False), ("b", "fleetspec", False),
            ("c", "fleetspec", False), ("c", "compose", False)]
    steadied: set[str] = set()
    try:
        for case, way, restart_router in plan:
            fleet = Fleet(way, case + ("r" if restart_router else ""), sim_env, image)
            try:
                fleet.up()
                if way not in steadied and args.steady_s > 0:
                    rows.append(steady(fleet, args.steady_s, args.clients))
                    steadied.add(way)
                row = measure(fleet, case, args.cap_s, args.clients, restart_router)
                rows.append(row)
                print(f"({case}) {row.way}: {row.ok} ok, {row.failed} failed {row.failures_seen}, p99 "
                      f"{fmt(row.p99_ms, digits=0)} ms, command {row.command_s:.2f} s, intended after "
                      f"{fmt(row.intended_s, digits=2)} s; answered {row.answered}; {row.info}", file=sys.stderr)
            finally:
                survivors += fleet.down()
    finally:
        untag()
    total_s = time.monotonic() - started
    print(table(rows, args.cap_s))
    print(json.dumps({"bench": "serving_path", "date": datetime.date.today().isoformat(), "sim_env": sim_env,
                      "clients": args.clients, "cap_s": args.cap_s, "total_s": round(total_s, 1),
                      "rows": [r.json() for r in rows], "survivors": survivors}))
    if survivors:
        print(f"left behind: {survivors}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
