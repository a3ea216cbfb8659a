"""The one rule for tests that need something outside the project (an engine, an oracle, a server).

Without it they skip with the reason, so a laptop without Docker still runs the rest; with
FLEETSPEC_REQUIRE_<WHAT>=1 (CI sets DOCKER, ORACLES, REDIS, EMBEDDING and VLLM) they fail instead, so a
missing tool can never pass CI quietly. Never use this for fleetspec's own code or for a package in
the `test` extra: import those plainly, so that a regression fails.
"""

from __future__ import annotations

import os
from typing import NoReturn

import pytest

KNOWN = ("DOCKER", "ORACLES", "REDIS", "EMBEDDING", "VLLM")


def required(what: str) -> bool:
    """Whether FLEETSPEC_REQUIRE_<what>=1 makes tests needing `what` mandatory."""
    if what not in KNOWN:
        raise ValueError(f"unknown requirement {what!r}; one of {', '.join(KNOWN)}")
    return os.environ.get(f"FLEETSPEC_REQUIRE_{what}") == "1"


def unavailable(what: str, reason: str) -> NoReturn:
    """Skip the current test for `reason`, or fail it when FLEETSPEC_REQUIRE_<what>=1."""
    if required(what):
        pytest.fail(f"{reason} (FLEETSPEC_REQUIRE_{what}=1: these tests may not skip)", pytrace=False)
    pytest.skip(reason)
