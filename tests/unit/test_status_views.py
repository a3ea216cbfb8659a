"""`fleetspec status` from observed states (issue #13 "Truthful status", #16 item 7): each replica's
process or container, its /health, the adapters it serves; a dead or unhealthy replica is drift, and
`--detailed-exitcode` exits 2 on drift, 0 in sync, 1 on error."""

from __future__ import annotations

import pathlib

import pytest

from fleetspec import errors
from fleetspec.cli import app, status_views
from fleetspec.compile import desired
from fleetspec.drivers import base
from fleetspec.reconcile import observed
from fleetspec.spec import loading

ROOT = pathlib.Path(__file__).resolve().parents[2]
LOG = "/run/demo/logs/demo-main-0.log"


def spec(image: str = "local") -> desired.ContainerSpec:
    return desired.ContainerSpec(name="demo-main-0", image=image, argv=("x",))


def want(image: str = "local", adapters=("python--1",), on_demand=()) -> desired.DesiredState:
    replica = desired.DesiredReplica("main", 0, spec(image), {a: f"/a/{a}" for a in adapters}, 8000,
                                     on_demand={a: f"/a/{a}" for a in on_demand})
    return desired.DesiredState("demo", {("main", 0): replica})


def seen(image: str = "local", status: str = "running", healthy: bool = True, adapters=("python--1",),
         problem: str | None = None, exit_code: int | None = None, spec_hash: str | None = None) -> observed.ObservedState:
    running = status == "running"
    container = base.ObservedContainer(
        id="0123456789abcdef" * 4, name="demo-main-0", image=image, status=status, health=None, fleet="demo",
        server="main", replica=0, spec_hash=spec_hash or spec(image).spec_hash(), role="engine",
        pid=4242 if running and image == "local" else None, exit_code=exit_code,
        log_path=LOG if image == "local" else None)
    answered = {a: f"/a/{a}" for a in adapters} if running and healthy else None
    replica = observed.ObservedReplica(container, "http://127.0.0.1:8000" if running else None, running and healthy,
                                       answered, problem)
    return observed.ObservedState("demo", {("main", 0): replica})


def text_of(wanted: desired.DesiredState, have: observed.ObservedState) -> tuple[list[dict], str]:
    rows = status_views.status_rows(wanted, have)
    return rows, " ".join(status_views.status_text("demo", rows, have.strays).split())


def test_a_healthy_replica_shows_its_process_pid_url_log_and_real_adapters():
    rows, text = text_of(want(), seen())
    assert (rows[0]["state"], rows[0]["health"], rows[0]["pid"], rows[0]["adapters"]) == (
        "healthy", "ok", 4242, ["python--1"])
    assert "main/0 healthy process demo-main-0, PID 4242, http://127.0.0.1:8000, log /run/demo/logs/demo-main-0.log" in text
    assert "adapters: python--1" in text and text.endswith("In sync with the fleet file. Every replica runs, "
                                                            "answers /health and serves its adapters.")
    assert status_views.in_sync(rows, (), None)


def test_a_dead_process_is_drift_named_in_a_sentence_with_its_log():
    rows, text = text_of(want(), seen(status="exited", exit_code=137))
    assert rows[0]["state"] == "down" and not status_views.in_sync(rows, (), None)
    assert ("drift: main/0 is down: its process demo-main-0 exited with code 137, so nothing serves there; the next "
            "apply (or a running `fleetspec watch`) starts it again. To see why it stopped, read its log "
            "/run/demo/logs/demo-main-0.log.") in text
    assert "Out of sync: 1 problem above." in text and "In sync" not in text


def test_a_dead_container_points_at_docker_logs_and_shows_no_pid():
    _, text = text_of(want("fleetspec/sim:0.1.0"), seen("fleetspec/sim:0.1.0", status="exited"))
    assert "its container demo-main-0 exited, so nothing serves there" in text
    assert "run `docker logs demo-main-0`" in text and "PID" not in text


