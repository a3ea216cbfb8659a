"""The watch loop's pure helpers: which files a fleet depends on, Docker events, deferred loads, lines."""

from __future__ import annotations

import pathlib
import types

from fleetspec.drivers import base
from fleetspec.reconcile import apply as apply_mod
from fleetspec.reconcile import observed
from fleetspec.reconcile import plan as plan_mod
from fleetspec.reconcile.plan import Action, Kind
from fleetspec.spec import loading
from fleetspec.watch import backoff, lines, loop, reconciler, sources

FLEET = """\
name: demo
base_model: {id: fleetspec/tiny-test-llama, max_model_len: 2048}
gpus: [{type: sim, count: 1}]
servers:
  - name: main
    lora: {max_loras: 2, max_lora_rank: 8}
specialists:
  - name: python
    version: 1.0.0
    path: ./adapters/python/1.0.0
    rank: 8
    versions: [{version: 0.9.0, path: OLD/python-0.9}]
  - name: hub
    version: 1.0.0
    path: someorg/hub-adapter
    rank: 8
routing:
  rules:
    - hash_clusters: {num_clusters: 4, map_file: maps/clusters.yaml}
    - specialist_signals: true
"""


def loaded_fleet(tmp_path: pathlib.Path) -> types.SimpleNamespace:
    text = FLEET.replace("OLD", str(tmp_path / "old"))  # an absolute path to a directory not made yet
    (tmp_path / "fleet.yaml").write_text(text)
    return types.SimpleNamespace(fleet=loading.load_text(text, str(tmp_path / "fleet.yaml"), base_dir=tmp_path))


# --- which files wake the loop -----------------------------------------------------------------


def test_targets_are_the_fleet_file_its_map_files_and_local_adapter_directories(tmp_path):
    (tmp_path / "adapters" / "python" / "1.0.0").mkdir(parents=True)
    targets = sources.targets_for(tmp_path / "fleet.yaml", loaded_fleet(tmp_path))
    assert targets.files == {tmp_path / "fleet.yaml", tmp_path / "maps" / "clusters.yaml"}
    # The Hugging Face ids (the hub adapter, the base model) are no directories of ours.
    assert targets.trees == {tmp_path / "adapters" / "python" / "1.0.0", tmp_path / "old" / "python-0.9"}
    # Flat watches: the directories of the files (maps/ does not exist yet: its nearest existing
    # ancestor), and the nearest existing ancestor of a missing tree.
    assert targets.flat_roots() == {tmp_path}
    assert targets.deep_roots() == {tmp_path / "adapters" / "python" / "1.0.0"}


def test_before_the_file_was_ever_valid_only_the_file_itself_is_watched(tmp_path):
    targets = sources.targets_for(tmp_path / "fleet.yaml")
    assert targets == sources.Targets(frozenset({tmp_path / "fleet.yaml"}))
    assert targets.flat_roots() == {tmp_path}


def test_target_matching_follows_renames_into_place_but_ignores_neighbours(tmp_path):
    targets = sources.Targets(frozenset({tmp_path / "fleet.yaml"}), frozenset({tmp_path / "adapters" / "py"}))
    assert targets.matches(str(tmp_path / "fleet.yaml"))
    assert targets.matches(tmp_path / "adapters" / "py")
    assert targets.matches(tmp_path / "adapters" / "py" / "adapter_model.safetensors")
    assert not targets.matches(tmp_path / ".fleet.yaml.swp")
    assert not targets.matches(tmp_path / ".fleetspec" / "demo.state.json")
    assert not targets.matches(tmp_path / "adapters" / "python")  # a prefix of the name is not the tree


# --- Docker events -----------------------------------------------------------------------------


def event(action: str, **attributes) -> dict:
    return {"Type": "container", "Action": action, "id": "0123456789abcdef",
            "Actor": {"ID": "0123456789abcdef", "Attributes": {"name": "demo-main-0", **attributes}}}


def test_docker_events_that_may_need_repair_wake_the_loop_with_a_readable_reason():
    assert sources.docker_wake(event("die", exitCode="137")) == loop.Wake(
        loop.RUNTIME, "container demo-main-0 died (exit 137)")
    assert sources.docker_wake(event("oom")).detail == "container demo-main-0 ran out of memory"
    assert sources.docker_wake(event("destroy")).detail == "container demo-main-0 was removed"
    assert sources.docker_wake(event("health_status: unhealthy")).detail == "container demo-main-0 is unhealthy"


