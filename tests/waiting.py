"""Waiting on a condition with a deadline (tests never sleep a fixed time)."""

from __future__ import annotations

import time
from collections.abc import Callable


def wait_for(condition: Callable[[], object], what: str, timeout_s: float = 20.0,
             detail: Callable[[], str] = lambda: "", interval_s: float = 0.05):
    """The first truthy value of `condition()`; AssertionError naming `what` (and `detail()`) once
    `timeout_s` has passed."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} did not happen within {timeout_s:g} s. {detail()}".rstrip())
        time.sleep(interval_s)
