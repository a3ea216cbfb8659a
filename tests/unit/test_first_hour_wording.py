"""Issue #16, what a new user reads: destroy's preview and ending, the runtime's own nouns (process
and PID, container and id), status without false drift, secrets by name, corrupt adapters."""

from __future__ import annotations

import http.server
import json
import pathlib
import shutil
import threading

import pytest

from fleetspec.cli import app, reconcile_views, status_views
from fleetspec.compile import desired
from fleetspec.drivers import base
from fleetspec.reconcile import apply as apply_mod
from fleetspec.reconcile import diff, observed, router_edge, session
from fleetspec.reconcile.plan import Kind
from fleetspec.spec import loading, models

ROOT = pathlib.Path(__file__).resolve().parents[2]


def seen(name: str, image: str, role: str = "engine", replica: int | None = 0, status: str = "running",
         pid: int | None = None, exit_code: int | None = None) -> base.ObservedContainer:
    return base.ObservedContainer(
        id=f"{name}-0123456789abcdef", name=name, image=image, status=status, health=None, fleet="demo",
        server="main" if role == "engine" else None, replica=replica if role == "engine" else None,
        spec_hash="h", role=role, pid=pid, exit_code=exit_code)


LOCAL = [seen("demo-main-0", "local", pid=4242), seen("demo-main-1", "local", replica=1, pid=4243),
         seen("demo-router", "local", role="router", pid=4250)]
DOCKER = [seen("demo-main-0", "fleetspec/sim:0.1.0"), seen("demo-router", "fleetspec/sim:0.1.0", role="router")]


# -- destroy ---------------------------------------------------------------------------------------


def test_destroy_preview_lists_what_stops_without_restart_or_hot_change_words():
    text = reconcile_views.destroy_text("demo", LOCAL)
    assert "Restarts" not in text and "hot" not in text and "adapter and router changes" not in text
    assert "  - main/0     process demo-main-0 (PID 4242), running" in text
    assert "  - router     process demo-router (PID 4250), running" in text
    assert text.splitlines()[-1].startswith("Plan: 3 processes to stop and remove.")
    docker_text = reconcile_views.destroy_text("demo", DOCKER)
    assert "container demo-main-0 (id demo-main-0-" in docker_text and "PID" not in docker_text
    assert "Plan: 2 containers to stop and remove." in docker_text


def test_a_teardown_does_not_end_with_apply_complete():
    plan = session.destroy_plan("demo", LOCAL)
    result = apply_mod.ApplyResult(tuple(apply_mod.Outcome(a, apply_mod.OK, "removed") for a in plan.actions))
    text = reconcile_views.outcomes_text(result, teardown=True)
    assert "Apply" not in text and text.splitlines()[-1] == "Destroyed: 3 removed."
    assert reconcile_views.outcomes_text(result).splitlines()[-1] == "Apply complete."


def test_destroy_off_a_terminal_says_the_exact_command_with_yes(tmp_path, capsys, monkeypatch):
    fleet_file = tmp_path / "fleet.yaml"
    fleet_file.write_text("name: demo\n")

    class Driver:
        def observe(self, _name):
            return LOCAL

    monkeypatch.setattr("fleetspec.drivers.for_runtime", lambda *_: Driver())
    assert app.main(["destroy", str(fleet_file)]) == 1  # stdin is no terminal under pytest
    err = capsys.readouterr().err
    assert f"run `fleetspec destroy {fleet_file} --yes`" in err and "standard input is not a terminal" in err


