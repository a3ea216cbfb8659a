"""Fixtures for tests against a real Docker engine.

Without a reachable engine these tests skip with the reason shown in the summary; with
FLEETSPEC_REQUIRE_DOCKER=1 (CI) they fail instead, so a broken engine can never pass CI quietly.
Every container a test creates belongs to a throwaway fleet (`docker_fleet`) and is removed when
the test ends, passed or failed. Fleets left behind by a killed session are swept at the next one.
"""

from __future__ import annotations

import dataclasses
import itertools
import os
import re

import docker.errors
import pytest
import require

from fleetspec import errors
from fleetspec.compile import labels

TEST_FLEET_PREFIX = "fst-"  # fst-<pid of the pytest process>-<n>: a valid fleet name that names its owner
_TEST_FLEET = re.compile(rf"^{TEST_FLEET_PREFIX}(\d+)-")
_counter = itertools.count(1)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # `-m "not docker"` then deselects everything that needs the engine.
    for item in items:
        if "docker_client" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.docker)


def unavailable(reason: str) -> None:
    require.unavailable("DOCKER", reason)


@pytest.fixture(scope="session")
def docker_client():
    """A docker SDK client for the local engine; skips (or fails under CI) without one."""
    from fleetspec.drivers import docker as docker_driver

    try:
        client = docker_driver.connect(timeout_s=10)
    except errors.TemporaryError as exc:
        unavailable(str(exc))
    _sweep_stale_fleets(client)
    yield client
    client.close()


@pytest.fixture(scope="session")
def sim_image(docker_client):
    """fleetspec/sim:<version> for the current tree, built once per change (see fleetspec.images)."""
    from fleetspec.images import build

    try:
        return build.ensure_sim_image(docker_client)
    except errors.FleetspecError as exc:
        unavailable(f"The sim image could not be built: {exc}")


@pytest.fixture(scope="session")
def base_image(sim_image):
    """The bare Debian + python3 image the sim image is layered on."""
    return sim_image.base


@dataclasses.dataclass(frozen=True)
class ThrowawayFleet:
    name: str

    @property
    def labels(self) -> dict[str, str]:
        """Put these on any container a test creates by hand, so teardown finds it."""
        return {labels.FLEET: self.name}


@pytest.fixture
def docker_fleet(docker_client):
    """A fresh fleet name; every container labelled with it is removed after the test."""
    fleet = ThrowawayFleet(name=f"{TEST_FLEET_PREFIX}{os.getpid()}-{next(_counter)}")
    yield fleet
    left = _remove_fleet(docker_client, fleet.name)
    assert left == [], f"containers of test fleet {fleet.name} survived cleanup: {left}"


def _remove_fleet(client, fleet_name: str) -> list[str]:
    """Remove the fleet's containers; return the names of any still present afterwards."""
    for summary in client.api.containers(all=True, filters=labels.fleet_filter(fleet_name)):
        try:
            client.api.remove_container(summary["Id"], force=True)
        except docker.errors.APIError as exc:  # keep removing the others; the survivors are reported
            print(f"could not remove {summary['Id'][:12]}: {exc}")
    remaining = client.api.containers(all=True, filters=labels.fleet_filter(fleet_name))
    return [name for summary in remaining for name in summary.get("Names", [])]


def _sweep_stale_fleets(client) -> None:
    """Remove test fleets whose pytest process is gone (killed runs never reach teardown)."""
    seen = {
        summary["Labels"].get(labels.FLEET, "")
        for summary in client.api.containers(all=True, filters={"label": [labels.FLEET]})
    }
    for fleet in seen:
        match = _TEST_FLEET.match(fleet)
        if match and not _alive(int(match.group(1))):
            _remove_fleet(client, fleet)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