def test_a_running_process_whose_engine_does_not_answer_is_unhealthy_drift():
    problem = "http://127.0.0.1:8000/health answered HTTP 503."
    rows, text = text_of(want(), seen(healthy=False, problem=problem))
    assert (rows[0]["state"], rows[0]["health"], rows[0]["adapters"]) == ("unhealthy", problem, None)
    assert ("drift: main/0 is unhealthy: its process demo-main-0 (PID 4242) runs, but its engine does not answer as "
            "it should: http://127.0.0.1:8000/health answered HTTP 503. It may still be starting; if it stays so, "
            "read its log /run/demo/logs/demo-main-0.log.") in text
    assert "adapters: unknown (the engine does not answer)" in text


def test_a_missing_replica_and_an_undeclared_one_are_drift():
    _, text = text_of(want(), observed.ObservedState("demo", {}))
    assert "main/0 is down: no process runs for it; the next apply starts one." in text
    _, text = text_of(desired.DesiredState("demo", {}), seen())
    assert "main/0 is not declared in the fleet file; the next apply removes it." in text


def test_adapters_the_engine_lacks_or_adds_are_drift_but_on_demand_ones_are_not():
    rows, text = text_of(want(adapters=("python--1", "sql--1")), seen(adapters=("python--1", "shell--1")))
    assert [d.split(",")[0] for d in rows[0]["drift"]] == [
        "main/0 does not serve adapter sql--1", "main/0 serves adapter shell--1"]
    rows, text = text_of(want(on_demand=("shell--1",)), seen(adapters=("python--1", "shell--1")))
    assert rows[0]["drift"] == [] and "adapters: python--1, shell--1 (on demand)" in text


def test_an_older_configuration_is_drift():
    rows, _ = text_of(want(), seen(spec_hash="other"))
    assert rows[0]["drift"] == ["main/0 runs an older configuration than the fleet file; the next apply replaces it."]


def test_a_leftover_process_is_drift():
    stray = base.ObservedContainer(id="f" * 64, name="demo-old-0", image="local", status="running", health=None,
                                   fleet="demo", server=None, replica=None, spec_hash=None, role="engine", pid=99)
    have = seen()
    have = observed.ObservedState("demo", have.replicas, strays=(stray,))
    rows, text = text_of(want(), have)
    assert not status_views.in_sync(rows, have.strays, None)
    assert "Process demo-old-0 (PID 99) belongs to this fleet but to no replica it declares" in text


@pytest.mark.parametrize(("status", "config_hash", "expected"), [
    ("exited", None, "The router is down: its process demo-router exited"),
    ("running", None, "The router's process demo-router (PID 7) runs, but it does not answer at http://r:8080"),
    ("running", "old", "The router serves an older routing config than the fleet file"),
])
def test_the_router_down_silent_or_behind_is_drift(status, config_hash, expected):
    router_spec = desired.ContainerSpec(name="demo-router", image="local", argv=("r",))
    wanted = desired.DesiredState("demo", {}, router=router_spec, router_config={"x": 1})
    router = base.ObservedContainer(id="r" * 64, name="demo-router", image="local", status=status, health=None,
                                    fleet="demo", server=None, replica=None, spec_hash=router_spec.spec_hash(),
                                    role="router", pid=7 if status == "running" else None)
    row = status_views.router_row(wanted, observed.ObservedState("demo", {}, router=router, router_config_hash=config_hash),
                                  "http://r:8080", [])
    assert row["drift"][0].startswith(expected) and row["state"] == ("down" if status == "exited" else (
        "unhealthy" if config_hash is None else "healthy"))


# -- the command's exit codes ---------------------------------------------------------------------


@pytest.fixture
def live(monkeypatch):
    """`status` on the default fleet.yaml, with the runtime replaced by `live.state` (set per test)."""
    from fleetspec.reconcile import session

    class Live:
        state = None

    monkeypatch.setattr(session, "open_driver", lambda prepared: object())
    monkeypatch.setattr(session, "observe", lambda driver, spec: Live.state(session.prepare(ROOT / "fleet.yaml")))
    return Live