def test_the_command_to_type_instead_keeps_the_flags_that_say_which_fleet(tmp_path, capsys, monkeypatch):
    """An example brought up with `--runtime local ...` is destroyed with the same flags: without
    them the suggested command looks for the file's Docker fleet and finds nothing."""
    fleet_file = tmp_path / "fleet.yaml"
    fleet_file.write_text("name: demo\nruntime: {target: docker}\n")
    runtimes = []

    class Driver:
        def observe(self, _name):
            return LOCAL

    monkeypatch.setattr("fleetspec.drivers.for_runtime", lambda target, *_: runtimes.append(target) or Driver())
    assert app.main(["destroy", str(fleet_file), "--runtime", "local", "--ports-from", "18700"]) == 1
    assert runtimes == ["local"]
    assert f"run `fleetspec destroy {fleet_file} --runtime local --ports-from 18700 --yes`" in capsys.readouterr().err


def test_destroy_of_nothing_names_the_runtimes_own_things(tmp_path, capsys, monkeypatch):
    fleet_file = tmp_path / "fleet.yaml"
    fleet_file.write_text("name: demo\n")

    class Driver:
        def observe(self, _name):
            return []

    monkeypatch.setattr("fleetspec.drivers.for_runtime", lambda *_: Driver())
    assert app.main(["destroy", str(fleet_file)]) == 0
    assert capsys.readouterr().out.strip() == (
        "Nothing to destroy: fleet demo has no processes (running or stopped) on this machine.")


def test_readme_destroy_line_runs_where_nobody_can_answer():
    """The line a new user copies after ./scripts/run must work in scripts and CI too (it used to exit 1
    there); tests/integration/test_readme_first_hour.py runs it exactly as written."""
    readme = (ROOT / "README.md").read_text()
    line = next(line for line in readme.splitlines() if line.startswith(".venv/bin/fleetspec destroy fleet.yaml"))
    assert line.split("#")[0].split() == [".venv/bin/fleetspec", "destroy", "fleet.yaml", "--yes"]
    assert "asks first" in line


# -- the runtime's own words -----------------------------------------------------------------------


def test_plan_reasons_say_process_on_the_local_runtime_and_container_on_docker():
    def one(image, status="exited"):
        container = desired.ContainerSpec(name="demo-main-0", image=image, argv=("x",))
        want = desired.DesiredState("demo", {("main", 0): desired.DesiredReplica("main", 0, container, {}, 8000)})
        current = dict(seen("demo-main-0", image, status=status, exit_code=137).__dict__, spec_hash=container.spec_hash())
        have = observed.ObservedState("demo", {("main", 0): observed.ObservedReplica(
            base.ObservedContainer(**current), None, False, None)})
        return diff.diff(want, observed.ObservedState("demo", {})).actions[0].reason, diff.diff(want, have).actions[0]

    (created, replaced) = one("local")
    assert created == "no process runs for this replica"
    assert (replaced.kind, replaced.reason) == (Kind.REPLACE, "its process exited with code 137")
    (created, replaced) = one("fleetspec/sim:0.1.0")
    assert created == "no container runs for this replica" and replaced.reason == "its container exited with code 137"
    assert one("local", status="paused")[1].reason == "its process is paused"


def test_apply_says_what_it_started_in_the_runtimes_words_never_a_bare_id():
    container = desired.ContainerSpec(name="demo-main-0", image="local", argv=("x",))
    want = desired.DesiredState("demo", {("main", 0): desired.DesiredReplica("main", 0, container, {}, 8000)})

    class Driver:
        def create(self, _spec):
            return "7620cb0f4ac3" + "0" * 52

        def wait_running(self, *_args, **_kw):
            pass

        def describe(self, container_id):
            assert container_id.startswith("7620cb0f4ac3")
            return "process demo-main-0 (PID 4242, log .fleetspec/run/demo/logs/demo-main-0.log)"

    applier = apply_mod.Applier(Driver(), want)
    applier._wait_ready = lambda *_: None  # no engine to ask here; describe() is what is under test
    action = diff.diff(want, observed.ObservedState("demo", {})).actions[0]
    outcome = applier._one(action)
    assert outcome.message == "started process demo-main-0 (PID 4242, log .fleetspec/run/demo/logs/demo-main-0.log), healthy"
    assert "7620cb0f4ac3" not in outcome.message


