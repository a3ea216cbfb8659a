"""Kubernetes manifests that match what the cluster does: the adapter agent and its ConfigMap, the
shared read-only model volume, requests from the fleet and the plan, Ingress paths, sessionAffinity,
and which changes are hot (ConfigMap only) or a rollout."""

from __future__ import annotations

import json
import pathlib

import yaml

from fleetspec.compile import adapter_set, k8s, k8s_changes, slots, targets
from fleetspec.planner import report
from fleetspec.spec import loading, models

ROOT = pathlib.Path(__file__).resolve().parents[2]
SEED_003 = ROOT / "examples" / "003-llama3-multi-adapter.yaml"


def manifests_of(fleet: models.FleetSpec) -> dict[tuple[str, str], dict]:
    """(kind, name) → object, from every document of every compiled file."""
    plan = report.plan_fleet(fleet)
    assert plan.fits, [f.render() for f in plan.errors]
    return k8s_changes.objects(k8s.compile_manifests(fleet, slots.from_plan(plan)))


def seed_003(**changes) -> models.FleetSpec:
    data = yaml.safe_load(SEED_003.read_text())
    for path, value in changes.items():
        target = data
        *parents, last = path.split(".")
        for part in parents:
            target = target[int(part)] if part.isdigit() else target[part]
        target[int(last) if last.isdigit() else last] = value
    return models.FleetSpec.model_validate(data)


def pod_spec(documents: dict, deployment: str) -> dict:
    return documents[("Deployment", deployment)]["spec"]["template"]["spec"]


def containers(documents: dict, deployment: str) -> dict[str, dict]:
    return {c["name"]: c for c in pod_spec(documents, deployment)["containers"]}


def test_every_lora_pod_runs_the_agent_beside_an_engine_started_without_adapters():
    documents = manifests_of(seed_003())
    pod = containers(documents, "vllm-chat")
    assert list(pod) == ["vllm", "agent"]
    assert "--lora-modules" not in pod["vllm"]["command"]  # the agent loads them: a change never rolls out
    assert {"name": "VLLM_ALLOW_RUNTIME_LORA_UPDATING", "value": "true"} in pod["vllm"]["env"]
    agent = pod["agent"]
    assert agent["command"][:4] == ["python3", "-m", "fleetspec", "agent"]
    assert agent["command"][agent["command"].index("--engine") + 1] == "http://127.0.0.1:8000"
    mounts = {m["name"]: m for m in agent["volumeMounts"]}
    # A directory mount, never subPath: only those receive kubelet's ConfigMap updates.
    assert mounts["adapter-set"] == {
        "name": "adapter-set",
        "mountPath": k8s.AGENT_CONFIG_DIR,
        "readOnly": True,
    }
    assert mounts["agent-state"]["readOnly"] is False
    volumes = {v["name"]: v for v in pod_spec(documents, "vllm-chat")["volumes"]}
    assert volumes["adapter-set"]["configMap"] == {"name": "vllm-chat-adapters"}
    assert volumes["agent-state"] == {"name": "agent-state", "emptyDir": {}}


def test_the_adapter_set_configmap_holds_what_the_agent_parses():
    documents = manifests_of(seed_003())
    configmap = documents[("ConfigMap", "vllm-tasks-adapters")]
    parsed = adapter_set.parse(configmap["data"][adapter_set.FILE])
    assert parsed.server == "tasks" and parsed.base == "casperhansen/llama-3-8b-instruct-awq"
    assert parsed.mapping == {"code--1": "/adapters/code", "summarization--1": "/adapters/summarization"}