def _as_applied(prepared, dead: bool = False) -> observed.ObservedState:
    """What runs after a clean apply of `prepared`, with main/1's process dead when `dead`."""
    replicas = observed.from_desired(prepared.desired).replicas
    replicas = {k: observed.ObservedReplica(
        base.ObservedContainer(**{**r.container.__dict__, "status": "exited" if dead and k[1] == 1 else "running"}),
        "http://127.0.0.1:1", not (dead and k[1] == 1), r.adapters) for k, r in replicas.items()}
    return observed.ObservedState(prepared.desired.fleet, replicas)


def test_detailed_exitcode_is_0_in_sync_and_2_for_a_dead_replica(live, capsys, monkeypatch):
    monkeypatch.chdir(ROOT)
    live.state = _as_applied  # the router is left out of both: it is not running, so it is drift too
    assert app.main(["status", "fleet.yaml", "--detailed-exitcode"]) == 2
    assert "The router is down: it does not run" in capsys.readouterr().out

    live.state = lambda prepared: _with_router(_as_applied(prepared), prepared)
    assert app.main(["status", "fleet.yaml", "--detailed-exitcode"]) == 0
    assert app.main(["status", "fleet.yaml"]) == 0
    capsys.readouterr()

    live.state = lambda prepared: _with_router(_as_applied(prepared, dead=True), prepared)
    assert app.main(["status", "fleet.yaml", "--detailed-exitcode"]) == 2
    assert "drift: main/1 is down: its process demo-main-1 exited" in capsys.readouterr().out
    assert app.main(["status", "fleet.yaml"]) == 0  # without the flag, drift is no failure


def _with_router(have: observed.ObservedState, prepared) -> observed.ObservedState:
    planned = observed.from_desired(prepared.desired)
    return observed.ObservedState(have.fleet, have.replicas, router=planned.router,
                                  router_config_hash=planned.router_config_hash)


def test_detailed_exitcode_is_1_when_status_cannot_be_told(live, tmp_path, capsys):
    def unreachable(prepared):
        raise errors.TemporaryError("Could not reach the Docker engine")

    live.state = unreachable
    assert app.main(["status", str(ROOT / "fleet.yaml"), "--detailed-exitcode"]) == 1
    (tmp_path / "fleet.yaml").write_text("name: demo\nservers: 3\n")
    assert app.main(["status", str(tmp_path / "fleet.yaml"), "--detailed-exitcode"]) == 1


# -- Kubernetes: the pods as the fleet's router sees them (issue 19 item 1) --------------------------

SEED_003 = ROOT / "examples" / "003-llama3-multi-adapter.yaml"
DECLARED = {"chat": ["chatbot--1"], "tasks": ["code--1", "summarization--1"]}


def k8s_want() -> status_views.K8sWant:
    fleet = loading.load_path(SEED_003)
    return status_views.k8s_desired(fleet.spec, fleet.base_dir)


def agent_row(url: str, adapters, state: str = "ok", problem: str | None = None, kind: str | None = None) -> dict:
    return {"url": url, "state": state, "ready": state != "unreachable" or None, "revision": "..r2",
            "last_good": None if state == "unreachable" else {"revision": "..r2", "adapters": list(adapters)},
            "problem": problem, "problem_kind": kind, "problem_revision": "..r3" if kind else None, "checked_at": 1.0}


def pod(server: str, replica: int, ip: str, adapters=None, healthy: bool = True, agent: dict | None = None,
        last_error: str | None = None) -> dict:
    adapters = DECLARED[server] if adapters is None else adapters
    return {"server": server, "replica": replica, "url": f"http://{ip}:8000", "healthy": healthy, "draining": False,
            "inflight": 0, "adapters": list(adapters) if healthy else [], "last_error": last_error,
            "agent": agent if agent is not None else agent_row(f"http://{ip}:8081", adapters)}


def health(want: status_views.K8sWant, *pods: dict, **extra) -> dict:
    return {"status": "ok", "config_hash": want.router_config_hash, "unserved": [], "healthy_upstreams":
            sum(p["healthy"] for p in pods), "upstreams": len(pods), "replicas": list(pods), **extra}


def k8s_view(want, answer) -> tuple[list[dict], dict, str]:
    rows = status_views.pod_rows(want, answer)
    router = status_views.k8s_router_row(want, answer, "http://ollama.local", [])
    return rows, router, " ".join(status_views.k8s_status_text(want, rows, router).split())