def test_apply_names_the_router_it_started_as_it_names_engines(monkeypatch, tmp_path):
    """The router's line used to be "router serves config c798364bbcbf at ... (started)": no
    process, PID or log to find it by, unlike the engines' lines."""
    prepared = session.prepare(ROOT / "fleet.yaml")
    monkeypatch.setattr(router_edge.files, "write_atomic", lambda *_: None)
    monkeypatch.setattr(router_edge, "router_config_hash",
                        lambda _url: router_edge.router_config.config_hash(prepared.desired.router_config))
    log = ".fleetspec/run/demo/logs/demo-router.log"

    class Driver:
        running = []

        def observe(self, _name):
            return self.running

        def create(self, _spec):
            return "9f1c" * 16

        def wait_running(self, *_args, **_kw):
            pass

        def describe(self, container_id):
            assert container_id == "9f1c" * 16
            return f"process demo-router (PID 4250, log {log})"

    started = router_edge.update_router(Driver(), prepared)
    assert started.startswith(f"started process demo-router (PID 4250, log {log}), which serves routing config ")
    assert started.endswith(" at http://127.0.0.1:8080") and "(started)" not in started
    Driver.running = [base.ObservedContainer(**dict(LOCAL[2].__dict__, spec_hash=prepared.desired.router.spec_hash()))]
    assert router_edge.update_router(Driver(), prepared).startswith("the router serves routing config ")


def test_status_shows_pids_of_local_processes_and_none_for_docker():
    container = desired.ContainerSpec(name="demo-main-0", image="local", argv=("x",))
    want = desired.DesiredState("demo", {("main", 0): desired.DesiredReplica("main", 0, container, {}, 8000)})
    current = dict(LOCAL[0].__dict__, spec_hash=container.spec_hash(), log_path="/x/demo-main-0.log")
    have = observed.ObservedState("demo", {("main", 0): observed.ObservedReplica(
        base.ObservedContainer(**current), "http://127.0.0.1:8000", True, {})})
    rows = status_views.status_rows(want, have)
    assert (rows[0]["pid"], rows[0]["log"]) == (4242, "/x/demo-main-0.log")
    assert "process demo-main-0, PID 4242, http://127.0.0.1:8000, log /x/demo-main-0.log" in status_views.status_text(
        "demo", rows)
    docker_have = observed.ObservedState("demo", {("main", 0): observed.ObservedReplica(
        DOCKER[0], "http://127.0.0.1:8000", True, {})})
    docker_text = status_views.status_text("demo", status_views.status_rows(want, docker_have))
    assert "container demo-main-0" in docker_text and "PID" not in docker_text and "log" not in docker_text


# -- status: no false drift ------------------------------------------------------------------------


class _AdminState(http.server.BaseHTTPRequestHandler):
    body = b"{}"

    def do_GET(self):  # noqa: N802 - http.server's name
        self.send_response(200)
        self.send_header("Content-Length", str(len(self.body)))
        self.end_headers()
        self.wfile.write(self.body)

    def log_message(self, *_):
        pass


