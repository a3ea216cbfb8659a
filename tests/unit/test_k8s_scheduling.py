"""Plans that match the Kubernetes scheduler: whole GPUs per pod unless the fleet declares sharing,
time-slicing's worst case, MIG slices as devices, and seed 003's seven pods refused with the reason."""

from __future__ import annotations

import pathlib

import pytest
import yaml

from fleetspec.compile import adapter_set
from fleetspec.planner import report
from fleetspec.spec import loading, models

ROOT = pathlib.Path(__file__).resolve().parents[2]
SEED_003 = ROOT / "examples" / "003-llama3-multi-adapter.yaml"


def fleet(target: str = "k8s", sharing: dict | None = None, gpus=None, **chat) -> models.FleetSpec:
    data = yaml.safe_load(SEED_003.read_text())
    data["runtime"]["target"] = target
    data["servers"][0].update(chat)
    data["servers"][1]["gpu_memory_utilization"] = chat.get("gpu_memory_utilization", 0.92)
    if sharing is not None:
        data["runtime"]["kubernetes"]["gpu_sharing"] = sharing
    if gpus is not None:
        data["gpus"] = gpus
    return models.FleetSpec.model_validate(data)


def codes(spec: models.FleetSpec) -> list[str]:
    return [f.code for f in report.plan_fleet(spec).errors]


def test_two_pods_on_one_gpu_are_refused_on_kubernetes_with_the_fix():
    spec = fleet(replicas=2, gpu_memory_utilization=0.45)
    (finding,) = [f for f in report.plan_fleet(spec).errors if f.code == "k8s-whole-gpus"]
    assert finding.path == "servers[0].replicas"
    assert "nvidia.com/gpu: 1" in finding.message and "GPU 0 (chat/0, chat/1)" in finding.message
    assert "stay Pending" in finding.message
    assert "3 GPUs" in finding.hint and "gpu_sharing" in finding.hint and "time-slicing" in finding.hint


def test_the_same_fleet_on_docker_may_share_the_gpu():
    assert codes(fleet("docker", replicas=2, gpu_memory_utilization=0.45)) == []


def test_time_slicing_makes_it_schedulable_when_any_pods_fit_one_card():
    assert (
        codes(fleet(sharing={"mode": "time-slicing", "replicas": 2}, replicas=2, gpu_memory_utilization=0.45))
        == []
    )


def test_time_slicing_refuses_shares_that_could_overfill_a_card():
    spec = fleet(sharing={"mode": "time-slicing", "replicas": 3}, replicas=2, gpu_memory_utilization=0.45)
    (finding,) = [f for f in report.plan_fleet(spec).errors if f.code == "k8s-time-slice-memory"]
    assert "any 3 of them may land on one GPU" in finding.message and "1.35" in finding.message
    assert "0.33" in finding.hint


def test_time_slicing_refuses_more_pods_per_gpu_than_the_plugin_advertises():
    spec = fleet(sharing={"mode": "time-slicing", "replicas": 2}, replicas=3, gpu_memory_utilization=0.3)
    assert "k8s-time-slices" in codes(spec)


def test_a_shared_gpu_cannot_hold_a_tensor_parallel_replica():
    spec = fleet(
        sharing={"mode": "time-slicing", "replicas": 2},
        gpus=[{"memory_gib": 19.5, "count": 4}],
        tensor_parallel_size=2,
    )
    assert "k8s-shared-gpu-parallel" in codes(spec)


def test_mig_slices_are_whole_devices_and_must_be_listed_as_slices():
    slices = [{"memory_gib": 19.5, "count": 2}]
    assert codes(fleet(sharing={"mode": "mig", "resource": "nvidia.com/mig-3g.20gb"}, gpus=slices)) == []
    cards = [{"type": "A100-80GB", "count": 2}]
    found = report.plan_fleet(
        fleet(sharing={"mode": "mig", "resource": "nvidia.com/mig-3g.20gb"}, gpus=cards)
    )
    (finding,) = [f for f in found.errors if f.code == "k8s-mig-slice-size"]
    assert "list the slices" in finding.hint


@pytest.mark.parametrize(
    "sharing, words",
    [
        ({"mode": "time-slicing"}, "needs `replicas`"),
        ({"mode": "mig"}, "MIG profile"),
        ({"mode": "mig", "resource": "nvidia.com/gpu"}, "MIG profile"),
        ({"mode": "mig", "resource": "nvidia.com/mig-1g.10gb", "replicas": 2}, "never shared"),
    ],
)
def test_a_sharing_declaration_must_be_complete(sharing, words):
    with pytest.raises(ValueError, match=words):
        models.GpuSharing.model_validate(sharing)


def test_seed_003s_seven_pods_are_refused_with_the_reasons():
    loaded = loading.load_path(ROOT / "examples" / "refused" / "003-llama3-seven-pods.yaml")
    plan = report.plan_fleet(loaded.spec)
    assert sum(s.replicas for s in loaded.spec.servers) == 7
    assert not plan.fits
    found = {f.code for f in plan.errors}
    assert "k8s-time-slice-memory" in found  # any 4 pods may share one card, and 4 do not fit
    chatbot = [f for f in plan.errors if f.path.startswith("servers[1]") and "does not fit" in f.message]
    assert chatbot and "3.9 GiB" in chatbot[0].message  # 0.2 of a card is less than the weights


@pytest.mark.parametrize(
    "text, words",
    [
        ("{", "not valid JSON"),
        ("[]", "JSON object"),
        ('{"format": "x"}', "fleetspec-adapters/1"),
        ('{"format": "fleetspec-adapters/1", "server": "s", "base": "b", "adapters": []}', "served name"),
        (
            '{"format": "fleetspec-adapters/1", "server": "s", "base": "b", "adapters": {"a/b": "/x"}}',
            "not a name",
        ),
        ('{"format": "fleetspec-adapters/1", "server": "s", "base": "b", "adapters": {"a": ""}}', "path"),
        (
            '{"format": "fleetspec-adapters/1", "server": "s", "base": "b", "adapters": {"b": "/x"}}',
            "base model",
        ),
    ],
)
def test_a_broken_adapter_set_is_refused_with_a_sentence(text, words):
    with pytest.raises(adapter_set.AdapterSetError, match=words):
        adapter_set.parse(text)
