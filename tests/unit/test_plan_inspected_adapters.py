"""`fleetspec plan` reads adapters that are on this machine: real ranks and sizes beat declared ones."""

from __future__ import annotations

import json
import sys

import pytest

from fleetspec.cli import app
from fleetspec.spec import models

sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parents[1]))
import adapter_factory  # noqa: E402

# The catalog's fleetspec/tiny-test-llama: hidden 64, intermediate 256, 2 layers, vocab 1024.
TINY = models.Architecture(model_type="llama", architectures=["LlamaForCausalLM"], hidden_size=64,
                           intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
                           num_key_value_heads=2, vocab_size=1024)

FLEET = """\
name: inspect
base_model: {{id: fleetspec/tiny-test-llama, max_model_len: 1024}}
gpus: [{{type: sim, count: 1}}]
servers:
  - name: main
    lora: {{max_loras: 2, max_cpu_loras: 4, max_lora_rank: {max_rank}}}
specialists:
  - name: code
    version: "1"
    path: ./adapters/code
runtime: {{adapter_roots: [./adapters]}}
"""


def plan(tmp_path, capsys, max_rank: int, rank: int) -> tuple[int, dict]:
    adapter_factory.write_adapter(tmp_path / "adapters" / "code", TINY, rank=rank,
                                  base_model="fleetspec/tiny-test-llama")
    path = tmp_path / "fleet.yaml"
    path.write_text(FLEET.format(max_rank=max_rank))
    code = app.main(["plan", str(path), "--format", "json", "--memory-only"])
    return code, json.loads(capsys.readouterr().out)


def test_an_adapter_rank_above_max_lora_rank_fails_the_plan_before_deploy(tmp_path, capsys):
    code, out = plan(tmp_path, capsys, max_rank=8, rank=16)  # the YAML declares no rank at all
    assert code == 1
    finding = next(f for f in out["findings"] if f["severity"] == "error")
    assert finding["path"] == "specialists[0].path"
    assert "LoRA rank 16 is greater than max_lora_rank 8" in finding["message"]


@pytest.mark.parametrize("rank", [4, 8])
def test_the_cpu_cache_is_sized_from_the_real_tensors(tmp_path, capsys, rank):
    code, out = plan(tmp_path, capsys, max_rank=8, rank=rank)
    assert code == 0
    # q,k,v,o on 2 layers: rank × (in + out) = rank × ((64+64) + (64+32) + (64+32) + (64+64)) × 2 layers,
    # 2 bytes each (bf16): one adapter, and the cache holds it once.
    expected = rank * (128 + 96 + 96 + 128) * 2 * 2
    lora = out["servers"][0]["lora"]
    assert lora["largest_adapter_bytes"] == expected
    assert lora["cpu_cache_bytes_per_replica"] == expected
