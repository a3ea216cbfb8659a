"""Kubernetes adapter storage: an existing claim by default, a created claim when sized, hostPath opt-in."""

from __future__ import annotations

import pytest
import yaml

from fleetspec.compile import k8s, k8s_changes, slots
from fleetspec.spec import models


def spec(**kubernetes) -> models.FleetSpec:
    return models.FleetSpec.model_validate({
        "name": "chat", "base_model": {"id": "meta-llama/Llama-3.1-8B-Instruct", "max_model_len": 4096},
        "gpus": "1x L4", "servers": [{"name": "main", "lora": {"max_loras": 2, "max_lora_rank": 16}}],
        "specialists": [{"name": "sql", "version": "1", "path": "/adapters/sql/1", "rank": 16}],
        "runtime": {"target": "k8s", "engine": "vllm", "adapter_roots": ["/adapters"], "kubernetes": kubernetes},
    })


def manifests(fleet: models.FleetSpec) -> dict[tuple[str, str], dict]:
    return k8s_changes.objects(k8s.compile_manifests(fleet, slots.sequential(fleet)))


def claim_of(documents: dict[tuple[str, str], dict]) -> str:
    deployment = next(d for d in documents.values() if d["kind"] == "Deployment" and "vllm" in d["metadata"]["name"])
    volume = next(v for v in deployment["spec"]["template"]["spec"]["volumes"] if v["name"] == "adapters")
    return volume["persistentVolumeClaim"]["claimName"]


def test_by_default_pods_mount_an_existing_claim_and_none_is_created():
    documents = manifests(spec())
    assert claim_of(documents) == "chat-adapters"
    assert not any(d["kind"] == "PersistentVolumeClaim" for d in documents.values())


def test_a_sized_claim_is_created_and_listed_before_the_pods_that_mount_it():
    fleet = spec(adapter_claim="shared", adapter_claim_size="20Gi", adapter_storage_class="fast")
    documents = manifests(fleet)
    (pvc,) = [d for d in documents.values() if d["kind"] == "PersistentVolumeClaim"]
    assert pvc["metadata"]["name"] == claim_of(documents) == "shared"
    assert pvc["spec"] == {"accessModes": ["ReadWriteMany"], "storageClassName": "fast",
                           "resources": {"requests": {"storage": "20Gi"}}}
    files = k8s.compile_manifests(fleet, slots.sequential(fleet))
    resources = yaml.safe_load(files[k8s.KUSTOMIZATION])["resources"]
    assert resources.index(k8s.SHARED_FILE) < resources.index("vllm-main.yaml")
    shared = [(d["kind"], d["metadata"]["name"]) for d in yaml.safe_load_all(files[k8s.SHARED_FILE])]
    assert shared == [("Namespace", "chat"), ("PersistentVolumeClaim", "shared")]


def test_host_path_mounts_the_node_directory_and_creates_no_claim():
    documents = manifests(spec(adapter_volume="host_path", adapter_claim_size="20Gi"))
    assert not any(d["kind"] == "PersistentVolumeClaim" for d in documents.values())


@pytest.mark.parametrize("size", ["20GB", "lots", "-1Gi"])
def test_a_claim_size_must_be_a_kubernetes_quantity(size):
    with pytest.raises(ValueError):
        spec(adapter_claim_size=size)
