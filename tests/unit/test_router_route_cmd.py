"""`fleetspec route`: the decision, the rule and the runner-up, in human and JSON form."""

from __future__ import annotations

import json
import pathlib

from fleetspec.cli import app

ROOT = pathlib.Path(__file__).resolve().parents[2]


def test_route_human(capsys):
    code = app.main(["route", str(ROOT / "examples/large-mixed-gpus.yaml"), "summarize analysis.ipynb"])
    out = capsys.readouterr().out.splitlines()
    assert code == 0
    assert out[0] == "python 3.0.2, served as python--3.0.2"
    assert out[1] == "  rule:      notebooks (routing.rules[4], extensions, matched .ipynb)"
    assert out[2] == "  runner-up: summarize via summaries, matched summarize"
    assert out[3].startswith("  decided in ")


def test_route_split_and_key(capsys):
    code = app.main(["route", str(ROOT / "examples/001-hi-moe-awq.yaml"), "why does pytest fail", "--key", "user-7"])
    out = capsys.readouterr().out.splitlines()
    assert code == 0
    assert out[0] == "python-lora 1.2.0, served as python-lora--1.2.0"
    assert out[2] == "  split:     bucket 29 of 0-99 (0-89 → 1.2.0, 90-99 → 1.1.0)"


def test_route_json_with_metadata_extension(capsys):
    code = app.main(["route", str(ROOT / "fleet.yaml"), "what is wrong", "--ext", ".sh", "--format", "json"])
    data = json.loads(capsys.readouterr().out)
    assert code == 0
    assert (data["specialist"], data["rule"]["name"], data["matched"]) == ("shell", "signals", [".sh"])


def test_route_fallback_and_unknown_model(capsys):
    assert app.main(["route", str(ROOT / "examples/000-ensemble-hash-clusters.yaml"), "hello"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "base model, served as TinyLlama/TinyLlama-1.1B-Chat-v1.0 (fallback: cluster c81 has no specialist mapped)"
    assert out[2] == "  cluster:   c81"
    assert app.main(["route", str(ROOT / "fleet.yaml"), "x", "--model", "gpt-4"]) == 1
    assert capsys.readouterr().out.startswith("rejected: the fleet serves no model named `gpt-4`")


def test_route_refuses_an_invalid_fleet(tmp_path, capsys):
    broken = tmp_path / "fleet.yaml"
    broken.write_text((ROOT / "fleet.yaml").read_text().replace("to: sql\n", "to: sqll\n"))
    assert app.main(["route", str(broken), "x"]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "this rule routes to `sqll`, which is not a declared specialist" in captured.err
