"""`fleetspec plan FILE`: exit codes, JSON, markdown and the human table."""

from __future__ import annotations

import json
import pathlib

import yaml

from fleetspec.cli import app

FLEET = {
    "name": "chat",
    "base_model": {"id": "meta-llama/Llama-3.1-8B-Instruct", "max_model_len": 8192},
    "gpus": [{"type": "L4", "count": 2}],
    "servers": [{"name": "chat", "replicas": 2, "lora": {"max_loras": 4, "max_lora_rank": 16}}],
    "specialists": [{"name": "sql", "version": "1.0.0", "path": "/adapters/sql", "rank": 16}],
}


def write(tmp_path, data) -> str:
    path = tmp_path / "fleet.yaml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return str(path)


def test_json_output_and_exit_zero_when_it_fits(tmp_path, capsys):
    code = app.main(["plan", write(tmp_path, FLEET), "--format", "json"])
    out = json.loads(capsys.readouterr().out)
    assert code == 0 and out["fits"] is True
    assert [r["gpus"] for r in out["servers"][0]["replicas"]] == [[0], [1]]
    assert out["servers"][0]["replicas"][0]["per_gpu"]["total_gib"] == 22.03


def test_does_not_fit_exits_one_with_a_located_finding(tmp_path, capsys):
    data = dict(FLEET, base_model={"id": "meta-llama/Llama-3.1-8B-Instruct", "max_model_len": 131072})
    path = write(tmp_path, data)
    code = app.main(["plan", path, "--format", "json", "--detailed-exitcode"])
    out = json.loads(capsys.readouterr().out)
    assert code == 1 and out["fits"] is False
    finding = next(f for f in out["findings"] if f["code"] == "kv-cache-too-small")
    lines = pathlib.Path(path).read_text(encoding="utf-8").splitlines()
    line = next(n for n, text in enumerate(lines, 1) if "max_model_len" in text)
    assert finding["path"] == "base_model.max_model_len" and finding["line"] == line


def test_markdown_has_a_budget_table(tmp_path, capsys):
    assert app.main(["plan", write(tmp_path, FLEET), "--format", "markdown", "--memory-only"]) == 0
    text = capsys.readouterr().out
    assert "| Replica | GPUs | Type | Total | Budget | Weights | LoRA |" in text
    assert "| 0 | 0 | L4 | 22.03 |" in text
    assert text.rstrip().endswith("host RAM for CPU adapter caches 0.16 GiB.")


def test_human_output_shows_the_table_and_a_summary(tmp_path, capsys):
    assert app.main(["plan", write(tmp_path, FLEET)]) == 0
    text = capsys.readouterr().out
    assert "server chat: tp 1 x pp 1, gpu_memory_utilization 0.92" in text
    assert "Fleet chat fits: 1 server(s), 2 replica(s) on 2 GPU(s)" in text


def test_broken_file_is_reported_not_planned(tmp_path, capsys):
    path = tmp_path / "fleet.yaml"
    path.write_text("name: x\nbase_model: {id: foo}\nservers: []\n", encoding="utf-8")
    assert app.main(["plan", str(path)]) == 1