def test_k8s_pods_in_sync_show_address_adapters_and_the_agents_configmap():
    want = k8s_want()
    assert (want.namespace, want.servers["tasks"].adapters) == ("llama3-multi-adapter", ("code--1", "summarization--1"))
    rows, router, text = k8s_view(want, health(want, pod("chat", 0, "10.0.0.5"), pod("tasks", 0, "10.0.0.6")))
    assert status_views.in_sync(rows, (), router) and router["drift"] == []
    assert "chat/0 healthy 10.0.0.5:8000 adapters: chatbot--1 agent: ready, ConfigMap revision ..r2; last good set " \
           "..r2 (chatbot--1)" in text
    assert text.endswith("In sync with the fleet file. Every pod is Ready, serves its adapters, and its agent applied "
                         "its ConfigMap.")


def test_an_agents_refused_configmap_is_drift_that_names_the_configmap_to_fix():
    want = k8s_want()
    problem = ("ConfigMap revision ..r3 could not be loaded: code--2: no adapter found; serving last good set ..r2 "
               "(code--1, summarization--1)")
    broken = agent_row("http://10.0.0.6:8081", DECLARED["tasks"], "problem", problem, "unloadable")
    rows, router, text = k8s_view(want, health(want, pod("chat", 0, "10.0.0.5"),
                                               pod("tasks", 0, "10.0.0.6", agent=broken)))
    assert not status_views.in_sync(rows, (), router)
    assert rows[1]["drift"] == [f"tasks/0 (10.0.0.6:8000): {problem}. To fix it, fix the ConfigMap vllm-tasks-adapters "
                                "(or the adapter files it names); the pod keeps serving its last good set meanwhile, "
                                "and traffic is routed by what it serves."]
    assert "agent: ConfigMap revision ..r3 not applied (unloadable); last good set ..r2" in text
    assert "Out of sync: 1 problem above." in text


def test_a_silent_agent_is_the_agents_drift_and_the_pod_stays_healthy():
    want = k8s_want()
    silent = agent_row("http://10.0.0.5:8081", (), "unreachable",
                       "the agent does not answer at http://10.0.0.5:8081/status (ConnectionRefusedError)")
    rows, _, text = k8s_view(want, health(want, pod("chat", 0, "10.0.0.5", agent=silent), pod("tasks", 0, "10.0.0.6")))
    assert rows[0]["state"] == "healthy" and len(rows[0]["drift"]) == 1
    assert rows[0]["drift"][0].startswith("chat/0 (10.0.0.5:8000): the agent does not answer at")
    assert "kubectl -n llama3-multi-adapter get pods --field-selector status.podIP=10.0.0.5" in rows[0]["drift"][0]
    assert "agent: does not answer at http://10.0.0.5:8081" in text and "unhealthy" not in text


def test_an_unhealthy_engine_a_missing_pod_and_an_extra_one_are_drift():
    want = k8s_want()
    rows, _, text = k8s_view(want, health(want, pod("chat", 0, "10.0.0.5", healthy=False,
                                                    last_error="ConnectionRefusedError"),
                                          pod("chat", 1, "10.0.0.7"), pod("gone", 0, "10.0.0.9", adapters=[])))
    by_slot = {r["slot"]: r for r in rows}
    assert by_slot["chat/0"]["state"] == "unhealthy" and by_slot["chat/0"]["drift"][0].startswith(
        "chat/0 (10.0.0.5:8000) is unhealthy: the router's last check of its engine failed (ConnectionRefusedError)")
    assert "adapters: unknown (the engine does not answer)" in text
    assert by_slot["chat/1"]["drift"][0].startswith("chat/1 (10.0.0.7:8000) is one pod more than the 1 replica")
    assert by_slot["gone/0"]["drift"][0].startswith("gone/0 (10.0.0.9:8000) is a pod of server gone, which the fleet")
    assert by_slot["tasks/0"]["state"] == "down" and by_slot["tasks/0"]["drift"] == [
        "tasks/0 is missing: the router sees 0 Ready pods of tasks and the fleet file declares 1; a pod that is not "
        "Ready (or not scheduled) is not in the headless Service. `kubectl -n llama3-multi-adapter get pods -l "
        "app.kubernetes.io/instance=llama3-multi-adapter-tasks` shows them."]


