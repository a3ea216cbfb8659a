"""Docker label keys fleetspec stamps on what it creates; the only place they are spelled.

Used by compose (compile), the drivers, images, watch and the reconcile fast path, so it lives low
in compile and imports nothing: the fast path loads it without leaving the standard library.

Observed state is found by these labels, never by container names, so a container renamed or
created by hand is still recognised (or ignored) for the right reason.
"""

from __future__ import annotations

PREFIX = "dev.fleetspec"

FLEET = f"{PREFIX}.fleet"  # fleet name from fleet.yaml
SERVER = f"{PREFIX}.server"  # server (pool) name
REPLICA = f"{PREFIX}.replica"  # replica index, decimal
SPEC_HASH = f"{PREFIX}.spec-hash"  # ContainerSpec.spec_hash() at creation; differs → replace
ROLE = f"{PREFIX}.role"  # one of ROLES

ROLE_ENGINE = "engine"
ROLE_ROUTER = "router"
ROLES = (ROLE_ENGINE, ROLE_ROUTER)

# Images fleetspec builds offline (fleetspec.images): what they are and the hash of their inputs.
IMAGE_KIND = f"{PREFIX}.image.kind"
IMAGE_INPUTS = f"{PREFIX}.image.inputs"


def fleet_filter(fleet_name: str) -> dict[str, list[str]]:
    """Docker API filter selecting every container of one fleet."""
    return {"label": [f"{FLEET}={fleet_name}"]}
