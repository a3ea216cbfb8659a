"""`gpus: {discover: true}` through a stand-in NVML module (no GPU on the test machine)."""

from __future__ import annotations

import types

import pytest

from fleetspec import errors
from fleetspec.planner import discovery

GIB = 1 << 30


def fake_nvml(cards, fail=None):
    def init():
        if fail:
            raise RuntimeError(fail)

    return types.SimpleNamespace(
        nvmlInit=init, nvmlShutdown=lambda: None, nvmlDeviceGetCount=lambda: len(cards),
        nvmlDeviceGetHandleByIndex=lambda i: i,
        nvmlDeviceGetName=lambda h: cards[h][0].encode(),
        nvmlDeviceGetMemoryInfo=lambda h: types.SimpleNamespace(total=cards[h][1], reserved=cards[h][2]),
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
