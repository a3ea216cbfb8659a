"""Seed 000's runbook against examples/000-ensemble-hash-clusters.yaml, as the README gives it.

The example comes up unedited on sim engines and stand-in adapters; then the README's block of the
seed's own curl commands (map, bulk, warm, stats, clear) runs verbatim in bash against its router.
With the two Redis lines of the example uncommented (the edit the README asks for), the same
commands store the map in the seed's layout (hash lora:router_map, bare adapter tags), and the
README's redis-cli lines change routing, as the seed's tooling would. Redis is a real redis-server;
without one those tests skip (FLEETSPEC_REQUIRE_REDIS=1 makes them fail instead).
"""

from __future__ import annotations

import json
import pathlib
import re
import shutil
import subprocess
import time
import urllib.request

import netkit
import pytest
import require

from fleetspec import drivers
from fleetspec.cli import app

ROOT = pathlib.Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "000-ensemble-hash-clusters.yaml"
TOKEN = "seed-000-test-token"


def readme_block(after: str) -> str:
    """The first ```sh block of the README after the sentence `after`."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    start = text.index(after)
    match = re.search(r"```sh\n(.*?)```", text[start:], re.DOTALL)
    return match.group(1)


CURL_BLOCK = readme_block("Then the seed's own commands work")
REDIS_BLOCK = readme_block("**The seed's Redis layout.**")


def admin_state(port: int) -> dict:
    request = urllib.request.Request(f"http://127.0.0.1:{port}/admin/state",
                                     headers={"Authorization": f"Bearer {TOKEN}"})
    with urllib.request.urlopen(request, timeout=5) as response:  # noqa: S310 - the local test router
        return json.loads(response.read())


def runtime_map(port: int) -> dict[str, str]:
    return {row["cluster"]: row["specialist"] for row in admin_state(port)["clusters"]}


def wait_for(condition, timeout_s: float, what: str):
    deadline = time.monotonic() + timeout_s
    while not (value := condition()):
        if time.monotonic() > deadline:
            pytest.fail(f"{what} did not happen within {timeout_s} s")
        time.sleep(0.05)
    return value


class Up:
    """The example brought up from `text` in `work`, torn down by `down()`."""

    def __init__(self, work: pathlib.Path, text: str):
        self.file = work / EXAMPLE.name
        self.file.write_text(text, encoding="utf-8")
        self.port = netkit.free_port_range(2)
        stand_ins = work / "loras-000"
        assert app.main(["adapters", "stand-ins", str(self.file), str(stand_ins)]) == 0
        self.flags = ["--runtime", "local", "--engine", "sim", "--adapters-in", str(stand_ins),
                      "--ports-from", str(self.port)]
        assert app.main(["apply", str(self.file), *self.flags, "--yes"]) == 0

    def run_curl_block(self) -> subprocess.CompletedProcess:
        env = {"PATH": "/usr/bin:/bin", "R": f"127.0.0.1:{self.port}", "AUTH": f"Authorization: Bearer {TOKEN}"}
        done = subprocess.run(["bash", "-euo", "pipefail", "-c", CURL_BLOCK], env=env, capture_output=True,
                              text=True, timeout=60)
        assert done.returncode == 0, done.stdout + done.stderr
        return done

    def down(self) -> None:
        app.main(["destroy", str(self.file), "--runtime", "local", "--yes"])
        driver = drivers.for_runtime("local", self.file, "ensemble")
        left = driver.observe("ensemble")
        for process in left:
            driver.remove(process.id)
        assert [c.name for c in left] == [], "processes survived destroy"


@pytest.fixture
def token(monkeypatch):
    monkeypatch.setenv("FLEETSPEC_ADMIN_TOKEN", TOKEN)
    monkeypatch.setenv("FLEETSPEC_DEBUG", "1")


def test_the_seeds_curl_commands_run_against_the_shipped_example(tmp_path, token):
    text = EXAMPLE.read_text(encoding="utf-8")
    assert "admin_token: ${FLEETSPEC_ADMIN_TOKEN}" in text
    up = Up(tmp_path, text)
    try:
        done = up.run_curl_block()
        assert '"miss_rate"' in done.stdout and '"runtime_mappings"' in done.stdout  # the stats answer
        assert done.stdout.count('"already-loaded"') == 3  # warm: the three preloaded adapters
        assert {"c17": "2025-06-06", "c42": "code-specialist-v2", "c25": "2025-06-07"}.items() <= \
            runtime_map(up.port).items()
        assert admin_state(up.port)["runtime_state"]["backend"] == "memory"
    finally:
        up.down()


@pytest.fixture
def redis_server(tmp_path):
    binary = shutil.which("redis-server")
    if binary is None or shutil.which("redis-cli") is None:
        require.unavailable("REDIS", "redis-server is not installed (Debian package redis-server; .ci/run installs it)")
    port = netkit.free_port()
    log = (tmp_path / "redis.log").open("wb")
    proc = subprocess.Popen([binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
                            stdout=log, stderr=subprocess.STDOUT)

    def pong() -> bool:
        assert proc.poll() is None, f"redis-server exited with {proc.returncode}; see {log.name}"
        return redis_cli(port, "PING").stdout.strip() == "PONG"

    try:
        wait_for(pong, 15, f"redis-server on port {port}")
        yield port
    finally:
        proc.kill()
        proc.wait(timeout=10)
        log.close()


def redis_cli(port: int, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["redis-cli", "-p", str(port), *args], capture_output=True, text=True, timeout=10)


def test_with_the_redis_lines_uncommented_the_map_lives_in_the_seeds_own_hash(tmp_path, token, redis_server):
    text = EXAMPLE.read_text(encoding="utf-8")
    url_line, key_line = "# redis_url: redis://127.0.0.1:6379/0", "# redis_map_key: lora:router_map"
    assert url_line in text and key_line in text  # the two lines the README says to uncomment
    text = text.replace(url_line, f"redis_url: redis://127.0.0.1:{redis_server}/0").replace(key_line, key_line[2:])
    up = Up(tmp_path, text)
    try:
        assert admin_state(up.port)["runtime_state"]["key"] == "lora:router_map"
        up.run_curl_block()
        pairs = _pairs(redis_server)
        assert pairs == {"c17": "2025-06-06", "c42": "code-specialist-v2", "c10": "2025-06-06", "c25": "2025-06-07",
                "c88": "code-specialist-v2"}  # bare tags, no JSON, no rule prefix

        # The README's redis-cli lines, as the seed's tooling runs them (against the test's port).
        lines = [line.split("#")[0].split() for line in REDIS_BLOCK.splitlines() if line.startswith("redis-cli")]
        hset, hgetall, delete = lines
        assert redis_cli(redis_server, *hset[1:]).returncode == 0
        wait_for(lambda: runtime_map(up.port).get("c33") == "2025-06-07", 10, "the router to pick up an HSET")
        assert "c33" in redis_cli(redis_server, *hgetall[1:]).stdout
        redis_cli(redis_server, "HSET", "lora:router_map", "pattern:cluster:c34", "2025-06-06", "c35", "no-such-tag")
        wait_for(lambda: runtime_map(up.port).get("c34") == "2025-06-06", 10, "a prefixed field to count")
        ignored = admin_state(up.port)["ignored"]
        assert [(row["cluster"], row["specialist"]) for row in ignored] == [("c35", "no-such-tag")]
        assert redis_cli(redis_server, *delete[1:]).returncode == 0
        wait_for(lambda: runtime_map(up.port) == {}, 10, "the router to drop the map after DEL")
    finally:
        up.down()


def _pairs(port: int) -> dict[str, str]:
    flat = redis_cli(port, "HGETALL", "lora:router_map").stdout.split("\n")
    flat = [x for x in flat if x]
    return dict(zip(flat[::2], flat[1::2], strict=True))


def test_status_agrees_with_plan_about_the_seeds_mappings(tmp_path, token, capsys):
    """Issue #16 item 5, against the real router: the README's curl block maps only what the file
    maps already, so status is in sync (it used to say "maps c10 to 2025-06-06 ... fleet.yaml says
    2025-06-06" and send the user to apply while plan said "No changes"). A cluster the file does not
    map is drift, and status says what fixes it: not apply, which leaves it as plan says."""
    up = Up(tmp_path, EXAMPLE.read_text(encoding="utf-8"))
    try:
        up.run_curl_block()
        capsys.readouterr()
        assert app.main(["status", str(up.file), *up.flags, "--detailed-exitcode"]) == 0
        assert "In sync with the fleet file." in capsys.readouterr().out

        env = {"PATH": "/usr/bin:/bin"}
        subprocess.run(["curl", "-fsS", "-X", "POST", f"127.0.0.1:{up.port}/admin/ensemble", "-H",
                        f"Authorization: Bearer {TOKEN}", "-d", "cluster_id=c33&adapter_tag=2025-06-07"],
                       env=env, check=True, capture_output=True, timeout=30)
        assert app.main(["status", str(up.file), *up.flags, "--detailed-exitcode"]) == 2
        text = capsys.readouterr().out
        assert "maps cluster c33 to 2025-06-07 at runtime (fleet.yaml says nothing)" in text
        assert "c10" not in text and "Run `fleetspec apply`" not in text
        assert "which `fleetspec apply` leaves as it is: put it in the fleet file or clear it" in text
        assert app.main(["plan", str(up.file), *up.flags]) == 0
        assert "No changes." in capsys.readouterr().out
    finally:
        up.down()
