"""Small network helpers the integration tests share: free ports, plain HTTP GETs."""

from __future__ import annotations

import socket
import urllib.error
import urllib.request


def free_port() -> int:
    """A port nothing listens on right now (the kernel's pick), on 127.0.0.1."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def get(url: str, timeout_s: float = 2.0) -> tuple[int, bytes]:
    """(status, body) of a GET; HTTP errors are answers too, not exceptions."""
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:  # noqa: S310 - local test servers
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def free_port_range(count: int, low: int = 20000, high: int = 32000) -> int:
    """A port P with P..P+count-1 all free on 127.0.0.1, below the ephemeral range (the kernel hands
    out ephemeral ports to clients, which could take one of ours between the check and the bind)."""
    import random

    rng = random.Random()
    for _ in range(500):
        port = rng.randrange(low, high - count)
        if all(_bindable(port + i) for i in range(count)):
            return port
    raise RuntimeError(f"no {count} consecutive free ports between {low} and {high}")


def _bindable(port: int) -> bool:
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True
