"""The router's event loop: uvloop where installed, asyncio's own on request."""

from __future__ import annotations

import asyncio
import sys

import pytest

from fleetspec.router import cli


@pytest.mark.skipif(sys.platform == "win32", reason="uvloop is a dependency everywhere but Windows")
def test_uvloop_is_the_default_where_it_is_installed(monkeypatch):
    import uvloop  # a declared dependency: missing is a failure, not a skip

    monkeypatch.delenv("FLEETSPEC_ROUTER_EVENT_LOOP", raising=False)
    factory = cli._event_loop_factory()
    assert factory is uvloop.new_event_loop
    loop = factory()
    try:
        assert isinstance(loop, uvloop.Loop)
    finally:
        loop.close()


def test_asyncio_loop_on_request(monkeypatch):
    monkeypatch.setenv("FLEETSPEC_ROUTER_EVENT_LOOP", "asyncio")
    assert cli._event_loop_factory() is None
    with asyncio.Runner(loop_factory=cli._event_loop_factory()) as runner:
        assert runner.run(asyncio.sleep(0, "ran")) == "ran"
