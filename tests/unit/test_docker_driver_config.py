"""What DockerDriver asks the engine to run, without an engine: the create() arguments."""

from __future__ import annotations

import pytest

from fleetspec import errors
from fleetspec.compile import desired, labels
from fleetspec.drivers import base
from fleetspec.drivers import docker as docker_driver


def spec(**overrides) -> desired.ContainerSpec:
    fields = {
        "name": "hi-main-0",
        "image": "vllm/vllm-openai:v0.33.0",
        "argv": ["vllm", "serve", "Qwen/QwQ-32B-AWQ", "--port", "8000"],
        "env": {"VLLM_ALLOW_RUNTIME_LORA_UPDATING": "true"},
        "ports": [desired.PortBinding(8000, 8100, "0.0.0.0")],
        "volumes": [desired.Mount("/srv/adapters", "/adapters")],
        "labels": {labels.FLEET: "hi", labels.SERVER: "main", labels.REPLICA: "0", labels.ROLE: "engine"},
    }
    return desired.ContainerSpec(**{**fields, **overrides})


def test_argv_is_the_whole_command_line_whatever_the_image_entrypoint():
    config = docker_driver.container_config(spec())
    assert config["entrypoint"] == ["vllm"]
    assert config["command"] == ["serve", "Qwen/QwQ-32B-AWQ", "--port", "8000"]


def test_ports_bind_to_the_bind_address_and_mounts_are_read_only():
    config = docker_driver.container_config(spec())
    assert config["ports"] == {"8000/tcp": ("0.0.0.0", 8100)}
    [mount] = config["mounts"]
    assert (mount["Source"], mount["Target"], mount["Type"], mount["ReadOnly"]) == (
        "/srv/adapters", "/adapters", "bind", True,
    )


def test_spec_hash_is_stamped_next_to_the_spec_labels():
    s = spec()
    assert docker_driver.container_config(s)["labels"] == {
        labels.FLEET: "hi", labels.SERVER: "main", labels.REPLICA: "0", labels.ROLE: "engine",
        labels.SPEC_HASH: s.spec_hash(),
    }


def test_gpu_ids_become_an_nvidia_device_request():
    config = docker_driver.container_config(spec(gpu_ids=["2", "3"]))
    [request] = config["device_requests"]
    assert (request["Driver"], request["DeviceIDs"], request["Capabilities"]) == ("nvidia", ["2", "3"], [["gpu"]])
    assert config["ipc_mode"] == "host"


def test_sim_engine_without_gpu_ids_requests_no_device():
    config = docker_driver.container_config(spec(image="fleetspec/sim:0.1.0"))
    assert "device_requests" not in config and "ipc_mode" not in config
    assert config["init"] is True


def test_env_references_are_expanded_only_when_creating(monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_abc")
    s = spec(env={"HF_TOKEN": "${HF_TOKEN}", "MIXED": "a-${HF_TOKEN}-b", "PLAIN": "$HOME"})
    assert docker_driver.container_config(s)["environment"] == {
        "HF_TOKEN": "hf_abc", "MIXED": "a-hf_abc-b", "PLAIN": "$HOME",
    }
    assert s.env_dict["HF_TOKEN"] == "${HF_TOKEN}"


def test_unset_env_reference_names_every_missing_variable(monkeypatch):
    monkeypatch.delenv("NOPE_A", raising=False)
    monkeypatch.delenv("NOPE_B", raising=False)
    with pytest.raises(errors.PermanentError, match=r"variable\(s\) NOPE_A, NOPE_B, which are not set"):
        docker_driver.container_config(spec(env={"X": "${NOPE_B}", "Y": "${NOPE_A}"}))


INSPECT = {
    "Id": "abc123",
    "Name": "/hi-main-1",
    "Config": {
        "Image": "fleetspec/sim:0.1.0",
        "Labels": {labels.FLEET: "hi", labels.SERVER: "main", labels.REPLICA: "1", labels.ROLE: "engine",
                   labels.SPEC_HASH: "f00d", "com.example.other": "x"},
    },
    "State": {"Status": "running", "ExitCode": 0, "StartedAt": "2026-11-22T19:00:00.1Z",
              "Health": {"Status": "healthy"}},
    "NetworkSettings": {"Ports": {
        "9090/udp": [{"HostIp": "0.0.0.0", "HostPort": "9090"}],
        "8000/tcp": [{"HostIp": "::", "HostPort": "49154"}, {"HostIp": "0.0.0.0", "HostPort": "49154"}],
        "7000/tcp": None,
    }},
}


def test_inspect_data_becomes_an_observed_container():
    seen = docker_driver.observed_from_inspect(INSPECT)
    assert seen == base.ObservedContainer(
        id="abc123", name="hi-main-1", image="fleetspec/sim:0.1.0", status="running", health="healthy",
        fleet="hi", server="main", replica=1, spec_hash="f00d", role="engine",
        ports=((8000, "0.0.0.0", 49154), (8000, "::", 49154)), exit_code=None,
        started_at="2026-11-22T19:00:00.1Z", labels=tuple(sorted(INSPECT["Config"]["Labels"].items())),
    )
    assert seen.host_port == 49154
    assert seen.to_json()["ports"][0] == {"container_port": 8000, "host_ip": "0.0.0.0", "host_port": 49154}


def test_exit_code_is_reported_only_for_stopped_containers():
    exited = {**INSPECT, "State": {"Status": "exited", "ExitCode": 137}, "NetworkSettings": {"Ports": {}}}
    seen = docker_driver.observed_from_inspect(exited)
    assert (seen.status, seen.exit_code, seen.host_port, seen.health) == ("exited", 137, None, None)


def test_create_refuses_a_spec_without_the_fleet_label():
    driver = docker_driver.DockerDriver(client=object())  # never reaches the engine
    with pytest.raises(ValueError, match="has no dev.fleetspec.fleet label"):
        driver.create(spec(labels={labels.SERVER: "main"}))
