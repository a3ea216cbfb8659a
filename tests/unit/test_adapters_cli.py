"""`fleetspec adapters inspect` and `fleetspec adapters check`, run through the real CLI entry point."""

from __future__ import annotations

import json

import adapter_factory

from fleetspec.cli import app


def run(capsys, *argv) -> tuple[int, str, str]:
    code = app.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_inspect_human(tmp_path, capsys):
    path = adapter_factory.write_adapter(tmp_path / "sql", rank=8)
    code, out, _ = run(capsys, "adapters", "inspect", str(path))
    assert code == 0
    lines = out.splitlines()
    assert lines[0] == f"Adapter       {path}"
    assert "PEFT type     LORA (r 8, lora_alpha 16)" in lines
    assert "Modules       k_proj, o_proj, q_proj, v_proj (8 modules over 2 layers)" in lines
    assert "Tensors       16 tensors, BF16, 14,336 bytes of data" in lines


def test_inspect_json_and_exit_code_for_a_refused_adapter(tmp_path, capsys):
    path = adapter_factory.write_adapter(tmp_path / "dora", config={"use_dora": True})
    code, out, _ = run(capsys, "adapters", "inspect", str(path), "--format", "json")
    assert code == 1
    data = json.loads(out)
    assert data["adapter"]["ranks"] == [8]
    assert [d["code"] for d in data["diagnostics"]] == ["adapter-dora"]


def test_inspect_a_missing_directory(tmp_path, capsys):
    code, _, err = run(capsys, "adapters", "inspect", str(tmp_path / "nope"))
    assert code == 1
    assert f"the adapter directory {tmp_path / 'nope'} does not exist" in err


FLEET = """\
name: tiny
base_model:
  id: fleetspec/tiny-llama
  architecture: {model_type: llama, hidden_size: 64, intermediate_size: 128, num_hidden_layers: 2,
                 num_attention_heads: 4, num_key_value_heads: 2, head_dim: 16, vocab_size: 256}
gpus: 1x H100-80GB
servers:
  - name: main
    lora: {max_loras: 2, max_lora_rank: 16}
runtime:
  adapter_roots: [adapters]
specialists:
"""


def write_fleet(tmp_path, specialists: str) -> str:
    file = tmp_path / "fleet.yaml"
    file.write_text(FLEET + specialists)
    return str(file)


def test_check_a_fleet(tmp_path, capsys):
    adapter_factory.write_adapter(tmp_path / "adapters" / "sql" / "v1", rank=8)
    adapter_factory.write_adapter(tmp_path / "adapters" / "sql" / "v2", rank=32)
    adapter_factory.write_adapter(tmp_path / "elsewhere", rank=8)
    file = write_fleet(tmp_path, """\
  - name: sql
    version: "1"
    path: adapters/sql/v1
    versions:
      - version: "2"
        path: adapters/sql/v2
  - name: py
    version: "1"
    path: adapters/py/v1
  - name: out
    version: "1"
    path: adapters/../elsewhere
""")
    code, out, _ = run(capsys, "adapters", "check", file, "--format", "json")
    assert code == 1
    data = json.loads(out)
    assert [(a["specialist"], a["version"], a["ranks"]) for a in data["adapters"]] == [
        ("sql", "1", [8]), ("sql", "2", [32])]
    found = [(d["code"], d["path"], d["line"], d["column"]) for d in data["diagnostics"]]
    assert found == [
        ("rank-above-max-lora-rank", "specialists[0].versions[0].path", 18, 9),
        ("adapter-missing", "specialists[1].path", 21, 5),
        ("adapter-path-escapes-root", "specialists[2].path", 24, 5),
    ]


def test_check_human_output_and_success(tmp_path, capsys):
    adapter_factory.write_adapter(tmp_path / "adapters" / "sql", rank=16)
    file = write_fleet(tmp_path, "  - {name: sql, version: '1', path: adapters/sql}\n")
    code, out, err = run(capsys, "adapters", "check", file)
    assert code == 0
    assert out.splitlines()[0].startswith("sql@1: rank 16, k_proj, o_proj, q_proj, v_proj, 30.0 KiB (")
    assert out.splitlines()[-1] == f"{file}: 1 adapter(s) read, no problems."
    assert err == ""
