"""`gpus: {discover: true}` through a stand-in NVML module (no GPU on the test machine)."""

from __future__ import annotations

import types

import pytest

from fleetspec import errors
from fleetspec.planner import discovery

GIB = 1 << 30


def fake_nvml(cards, fail=None, nvlinks=None):
    """`nvlinks`: per card, how many NVLinks are up (NVML raises past a device's last link)."""
    def init():
        if fail:
            raise RuntimeError(fail)

    def link_state(handle, link):
        if link >= 4:
            raise RuntimeError("NVML_ERROR_INVALID_ARGUMENT")
        return int(link < (nvlinks or [0] * len(cards))[handle])

    return types.SimpleNamespace(
        nvmlInit=init, nvmlShutdown=lambda: None, nvmlDeviceGetCount=lambda: len(cards),
        nvmlDeviceGetHandleByIndex=lambda i: i,
        nvmlDeviceGetName=lambda h: cards[h][0].encode(),
        nvmlDeviceGetMemoryInfo=lambda h: types.SimpleNamespace(total=cards[h][1], reserved=cards[h][2]),
        nvmlDeviceGetNvLinkState=link_state,
    )


def test_known_cards_group_by_catalog_type_and_unknown_by_memory():
    cards = [("NVIDIA H100 80GB HBM3", 81559 << 20, 0), ("NVIDIA H100 80GB HBM3", 81559 << 20, 0),
             ("Mystery Accelerator", 33 * GIB, GIB)]
    groups = discovery.discover(fake_nvml(cards))
    assert [(g.type, g.memory_gib, g.count, g.ids) for g in groups] == [
        ("H100-80GB", None, 2, [0, 1]), (None, 32.0, 1, [2])]


def test_missing_driver_is_a_clear_error():
    with pytest.raises(errors.PermanentError, match="NVIDIA driver .NVML. is not available"):
        discovery.discover(fake_nvml([], fail="NVML Shared Library Not Found"))


def test_no_gpus_is_a_clear_error():
    with pytest.raises(errors.PermanentError, match="no GPUs"):
        discovery.discover(fake_nvml([]))


def test_nvlink_state_sets_the_groups_interconnect():
    cards = [("NVIDIA H100 80GB HBM3", 81559 << 20, 0)] * 2 + [("NVIDIA H100 PCIe", 81559 << 20, 0)]
    groups = discovery.discover(fake_nvml(cards, nvlinks=[4, 4, 0]))
    assert [(g.type, g.count, g.interconnect) for g in groups] == [("H100-80GB", 2, "nvlink"), ("H100-80GB", 1, "pcie")]


def test_an_nvml_without_nvlink_calls_means_pcie():
    nvml = fake_nvml([("NVIDIA L4", 23034 << 20, 0)])
    del nvml.nvmlDeviceGetNvLinkState
    assert discovery.discover(nvml)[0].interconnect == "pcie"
