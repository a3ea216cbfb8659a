"""DockerDriver against a real Docker engine, with the offline-built sim image."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request

import docker.errors
import pytest
from netkit import get

from fleetspec import errors
from fleetspec.compile import desired, labels
from fleetspec.drivers import docker as docker_driver

MODEL = "TinyLlama/TinyLlama-1.1B-Chat-v1.0"




def wait_http_ok(url: str, timeout_s: float) -> float:
    """Seconds until `url` answers 200; fails the test at the deadline."""
    started = time.monotonic()
    last = "no answer"
    while time.monotonic() - started < timeout_s:
        try:
            status, _ = get(url, timeout_s=1.0)
            if status == 200:
                return time.monotonic() - started
            last = f"HTTP {status}"
        except (urllib.error.URLError, ConnectionError, TimeoutError) as exc:
            last = str(exc)
        time.sleep(0.05)
    pytest.fail(f"{url} did not answer 200 within {timeout_s} s (last: {last})")


def engine_spec(fleet, image: str, argv: list[str], **overrides) -> desired.ContainerSpec:
    fields = {
        "name": f"{fleet.name}-main-0",
        "image": image,
        "argv": argv,
        "ports": [desired.PortBinding(container_port=8000, host_port=None, host_ip="127.0.0.1")],
        "labels": {**fleet.labels, labels.SERVER: "main", labels.REPLICA: "0", labels.ROLE: labels.ROLE_ENGINE},
    }
    return desired.ContainerSpec(**{**fields, **overrides})


@pytest.fixture
def driver(docker_client):
    return docker_driver.DockerDriver(docker_client)


def test_sim_engine_runs_from_vllm_serve_argv_and_is_observed_by_label(driver, sim_image, docker_fleet):
    spec = engine_spec(
        docker_fleet, sim_image.tag,
        ["vllm", "serve", MODEL, "--host", "0.0.0.0", "--port", "8000", "--enable-lora", "--max-lora-rank", "16"],
        env={"VLLM_ALLOW_RUNTIME_LORA_UPDATING": "true"},
    )
    container_id = driver.create(spec)
    running = driver.wait_running(container_id, timeout_s=30)

    [seen] = driver.observe(docker_fleet.name)
    assert (seen.id, seen.name, seen.status) == (container_id, f"{docker_fleet.name}-main-0", "running")
    assert (seen.fleet, seen.server, seen.replica, seen.role) == (docker_fleet.name, "main", 0, "engine")
    assert seen.spec_hash == spec.spec_hash()
    assert seen.image == sim_image.tag
    assert seen.health is None  # no Docker HEALTHCHECK: fleetspec asks the engine's /health itself
    assert seen.ports[0][:2] == (8000, "127.0.0.1")
    assert seen.host_port == running.host_port and seen.host_port > 0

    base = f"http://127.0.0.1:{seen.host_port}"
    wait_http_ok(f"{base}/health", timeout_s=30)
    status, body = get(f"{base}/v1/models")
    assert status == 200
    assert [m["id"] for m in json.loads(body)["data"]] == [MODEL]

    driver.remove(container_id)
    assert driver.observe(docker_fleet.name) == []
    with pytest.raises(docker.errors.NotFound):
        driver.client.api.inspect_container(container_id)
    driver.remove(container_id)  # removing what is already gone is not an error


def test_plain_command_in_base_image_serves_http(driver, base_image, docker_fleet):
    spec = engine_spec(docker_fleet, base_image.tag, ["python3", "-m", "http.server", "8000"])
    container_id = driver.create(spec)
    port = driver.wait_running(container_id, timeout_s=30).host_port
    wait_http_ok(f"http://127.0.0.1:{port}/", timeout_s=30)
    assert b"Directory listing for /" in get(f"http://127.0.0.1:{port}/")[1]
    driver.remove(container_id)
    assert driver.observe(docker_fleet.name) == []


def test_exited_container_is_reported_with_exit_code_and_logs(driver, base_image, docker_fleet, tmp_path):
    (tmp_path / "adapter_config.json").write_text("{}")
    spec = engine_spec(
        docker_fleet, base_image.tag,
        ["python3", "-c", "print(open('/adapters/adapter_config.json').read()); open('/adapters/x', 'w')"],
        ports=[], volumes=[desired.Mount(source=str(tmp_path), target="/adapters")],
    )
    container_id = driver.create(spec)
    assert driver.client.api.wait(container_id, timeout=30)["StatusCode"] == 1

    [seen] = driver.observe(docker_fleet.name)
    assert (seen.status, seen.exit_code, seen.host_port) == ("exited", 1, None)
    logs = driver.logs_tail(container_id, lines=5).splitlines()
    # stdout and stderr are separate streams, so only membership is certain, not their order.
    assert "{}" in logs  # the mount is readable ...
    assert "OSError: [Errno 30] Read-only file system: '/adapters/x'" in logs  # ... and read-only
    with pytest.raises(errors.PermanentError, match=r"exited with code 1 instead of starting"):
        driver.wait_running(container_id, timeout_s=5)


def test_env_secrets_are_expanded_from_fleetspec_environment(driver, base_image, docker_fleet, monkeypatch):
    monkeypatch.setenv("FST_TEST_SECRET", "s3cret")
    spec = engine_spec(
        docker_fleet, base_image.tag, ["python3", "-c", "import os; print(os.environ['TOKEN'])"],
        ports=[], env={"TOKEN": "Bearer ${FST_TEST_SECRET}"},
    )
    container_id = driver.create(spec)
    assert driver.client.api.wait(container_id, timeout=30)["StatusCode"] == 0
    assert driver.logs_tail(container_id) == "Bearer s3cret\n"
    # The label keeps the reference, not the secret: the hash does not change when the secret does.
    assert driver.observe(docker_fleet.name)[0].spec_hash == spec.spec_hash()


def test_missing_secret_fails_before_anything_is_created(driver, base_image, docker_fleet, monkeypatch):
    monkeypatch.delenv("FST_TEST_UNSET", raising=False)
    spec = engine_spec(docker_fleet, base_image.tag, ["true"], env={"TOKEN": "${FST_TEST_UNSET}"})
    with pytest.raises(errors.PermanentError, match="FST_TEST_UNSET, which are not set"):
        driver.create(spec)
    assert driver.observe(docker_fleet.name) == []


def test_name_conflict_and_missing_image_are_permanent_errors(driver, base_image, docker_fleet):
    spec = engine_spec(docker_fleet, base_image.tag, ["sleep", "60"], ports=[])
    driver.create(spec)
    with pytest.raises(errors.PermanentError, match=rf"already named {spec.name}\. Remove it"):
        driver.create(spec)
    missing = engine_spec(docker_fleet, "fleetspec/does-not-exist:0", ["true"], name=f"{docker_fleet.name}-x")
    with pytest.raises(errors.PermanentError, match="fleetspec/does-not-exist:0 is not on this Docker engine"):
        driver.create(missing)
    assert [c.name for c in driver.observe(docker_fleet.name)] == [spec.name]


def test_observe_ignores_other_fleets(driver, base_image, docker_fleet, docker_client):
    other = docker_client.containers.create(
        base_image.tag, ["sleep", "60"], labels={labels.FLEET: f"{docker_fleet.name}-other"}
    )
    try:
        assert driver.observe(docker_fleet.name) == []
    finally:
        other.remove(force=True)


def test_the_socket_reader_sees_exactly_what_the_sdk_sees_and_hands_changes_to_it(driver, base_image, docker_fleet,
                                                                                    docker_client, monkeypatch):
    """`plan` and `status` read through the Engine API on the local socket without the docker SDK
    (drivers/docker_api.py): the same containers, states, ports and labels as the SDK driver, and
    create/remove still work through it."""
    from fleetspec import drivers
    from fleetspec.drivers import docker_api

    monkeypatch.setenv("DOCKER_HOST", "unix:///var/run/docker.sock")
    reader = drivers.for_runtime("docker", None, docker_fleet.name)
    assert isinstance(reader, docker_api.SocketDockerDriver)
    spec = engine_spec(docker_fleet, base_image.tag, ["python3", "-m", "http.server", "8000"])
    container_id = reader.create(spec)
    try:
        driver.wait_running(container_id, timeout_s=30)
        seen = reader.observe(docker_fleet.name)
        assert seen == driver.observe(docker_fleet.name)
        assert [(c.id, c.running, c.role, c.server) for c in seen] == [(container_id, True, labels.ROLE_ENGINE, "main")]
        assert seen[0].host_port
    finally:
        reader.remove(container_id)
    assert reader.observe(docker_fleet.name) == []


def test_the_socket_reader_says_when_no_engine_answers(tmp_path):
    from fleetspec.drivers import docker_api

    with pytest.raises(errors.TemporaryError, match="No Docker engine answered"):
        docker_api.SocketDockerDriver(str(tmp_path / "no.sock")).observe("demo")
