"""`fleetspec plan` as a pull-request dry run: changes against another file, exit codes, JSON."""

from __future__ import annotations

import copy
import json

import yaml

from fleetspec.cli import app

FLEET = {
    "name": "chat",
    "base_model": {"id": "meta-llama/Llama-3.1-8B-Instruct", "max_model_len": 8192},
    "gpus": [{"type": "L4", "count": 2}],
    "servers": [{"name": "chat", "replicas": 2, "lora": {"max_loras": 4, "max_lora_rank": 16}}],
    "specialists": [{"name": "sql", "version": "1.0.0", "path": "/adapters/sql/1.0.0", "rank": 16}],
    "runtime": {"target": "docker", "engine": "vllm"},
}


def write(tmp_path, name, data) -> str:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return str(path)


def plan_json(capsys, *args) -> tuple[int, dict]:
    code = app.main(["plan", *args, "--format", "json", "--detailed-exitcode"])
    return code, json.loads(capsys.readouterr().out)


def test_same_file_against_itself_has_no_changes(tmp_path, capsys):
    old = write(tmp_path, "old.yaml", FLEET)
    code, out = plan_json(capsys, old, "--against", old)
    assert code == 0
    assert out["reconcile"]["actions"] == [] and out["reconcile"]["changes"] is False


def test_an_adapter_version_bump_is_hot_and_exits_two(tmp_path, capsys):
    new_data = copy.deepcopy(FLEET)
    new_data["specialists"][0].update(version="1.1.0", path="/adapters/sql/1.1.0")
    old, new = write(tmp_path, "old.yaml", FLEET), write(tmp_path, "new.yaml", new_data)
    code, out = plan_json(capsys, new, "--against", old)
    assert code == 2
    actions = [(a["kind"], a["target"], a.get("adapter"), a["disruption"]) for a in out["reconcile"]["actions"]]
    assert actions == [
        ("load-adapter", "chat/0", "sql--1.1.0", "hot"), ("load-adapter", "chat/1", "sql--1.1.0", "hot"),
        ("update-router", "router", None, "hot"),
        ("unload-adapter", "chat/0", "sql--1.0.0", "hot"), ("unload-adapter", "chat/1", "sql--1.0.0", "hot"),
    ]
    assert out["reconcile"]["restarts"] == 0


def test_an_engine_flag_change_restarts_every_replica_and_says_which_flag(tmp_path, capsys):
    new_data = copy.deepcopy(FLEET)
    new_data["base_model"]["max_model_len"] = 4096
    old, new = write(tmp_path, "old.yaml", FLEET), write(tmp_path, "new.yaml", new_data)
    code, out = plan_json(capsys, new, "--against", old)
    replaces = [a for a in out["reconcile"]["actions"] if a["kind"] == "replace"]
    assert code == 2 and out["reconcile"]["restarts"] == 2
    assert [a["changes"] for a in replaces] == [["--max-model-len 8192 → 4096"]] * 2


def test_markdown_lists_changes_for_reviewers(tmp_path, capsys):
    new_data = copy.deepcopy(FLEET)
    new_data["servers"][0]["replicas"] = 1
    old, new = write(tmp_path, "old.yaml", FLEET), write(tmp_path, "new.yaml", new_data)
    assert app.main(["plan", new, "--against", old, "--format", "markdown"]) == 0
    text = capsys.readouterr().out
    assert "| `-` | remove | `chat/1` |  | restart | server chat now has fewer replicas |" in text
    assert "**Plan: 0 to create, 0 to replace, 1 to remove" in text


def test_an_invalid_against_file_is_a_clear_error(tmp_path, capsys):
    broken = copy.deepcopy(FLEET)
    broken["servers"][0]["lora"]["max_loras"] = 0
    new, old = write(tmp_path, "new.yaml", FLEET), write(tmp_path, "old.yaml", broken)
    assert app.main(["plan", new, "--against", old]) == 1
    assert "is not a valid, fitting fleet file" in capsys.readouterr().err


def test_relative_paths_of_a_file_checked_out_elsewhere_mean_the_same(tmp_path, capsys):
    relative = copy.deepcopy(FLEET)
    relative["specialists"][0]["path"] = "./adapters/sql/1.0.0"
    (tmp_path / "base").mkdir()
    new, old = write(tmp_path, "new.yaml", relative), write(tmp_path / "base", "fleet.yaml", relative)
    code, out = plan_json(capsys, new, "--against", old)
    assert code == 0 and out["reconcile"]["actions"] == []


def test_a_missing_against_file_is_a_clear_error(tmp_path, capsys):
    assert app.main(["plan", write(tmp_path, "new.yaml", FLEET), "--against", str(tmp_path / "nope.yaml")]) == 1
    assert "nope.yaml" in capsys.readouterr().err


def test_a_usage_error_exits_one_never_two(capsys):
    # 2 means "changes pending" to CI scripts using --detailed-exitcode; a typo must not look like that.
    assert app.main(["plan", "--detailed-exitcode", "--bogus", "fleet.yaml"]) == 1
    assert "No such option" in capsys.readouterr().err