@pytest.fixture
def admin_router(monkeypatch):
    """A stand-in router answering /admin/state with `_AdminState.body`; yields its spec."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _AdminState)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    monkeypatch.setenv("FST_ADMIN", "t0ken")
    text = (ROOT / "fleet.yaml").read_text().replace(
        "  adapter_roots: [./adapters]\n",
        f"  adapter_roots: [./adapters]\n  router: {{port: {server.server_address[1]}, admin_token: '${{FST_ADMIN}}'}}\n")
    yield loading.load_text(text, str(ROOT / "fleet.yaml"), base_dir=ROOT).spec
    server.shutdown()
    server.server_close()
    thread.join(timeout=5)


def test_a_runtime_mapping_identical_to_the_file_is_not_drift(admin_router):
    clusters = [{"cluster": "c10", "specialist": "2025-06-06", "declared": "2025-06-06"},
                {"cluster": "c11", "specialist": "python", "declared": "sql"},
                {"cluster": "c12", "specialist": "shell", "declared": None}]
    _AdminState.body = json.dumps({"clusters": clusters, "warmed": []}).encode()
    found = router_edge.router_drift(admin_router)
    assert len(found) == 2 and not any("c10" in d for d in found)
    assert found[0].startswith("the router maps cluster c11 to python at runtime (fleet.yaml says sql)")
    assert "(fleet.yaml says nothing)" in found[1]


def _router_row(drift: list[str]) -> dict:
    router_spec = desired.ContainerSpec(name="demo-router", image="local", argv=("r",))
    wanted = desired.DesiredState("demo", {}, router=router_spec, router_config={"x": 1})
    router = dict(LOCAL[2].__dict__, spec_hash=router_spec.spec_hash())
    have = observed.ObservedState("demo", {}, router=base.ObservedContainer(**router),
                                  router_config_hash=wanted.router_config_hash())
    return status_views.router_row(wanted, have, "http://127.0.0.1:8080", drift)


def test_status_does_not_send_the_user_to_apply_for_what_apply_leaves():
    """A cluster mapped through the admin API is drift, but apply (and so plan: "No changes") leaves
    it; the closing line used to say "Run `fleetspec apply` to converge" anyway."""
    mapped = ("the router maps cluster c33 to 2025-06-07 at runtime (fleet.yaml says nothing); put it in the "
              "fleet file or clear it (POST /admin/clusters/clear)")
    text = status_views.status_text("demo", [], router=_router_row([mapped]))
    assert "Run `fleetspec apply`" not in text
    assert text.splitlines()[-1] == ("Out of sync: the router's runtime change above, which `fleetspec apply` leaves "
                                     "as it is: put it in the fleet file or clear it (POST /admin/clusters/clear).")
    warmed = "the router warmed sql--1 on main/0 at runtime; the next apply unloads it unless the fleet file declares it"
    both = status_views.status_text("demo", [], router=_router_row([mapped, warmed])).splitlines()[-1]
    assert both.startswith("Out of sync: 2 problems above. Run `fleetspec apply`")
    assert both.endswith("apply leaves the router's 1 runtime change: put it in the fleet file or clear it.")


def test_status_columns_stay_apart_for_long_server_names():
    container = desired.ContainerSpec(name="ensemble-swarm-api-0", image="local", argv=("x",))
    want = desired.DesiredState("ensemble", {("swarm-api", 0): desired.DesiredReplica(
        "swarm-api", 0, container, {"a--1": "/a"}, 8000)})
    current = dict(LOCAL[0].__dict__, name="ensemble-swarm-api-0", server="swarm-api",
                   spec_hash=container.spec_hash())
    have = observed.ObservedState("ensemble", {("swarm-api", 0): observed.ObservedReplica(
        base.ObservedContainer(**current), "http://127.0.0.1:8000", True, {"a--1": "/a"})})
    lines = status_views.status_text("ensemble", status_views.status_rows(want, have)).splitlines()
    assert lines[1].startswith("  swarm-api/0 healthy    process ensemble-swarm-api-0, PID 4242")
    assert lines[2] == " " * 25 + "adapters: a--1"


# -- secrets by name -------------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "secret"), [
    ("HF_TOKEN", True), ("TOKEN", True), ("hf_token", True), ("AWS_SECRET_ACCESS_KEY", True), ("VLLM_API_KEY", True),
    ("DB_PASSWORD", True), ("AWS_SESSION_TOKEN", True), ("CLIENT_SECRET", True),
    ("FLEETSPEC_SIM_TOKEN_SECONDS", False), ("MAX_TOKENS", False), ("TOKENIZERS_PARALLELISM", False),
    ("PASSWORD_FILE", False), ("LOG_LEVEL", False),
])
def test_only_names_that_end_in_a_credential_word_are_secrets(name, secret):
    assert models.literal_secret(name, "a-literal-value") is secret


@pytest.mark.parametrize(("name", "value", "secret"), [
    ("HF_TOKEN", "hf_aBcD1234", True), ("DB_PASSWORD", "hunter2", True), ("API_KEY", " sk-123 ", True),
    ("HF_TOKEN", "${HF_TOKEN}", False), ("HF_TOKEN", "", False), ("SIM_TOKEN", "0.01", False),
    ("REQUIRE_TOKEN", "true", False), ("GOOGLE_APPLICATION_CREDENTIALS", "/secrets/sa.json", False),
    ("SSH_PRIVATE_KEY", "./keys/id_ed25519", False), ("SESSION_TOKEN", "42", False),
])
def test_a_secret_needs_a_credential_name_and_a_credential_shaped_value(name, value, secret):
    """A number, a yes/no word or a path under a credential name is a setting or says where the key
    file is: neither is the credential, so neither is warned about or moved into a Kubernetes Secret."""
    assert models.literal_secret(name, value) is secret


def test_the_sim_token_delay_is_not_warned_about_as_an_inline_secret(tmp_path, capsys):
    text = (ROOT / "fleet.yaml").read_text().replace(
        "    replicas: 2 ", "    env: {FLEETSPEC_SIM_TOKEN_SECONDS: '0.01', HF_TOKEN: hf_x}\n    replicas: 2 ")
    (tmp_path / "fleet.yaml").write_text(text)
    app.main(["validate", str(tmp_path / "fleet.yaml")])
    out = capsys.readouterr()
    warned = [line for line in (out.out + out.err).splitlines() if "holds a literal value" in line]
    assert len(warned) == 1 and "servers[0].env.HF_TOKEN" in warned[0], warned  # the real one still is


# -- a corrupt adapter is not a memory problem -----------------------------------------------------


def test_a_corrupt_adapter_is_called_corrupt_not_does_not_fit(tmp_path, capsys):
    shutil.copytree(ROOT / "adapters", tmp_path / "adapters")
    shutil.copy(ROOT / "fleet.yaml", tmp_path / "fleet.yaml")
    weights = tmp_path / "adapters" / "python" / "1.0.0" / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])  # a truncated download
    assert app.main(["plan", str(tmp_path / "fleet.yaml"), "--memory-only"]) == 1
    out = capsys.readouterr()
    text = " ".join((out.out + out.err).split())
    assert "does not fit" not in text
    assert "fits in memory" in text and "cannot be applied: 1 error(s) above, 1 of them adapter files that are " \
        "unreadable or corrupt." in text
    # The full plan, too: its note on why no changes are listed used to say "has errors or does not fit".
    assert app.main(["plan", str(tmp_path / "fleet.yaml")]) == 1
    out = capsys.readouterr()
    text = " ".join((out.out + out.err).split())
    assert "does not fit" not in text and "apply would refuse the fleet file for the error(s) above" in text


# -- units that show the numbers -------------------------------------------------------------------


def test_size_unit_is_gib_for_real_models_and_mib_when_a_figure_would_read_zero():
    from fleetspec.cli import views

    gib = 1 << 30
    assert views.size_unit([80 * gib, 0.02 * gib, 0]) == ("GiB", gib)
    assert views.size_unit([24 * gib, 508_544]) == ("MiB", 1 << 20)
    assert views.size_unit([2048, 5000]) == ("KiB", 1 << 10)
    assert views.in_unit(508_544, ("MiB", 1 << 20)) == "0.48"


def test_the_demo_plan_and_its_finding_show_no_zero_sizes(capsys):
    assert app.main(["plan", str(ROOT / "fleet.yaml"), "--memory-only"]) == 0
    out = capsys.readouterr()
    text = out.out + out.err
    assert "0.00" not in text, text
    assert "MiB per GPU: total 24576.00" in " ".join(text.split())
    assert "vLLM preallocates 0.15 MiB per GPU for 2 LoRA slots" in text and "gives 0.05 MiB" in text