def test_docker_events_of_no_consequence_are_ignored():
    for action in ("start", "create", "attach", "exec_start: sh", "kill", "stop"):
        assert sources.docker_wake(event(action)) is None


# --- loads onto engines that do not answer -----------------------------------------------------


def container(name: str, status: str = "running") -> base.ObservedContainer:
    return base.ObservedContainer(id=f"id-{name}", name=name, image="sim", status=status, health=None,
                                  fleet="demo", server="main", replica=int(name[-1]), spec_hash="h", role="engine")


def load(target: str, adapter: str) -> Action:
    return Action(Kind.LOAD_ADAPTER, target, "declared", server="main", replica=int(target[-1]), adapter=adapter,
                  path=f"/a/{adapter}")


def test_loads_onto_a_running_engine_that_does_not_answer_wait_for_a_later_cycle():
    have = observed.ObservedState("demo", {
        ("main", 0): observed.ObservedReplica(container("demo-main-0"), "http://127.0.0.1:8000", False, None),
        ("main", 1): observed.ObservedReplica(container("demo-main-1"), "http://127.0.0.1:8001", True, {}),
    })
    planned = plan_mod.ReconcilePlan("demo", (load("main/0", "python"), load("main/1", "python")))
    deferred = reconciler.defer_unanswered_loads(planned, have)
    assert deferred.actions == (load("main/1", "python"),)
    assert deferred.notes == ("main/0 runs but does not answer yet; its adapters are loaded once it does",)


def test_loads_after_a_replace_in_the_same_plan_are_kept():
    have = observed.ObservedState("demo", {
        ("main", 0): observed.ObservedReplica(container("demo-main-0"), "http://127.0.0.1:8000", False, None),
    })
    replace = Action(Kind.REPLACE, "main/0", "its configuration changed", server="main", replica=0, container_id="x")
    planned = plan_mod.ReconcilePlan("demo", (replace, load("main/0", "python")))
    assert reconciler.defer_unanswered_loads(planned, have) is planned


# --- the cycle line ----------------------------------------------------------------------------


def test_changes_group_targets_per_adapter_and_say_when_failures_are_retried():
    ok = [apply_mod.Outcome(load(t, "python--1.1.0"), apply_mod.OK) for t in ("main/0", "main/1")]
    failed = apply_mod.Outcome(load("main/1", "sql--2.0.0"), apply_mod.FAILED,
                               "The engine refused sql--2.0.0\nrank 64 > max_lora_rank 8")
    result = apply_mod.ApplyResult((*ok, failed))
    key = backoff.key_of(failed.action)
    assert lines.changes(result, (), {key: 2.0}) == [
        "loaded python--1.1.0 on main/0, main/1",
        "FAILED to load sql--2.0.0 on main/1 (retry in 2.0 s): The engine refused sql--2.0.0",
    ]


def test_a_cycle_that_did_nothing_says_no_changes_and_lists_many_targets_briefly():
    assert lines.changes(None, (), {}) == ["no changes"]
    removed = [Action(Kind.REMOVE, f"main/{i}", "gone", container_id=str(i)) for i in range(6)]
    result = apply_mod.ApplyResult(tuple(apply_mod.Outcome(a, apply_mod.OK) for a in removed))
    assert lines.changes(result, (), {}) == ["removed main/0, main/1, main/2, main/3 +2 more"]


def test_cycle_line_counts_repeated_wakes():
    wakes = [loop.Wake(loop.FILE, "fleet.yaml changed")] * 20 + [loop.Wake(loop.RUNTIME, "container x died")]
    assert lines.cycle_line(7, wakes, "no changes", 0.0123) == (
        "cycle 7, woken by fleet.yaml changed (×20), container x died: no changes (0.01 s)")


def test_backoff_keys_share_one_key_for_every_server_action_on_a_replica():
    create = Action(Kind.CREATE, "main/0", "none", server="main", replica=0)
    replace = Action(Kind.REPLACE, "main/0", "exited", server="main", replica=0, container_id="c")
    assert backoff.key_of(create) == backoff.key_of(replace) == ("server", "main/0", "")
    assert backoff.key_of(load("main/0", "python")) == ("load", "main/0", "python")
    b = backoff.Backoff(base_s=1.0, cap_s=60.0)
    assert [b.delay(n) for n in range(0, 9)] == [0, 1, 2, 4, 8, 16, 32, 60, 60]