def test_adapters_a_pod_lacks_or_adds_are_drift_against_the_configmap_set():
    want = k8s_want()
    rows, _, _ = k8s_view(want, health(want, pod("chat", 0, "10.0.0.5", adapters=["chatbot--1", "chatbot--0"]),
                                       pod("tasks", 0, "10.0.0.6", adapters=["code--1"])))
    assert [d.split(";")[0] for d in rows[0]["drift"] + rows[1]["drift"]] == [
        "chat/0 (10.0.0.5:8000) serves chatbot--0, which the fleet file does not declare",
        "tasks/0 (10.0.0.6:8000) does not serve summarization--1, which the fleet file declares"]
    assert "its agent serves what the ConfigMap vllm-tasks-adapters lists" in rows[1]["drift"][0]


def test_a_router_on_another_config_or_with_unserved_specialists_is_drift():
    want = k8s_want()
    answer = health(want, pod("chat", 0, "10.0.0.5"), pod("tasks", 0, "10.0.0.6"), config_hash="0123456789abcdef",
                    status="degraded", unserved=["code"])
    router = status_views.k8s_router_row(want, answer, "http://ollama.local", ["the router maps cluster c1 to x"])
    assert router["state"] == "degraded" and [d.split(" ")[:5] for d in router["drift"]] == [
        ["The", "router", "serves", "routing", "config"], ["The", "router", "says", "no", "healthy"],
        ["The", "router", "maps", "cluster", "c1"]]
    assert "0123456789ab, not the one this file compiles to" in router["drift"][0]


def test_the_router_url_a_kubernetes_fleet_implies_is_its_ingress_host(tmp_path, capsys):
    fleet = loading.load_path(SEED_003)
    assert status_views.k8s_router_url(fleet.spec) == "http://ollama.local"
    text = SEED_003.read_text().replace("    ingress_host: ollama.local", "")
    (tmp_path / "fleet.yaml").write_text(text)
    assert status_views.k8s_router_url(loading.load_path(tmp_path / "fleet.yaml").spec) is None
    assert app.main(["status", str(tmp_path / "fleet.yaml"), "--detailed-exitcode"]) == 1
    said = capsys.readouterr().err
    assert "sets no runtime.kubernetes.ingress_host, so pass --router-url" in said
    assert "kubectl -n llama3-multi-adapter port-forward svc/router 8080:8080" in said
    assert app.main(["status", str(ROOT / "fleet.yaml"), "--router-url", "http://x"]) == 1
    assert "--router-url is for fleets on Kubernetes" in capsys.readouterr().err


def test_k8s_pod_lines_share_the_replica_lines_slot_column_so_long_names_stay_apart():
    want = status_views.K8sWant("f", "ns", {"summarization-api": status_views.ServerWant(
        1, ("sum--1",), (), True, "vllm-summarization-api-adapters", "f-summarization-api")}, None)
    answer = {"status": "ok", "config_hash": None, "healthy_upstreams": 1, "upstreams": 1, "replicas": [
        {"server": "summarization-api", "replica": 0, "url": "http://10.0.0.5:8000", "healthy": True,
         "adapters": ["sum--1"], "agent": agent_row("http://10.0.0.5:8081", ["sum--1"])}]}
    rows = status_views.pod_rows(want, answer)
    lines = status_views.k8s_status_text(want, rows, status_views.k8s_router_row(want, answer, "http://r", [])
                                         ).splitlines()
    width = len("summarization-api/0")
    assert lines[1] == f"  {'summarization-api/0':<{width}} {'healthy':<10} 10.0.0.5:8000"
    assert lines[2] == f"  {'':<{width}} {'':<10} adapters: sum--1"
    assert lines[3].startswith(f"  {'':<{width}} {'':<10} agent: ready")
    assert lines[4].startswith(f"  {'router':<{width}} {'healthy':<10} http://r")
