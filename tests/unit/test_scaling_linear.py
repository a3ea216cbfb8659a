"""No stage may do work per server × specialist pair (or per pair of servers): counted, not timed.

The whole pipeline (load, checks, adapter survey, memory plan, desired state, every compile
target) runs on a fleet, then with twice the servers, twice the specialists, and twice both.
The functions that used to be called per pair (hosting lookups, name lookups, model equality, which
`list.index` and `in` on models fall back to) must be called at most about twice as often: linear
growth. A quadratic stage (the `_padding` scan of issue 17 called `hosts_of` servers × specialists
times) shows up as four times the calls when both double.
"""

from __future__ import annotations

import collections
import pathlib
import tempfile

import pytest
import yaml

from fleetspec.compile import slots, targets
from fleetspec.reconcile import session
from fleetspec.spec import hosting, loading, models

COUNTED = [
    (models.FleetSpec, "hosts_of"), (models.FleetSpec, "hosted_by"), (models.FleetSpec, "server"),
    (models.FleetSpec, "specialist"), (models.Specialist, "version_entry"), (models.Strict, "__eq__"),
    (hosting.FleetIndex, "__init__"),
]


def fleet_text(servers: int, specialists: int) -> str:
    document = {
        "name": "scale", "base_model": {"id": "meta-llama/Llama-3.1-8B-Instruct", "max_model_len": 8192},
        "gpus": [{"type": "H100-80GB", "count": servers}],
        "servers": [{"name": f"pool-{i}", "port": 20000 + 10 * i,
                     "lora": {"max_loras": 4, "max_cpu_loras": 16, "max_lora_rank": 64}} for i in range(servers)],
        "specialists": [{"name": f"spec-{n}", "version": "1.0.0", "path": f"/adapters/spec-{n}/1.0.0", "rank": 16,
                         "keywords": [f"kw{n}"], "extensions": [f".x{n}"],
                         "servers": [f"pool-{n % servers}", f"pool-{(n + 1) % servers}"],
                         "versions": [{"version": "0.9.0", "path": f"/adapters/spec-{n}/0.9.0"}]}
                        for n in range(specialists)],
        "routing": {"rules": [{"name": "signals", "specialist_signals": True}]},
        "runtime": {"target": "local", "engine": "vllm", "adapter_roots": ["/adapters"]},
    }
    return yaml.safe_dump(document, sort_keys=False)


def calls(monkeypatch, tmp_path, servers: int, specialists: int) -> collections.Counter:
    counter: collections.Counter = collections.Counter()
    with monkeypatch.context() as patch:
        for owner, name in COUNTED:
            original = getattr(owner, name)

            def counting(*args, __original=original, __name=f"{owner.__name__}.{name}", **kwargs):
                counter[__name] += 1
                return __original(*args, **kwargs)

            patch.setattr(owner, name, counting)
        fleet_file = tmp_path / f"fleet-{servers}-{specialists}.yaml"
        fleet_file.write_text(fleet_text(servers, specialists))
        loaded = loading.load_path(fleet_file)
        prepared = session.prepare_loaded(loaded)
        placed = slots.from_plan(prepared.memory)
        for target in targets.TARGETS:
            targets.compile_target(loaded.spec, placed, target, fmt="json", base_dir=loaded.base_dir)
    return counter


@pytest.fixture(scope="module")
def counted():
    results = {}
    with pytest.MonkeyPatch.context() as monkeypatch, tempfile.TemporaryDirectory() as tmp:
        for servers, specialists in ((8, 40), (16, 40), (8, 80), (16, 80)):
            results[(servers, specialists)] = calls(monkeypatch, pathlib.Path(tmp), servers, specialists)
    return results


# Doubling both matters: work per server × specialist pair only doubles when one of them doubles,
# but quadruples when both do, while linear work (each specialist hosted on two servers) doubles.
@pytest.mark.parametrize("grown", [(16, 40), (8, 80), (16, 80)], ids=["2x servers", "2x specialists", "2x both"])
def test_no_stage_grows_faster_than_linearly(counted, grown):
    small, large = counted[(8, 40)], counted[grown]
    assert small["FleetSpec.hosted_by"] > 0 and small["Specialist.version_entry"] > 0, small  # they are counted
    too_fast = {name: (small[name], large[name]) for name in large
                if large[name] > 2.5 * max(small[name], 1)}
    assert not too_fast, f"calls that more than doubled when the fleet doubled (small, large): {too_fast}"


def test_the_hosting_index_is_built_once_per_fleet(counted):
    for counter in counted.values():
        assert counter["FleetIndex.__init__"] <= 3, counter  # the loaded spec, and any copies the planner makes