def test_probes_engine_health_and_agent_readiness():
    pod = containers(manifests_of(seed_003()), "vllm-chat")
    engine = {
        kind: pod["vllm"][kind]["httpGet"] for kind in ("startupProbe", "readinessProbe", "livenessProbe")
    }
    assert all(probe == {"path": "/health", "port": "http"} for probe in engine.values())
    assert pod["agent"]["readinessProbe"]["httpGet"] == {"path": "/ready", "port": "agent"}
    assert pod["agent"]["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "agent"}
    assert pod["agent"]["ports"] == [{"name": "agent", "containerPort": 8081, "protocol": "TCP"}]


def test_the_base_model_volume_is_shared_read_only_in_every_engine_pod():
    documents = manifests_of(seed_003())
    for deployment in ("vllm-chat", "vllm-tasks"):
        spec = pod_spec(documents, deployment)
        volume = next(v for v in spec["volumes"] if v["name"] == "model-cache")
        assert volume["persistentVolumeClaim"] == {"claimName": "base-models", "readOnly": True}
        engine = containers(documents, deployment)["vllm"]
        mount = next(m for m in engine["volumeMounts"] if m["name"] == "model-cache")
        assert mount == {"name": "model-cache", "mountPath": "/root/.cache/huggingface", "readOnly": True}
        assert {"name": "HF_HUB_OFFLINE", "value": "1"} in engine["env"]
    claim = documents[("PersistentVolumeClaim", "base-models")]
    assert claim["spec"]["resources"]["requests"]["storage"] == "50Gi"


def test_a_host_path_model_volume_and_no_volume_at_all():
    on_node = manifests_of(
        seed_003(
            **{
                "runtime.kubernetes.model_volume": "host_path",
                "runtime.kubernetes.model_host_path": "/var/lib/models",
            }
        )
    )
    volume = next(v for v in pod_spec(on_node, "vllm-chat")["volumes"] if v["name"] == "model-cache")
    assert volume["hostPath"] == {"path": "/var/lib/models", "type": "Directory"}
    assert ("PersistentVolumeClaim", "base-models") not in on_node
    own = manifests_of(seed_003(**{"runtime.kubernetes.model_volume": "none"}))
    assert {"name": "hf-cache", "emptyDir": {}} in pod_spec(own, "vllm-chat")["volumes"]


def test_requests_and_limits_come_from_the_fleet_and_gpus_from_the_plan():
    resources = containers(manifests_of(seed_003()), "vllm-chat")["vllm"]["resources"]
    assert resources == {
        "requests": {"cpu": "2", "memory": "8Gi", "nvidia.com/gpu": "1"},
        "limits": {"cpu": "4", "memory": "12Gi", "nvidia.com/gpu": "1"},
    }


def test_time_sliced_pods_request_the_shared_resource():
    fleet = seed_003(
        **{
            "servers.0.gpu_memory_utilization": 0.45,
            "servers.1.gpu_memory_utilization": 0.45,
            "servers.0.replicas": 2,
            "runtime.kubernetes.gpu_sharing": {"mode": "time-slicing", "replicas": 2},
        }
    )
    resources = containers(manifests_of(fleet), "vllm-chat")["vllm"]["resources"]
    assert (
        resources["requests"]["nvidia.com/gpu.shared"] == "1" == resources["limits"]["nvidia.com/gpu.shared"]
    )
    assert "nvidia.com/gpu" not in resources["requests"]


def test_ingress_paths_per_specialist_and_server_all_go_through_the_router():
    ingress = manifests_of(seed_003())[("Ingress", "router")]
    paths = ingress["spec"]["rules"][0]["http"]["paths"]
    assert [p["path"] for p in paths] == ["/", "/base", "/chatbot", "/code", "/summarization", "/chat", "/tasks"]
    assert {p["backend"]["service"]["name"] for p in paths} == {"router"}
    assert {p["pathType"] for p in paths} == {"Prefix"}
    plain = manifests_of(seed_003(**{"runtime.kubernetes.ingress_paths": False}))[("Ingress", "router")]
    assert [p["path"] for p in plain["spec"]["rules"][0]["http"]["paths"]] == ["/"]


def test_session_affinity_where_the_seed_used_it_and_a_headless_service_for_discovery():
    documents = manifests_of(seed_003())
    assert documents[("Service", "vllm-chat")]["spec"]["sessionAffinity"] == "ClientIP"
    assert documents[("Service", "router")]["spec"]["sessionAffinity"] == "ClientIP"
    headless = documents[("Service", "vllm-chat-pods")]["spec"]
    assert headless["clusterIP"] == "None" and "sessionAffinity" not in headless
    assert headless["selector"] == documents[("Service", "vllm-chat")]["spec"]["selector"]
    default = manifests_of(seed_003(**{"runtime.kubernetes.session_affinity": "None"}))
    assert "sessionAffinity" not in default[("Service", "vllm-chat")]["spec"]


def test_the_router_is_told_each_lora_pods_agent_port_and_no_port_where_no_agent_runs():
    fleet = models.FleetSpec.model_validate({
        "name": "pods", "base_model": {"id": "fleetspec/tiny-test-llama"}, "gpus": [{"type": "sim", "count": 2}],
        "servers": [{"name": "main", "lora": {"max_loras": 1, "max_lora_rank": 8}}, {"name": "plain"}],
        "specialists": [{"name": "sql", "version": "1", "path": "/adapters/sql", "servers": ["main"]}],
        "runtime": {"target": "k8s", "engine": "sim", "kubernetes": {"agent_port": 9191}},
    })
    documents = manifests_of(fleet)
    router = json.loads(documents[("ConfigMap", "pods-router")]["data"]["router.json"])
    ports = {u["server"]: u.get("agent_port") for u in router["upstreams"]}
    assert ports == {"main": 9191, "plain": None}
    agent = containers(documents, "vllm-main")["agent"]
    assert agent["ports"][0]["containerPort"] == 9191  # the port the router asks at each pod's address
    assert list(containers(documents, "vllm-plain")) == ["vllm"]


def compiled(fleet: models.FleetSpec) -> dict[str, str]:
    return k8s.compile_manifests(fleet, slots.from_plan(report.plan_fleet(fleet)))


def test_an_adapter_version_bump_is_configmap_only_and_a_flag_change_rolls_out():
    before = compiled(seed_003())
    bump = compiled(seed_003(**{"specialists.0.version": "2", "specialists.0.path": "/adapters/chatbot-2"}))
    changes = {(c.kind, c.name): c for c in k8s_changes.compare(before, bump)}
    assert set(changes) == {("ConfigMap", "vllm-chat-adapters"), ("ConfigMap", "llama3-multi-adapter-router")}
    assert all(c.effect == k8s_changes.HOT and not c.restarts for c in changes.values())
    assert "load chatbot--2 then unload chatbot--1" in changes[("ConfigMap", "vllm-chat-adapters")].detail

    flags = compiled(seed_003(**{"servers.0.max_num_seqs": 16}))
    (rollout,) = [c for c in k8s_changes.compare(before, flags) if c.kind == "Deployment"]
    assert rollout.name == "vllm-chat" and rollout.effect == k8s_changes.ROLLOUT and rollout.restarts
    assert "--max-num-seqs 14 → 16" in rollout.detail

    scaled = compiled(seed_003(**{"servers.1.replicas": 0}))
    removed = {c.name: c.effect for c in k8s_changes.compare(before, scaled)}
    assert removed["vllm-tasks"] == k8s_changes.DELETE


def test_the_compiled_adapter_set_round_trips_through_json():
    configmap = k8s_changes.objects(compiled(seed_003()))[("ConfigMap", "vllm-chat-adapters")]
    data = json.loads(configmap["data"][adapter_set.FILE])
    assert data["format"] == adapter_set.FORMAT and data["fleet"] == "llama3-multi-adapter"


def test_one_file_per_server_holds_its_objects_and_kustomization_lists_every_file():
    """One file per server, the router's and the shared ones, not one per object: at 256 servers that
    is 259 files instead of 1,029, and creating files was most of compile's time (docs/benchmarks.md)."""
    files = compiled(seed_003())
    assert list(files) == ["shared.yaml", "vllm-chat.yaml", "vllm-tasks.yaml", "router.yaml", k8s.KUSTOMIZATION]
    assert yaml.safe_load(files[k8s.KUSTOMIZATION])["resources"] == list(files)[:-1]

    def kinds(file: str) -> list[tuple[str, str]]:
        return [(d["kind"], d["metadata"]["name"]) for d in yaml.safe_load_all(files[file])]

    assert kinds("shared.yaml") == [("Namespace", "llama3-multi-adapter"),
                                    ("PersistentVolumeClaim", "llama3-multi-adapter-adapters"),
                                    ("PersistentVolumeClaim", "base-models")]
    assert kinds("vllm-chat.yaml") == [("ConfigMap", "vllm-chat-adapters"), ("Deployment", "vllm-chat"),
                                       ("Service", "vllm-chat"), ("Service", "vllm-chat-pods")]
    assert kinds("router.yaml") == [("ConfigMap", "llama3-multi-adapter-router"), ("Deployment", "router"),
                                    ("Service", "router"), ("Ingress", "router")]
    # Printed without -o: the same objects, one stream, in the same order.
    stdout = targets.compile_target(seed_003(), slots.from_plan(report.plan_fleet(seed_003())), "k8s").stdout
    assert [(d["kind"], d["metadata"]["name"]) for d in yaml.safe_load_all(stdout)] == \
        kinds("shared.yaml") + kinds("vllm-chat.yaml") + kinds("vllm-tasks.yaml") + kinds("router.yaml")


def test_the_seed_003_example_loads_as_a_file():
    assert loading.load_path(SEED_003).spec.runtime.kubernetes.model_volume == "pvc"
