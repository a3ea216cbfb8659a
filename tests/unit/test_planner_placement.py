"""Replicas onto concrete GPU ids: sharing only within 1.0 utilization, types honoured."""

from __future__ import annotations

from fleetspec.catalog import gpus
from fleetspec.planner import placement
from fleetspec.spec import models as spec


def groups(*items) -> list[spec.GpuGroup]:
    return [spec.GpuGroup(**item) for item in items]


def demand(i, replicas=1, per=1, util=0.92, gpu_type=None, name=None):
    return placement.Demand(i, name or f"s{i}", replicas, per, util, gpu_type)


def place(demands, inventory):
    slots, problems = placement.inventory(inventory)
    assert problems == []
    return placement.place(demands, slots)


def test_ids_are_numbered_across_groups_unless_given():
    slots, _ = placement.inventory(groups({"type": "A100-80GB", "count": 2}, {"type": "L4", "count": 2},
                                          {"type": "T4", "count": 1, "ids": [7]}))
    assert [(s.id, s.gpu.type) for s in slots] == [(0, "A100-80GB"), (1, "A100-80GB"), (2, "L4"), (3, "L4"), (7, "T4")]


def test_tensor_parallel_group_gets_distinct_gpus_in_order():
    done, problems = place([demand(0, replicas=2, per=2)], groups({"type": "H100", "count": 4}))
    assert problems == []
    assert [a.gpu_ids for a in done] == [(0, 1), (2, 3)]


def test_gpus_are_shared_only_while_utilization_sums_to_one():
    done, problems = place([demand(0, util=0.45), demand(1, util=0.45), demand(2, util=0.2)],
                           groups({"type": "L4", "count": 2}))
    assert problems == []
    assert [a.gpu_ids for a in done] == [(0,), (0,), (1,)]


def test_not_enough_gpus_is_a_finding_with_the_count():
    done, problems = place([demand(0, replicas=3, per=2, name="big")], groups({"type": "H100", "count": 4}))
    assert len(done) == 2
    [problem] = problems
    assert problem.code == "not-enough-gpus" and problem.path == "servers[0].replicas"
    assert "replica 2 of `big` needs 2 GPU(s)" in problem.message and "lower replicas to 2" in problem.hint


def test_server_gpu_type_is_honoured_with_mixed_types():
    inventory = groups({"type": "L4", "count": 2}, {"type": "A100-80GB", "count": 1})
    done, problems = place([demand(0, gpu_type="A100-80GB"), demand(1, replicas=2, gpu_type="L4")], inventory)
    assert problems == []
    assert [(a.server_index, a.gpu_ids, a.gpu.type) for a in done] == [
        (0, (2,), "A100-80GB"), (1, (0,), "L4"), (1, (1,), "L4")]


def test_one_replica_never_mixes_gpu_types():
    done, problems = place([demand(0, per=2)], groups({"type": "L4", "count": 1}, {"type": "T4", "count": 1}))
    assert done == [] and problems[0].code == "not-enough-gpus"


def test_preference_puts_replicas_on_gpus_they_fit():
    slots, _ = placement.inventory(groups({"type": "T4", "count": 1}, {"type": "A100-80GB", "count": 1}))
    done, _ = placement.place([demand(0)], slots, prefer=lambda d, g: g.type == "A100-80GB")
    assert done[0].gpu_ids == (1,)


def test_unknown_gpu_type_is_reported_at_its_group():
    slots, problems = placement.inventory(groups({"type": "H100", "count": 1}, {"type": "Voodoo5", "count": 2}))
    assert len(slots) == 1
    assert problems[0].code == "unknown-gpu-type" and problems[0].path == "gpus[1].type"
    assert gpus.known_types()[0] in problems[0].hint
