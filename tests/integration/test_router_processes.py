"""The router with two serving processes behind one port: every proxy test again, against it.

`test_router_proxy`'s tests run here unchanged against `serve --processes 2`, so each claim they
make (routing, splits, on-demand loads, admin mappings, metrics, reloads, protocol) must hold
whichever process a connection lands on. httpx opens a fresh connection per call, so consecutive
requests of one test reach both processes.
"""

from __future__ import annotations

import pytest
import test_router_proxy as proxy
from test_router_proxy import *  # noqa: F403 - the same tests, collected again with this module's fixture


@pytest.fixture(scope="module")
def fleet(tmp_path_factory):
    yield from proxy.bring_up(tmp_path_factory, router_processes=2)


# -- what only a router of several processes must show ------------------------------------------------

import concurrent.futures  # noqa: E402
import os  # noqa: E402
import signal  # noqa: E402
import socket  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402

import httpx  # noqa: E402
from netkit import free_port  # noqa: E402

PROMPT = "what is the weather like"  # cluster c7 of 10: unmapped in the fleet, so a mapping shows


@pytest.fixture(scope="module")
def own(tmp_path_factory):
    """A second fleet of two sims and a two-process router, for the tests that disturb it."""
    yield from proxy.bring_up(tmp_path_factory, router_processes=2)


def health(router: str) -> dict:
    return httpx.get(f"{router}/health", timeout=10).json()


def test_connections_spread_over_both_processes_and_the_totals_add_up(fleet):
    before = proxy.admin(fleet.router, "GET", "/admin/stats").json()["requests"]
    rows_before = {row["index"]: row["requests"] or 0 for row in health(fleet.router)["processes"]}
    for _ in range(40):  # one connection each: the kernel spreads them by their source ports
        assert proxy.complete(fleet.router, "my pytest fixture fails").status_code == 200
    after = proxy.admin(fleet.router, "GET", "/admin/stats").json()["requests"]
    rows = health(fleet.router)["processes"]
    assert after - before == 40
    assert [row["live"] for row in rows] == [True, True]
    assert all((row["requests"] or 0) > rows_before[row["index"]] for row in rows), rows
    text = httpx.get(f"{fleet.router}/metrics").text
    total = sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                if line.startswith("fleetspec_router_requests_total{"))
    assert total >= after  # every process's counters, in one /metrics


def test_a_mapping_is_served_by_every_process_once_the_admin_call_answers(fleet):
    assert proxy.admin(fleet.router, "POST", "/admin/ensemble",
                       data={"cluster_id": "c7", "adapter_tag": "sql"}).status_code == 200
    try:
        # No waiting: the answer came only after every process confirmed the mapping.
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(lambda _: proxy.complete(fleet.router, PROMPT), range(32)))
        assert {a.headers.get("x-fleetspec-specialist") for a in answers} == {"sql"}
    finally:
        assert proxy.admin(fleet.router, "POST", "/admin/clusters/clear").json() == {"cleared": 1}
    answers = [proxy.complete(fleet.router, PROMPT) for _ in range(16)]
    assert {a.headers.get("x-fleetspec-fallback") for a in answers} == {"cluster-unmapped"}


def test_health_names_a_config_only_once_every_process_serves_it(fleet):
    old = health(fleet.router)["config_hash"]
    spec = fleet.spec.model_copy(deep=True)
    proxy.write_config(fleet.config_path, spec, list(fleet.sims))  # same fleet, other refresh: another hash
    document = __import__("json").loads(fleet.config_path.read_text())
    document["refresh_seconds"] = 0.25
    fleet.config_path.write_text(__import__("json").dumps(document))
    try:
        assert proxy.admin(fleet.router, "POST", "/admin/reload").status_code == 200
        now = health(fleet.router)
        assert now["config_hash"] not in (None, old)
        assert {row["config_hash"] for row in now["processes"]} == {now["config_hash"]}
    finally:
        proxy.write_config(fleet.config_path, fleet.spec, list(fleet.sims))
        proxy.admin(fleet.router, "POST", "/admin/reload")


def test_an_on_demand_load_is_one_load_per_engine_whichever_processes_ask(own):
    def loads(replica: int) -> float:
        text = httpx.get(f"{own.router}/metrics").text
        return proxy.metric(text, f'fleetspec_router_adapter_loads_total{{server="main",replica="{replica}",'
                                  'result="loaded"}')

    before = [loads(0), loads(1)]
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda _: proxy.complete(own.router, "x", model="shell"), range(8)))
    assert [a.status_code for a in answers] == [200] * 8, [a.text for a in answers]
    added = [loads(0) - before[0], loads(1) - before[1]]
    # Each process may place the first request on either engine, but an engine is loaded once.
    assert max(added) == 1 and sum(added) == sum("shell--1.0.0" in proxy.served(sim) for sim in own.sims)


def test_a_killed_serving_process_is_started_again_and_counts_are_kept(own):
    for _ in range(10):
        assert proxy.complete(own.router, "my pytest fixture fails").status_code == 200
    before = proxy.admin(own.router, "GET", "/admin/stats").json()["requests"]
    victim = health(own.router)["processes"][0]
    os.kill(victim["pid"], signal.SIGKILL)

    def replaced():
        row = health(own.router)["processes"][0]
        return row if row["live"] and row["pid"] != victim["pid"] else None

    row = proxy.wait_for(replaced, timeout=30, what="serving process 0 to be started again")
    assert row["restarts"] == victim["restarts"] + 1
    assert proxy.complete(own.router, "my pytest fixture fails").status_code == 200
    # What the lost process had counted stays in the totals (a Prometheus counter never goes back).
    assert proxy.admin(own.router, "GET", "/admin/stats").json()["requests"] >= before + 1
    assert health(own.router)["config_hash"] is not None


def test_serving_processes_leave_with_their_coordinator(own, tmp_path):
    with proxy.processes() as started:
        router = proxy.start_router(started, own.config_path, free_port(), tmp_path / "router.log", processes=2)
        pids = [row["pid"] for row in health(router)["processes"]]
        started[-1].kill()  # no signal handler runs: the serving processes see their channel close
        started[-1].wait(timeout=10)

        def gone():
            return all(not _running(pid) for pid in pids)

        proxy.wait_for(gone, timeout=15, what="the serving processes to exit")


def test_a_port_already_taken_is_refused_in_a_sentence(own):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run([sys.executable, "-m", "fleetspec.router", "serve", "--config", str(own.config_path),
                                 "--port", str(port), "--processes", "2"], capture_output=True, text=True, timeout=60,
                                env={**os.environ, "ITEST_ROUTER_TOKEN": proxy.TOKEN})
    assert result.returncode == 1
    assert f"cannot listen on 127.0.0.1:{port}" in result.stderr and "Traceback" not in result.stderr


def _running(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/status") as status:
            return "\nState:\tZ" not in status.read()  # a zombie has exited; only its parent's wait is left
    except FileNotFoundError:
        return False
