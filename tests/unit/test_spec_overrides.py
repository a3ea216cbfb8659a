"""Command-line overrides (`--runtime`, `--engine`, `--adapters-in`, `--ports-from`) and stand-in
adapters written where `--adapters-in` reads them."""

from __future__ import annotations

import pathlib
import textwrap

import pytest

from fleetspec import errors
from fleetspec.adapters import inspect as adapter_inspect
from fleetspec.adapters import standins, survey
from fleetspec.spec import derived, loading, overrides

FLEET = textwrap.dedent("""\
    name: away
    base_model: {id: TinyLlama/TinyLlama-1.1B-Chat-v1.0, max_model_len: 2048}
    gpus: "1x T4"
    servers:
      - name: main
        port: 9000
        replicas: 2
        lora: {max_loras: 2, max_lora_rank: 32, target_modules: [q_proj, v_proj]}
    specialists:
      - name: a
        version: "1"
        path: /loras/a
        rank: 8
        versions: [{version: "0", path: /loras/a-old}]
      - {name: b, version: "1", path: ./local/b}
    runtime: {target: docker, engine: vllm, adapter_roots: [/loras, ./local]}
    """)


@pytest.fixture
def loaded(tmp_path) -> loading.LoadedFleet:
    path = tmp_path / "fleet.yaml"
    path.write_text(FLEET, encoding="utf-8")
    return loading.load_path(path)


def test_no_overrides_leave_the_fleet_as_loaded(loaded):
    assert overrides.apply(loaded, overrides.Overrides()) is loaded


def test_runtime_engine_and_ports_are_replaced(loaded):
    changed = overrides.apply(loaded, overrides.Overrides("local", "sim", ports_from=23000)).spec
    assert (changed.runtime.target, changed.runtime.engine) == ("local", "sim")
    assert changed.runtime.router.port == 23000
    assert derived.replica_ports(changed) == {("main", 0): 23001, ("main", 1): 23002}
    assert loaded.spec.runtime.target == "docker"  # the loaded fleet itself is untouched


def test_adapter_paths_and_roots_move_below_the_directory(loaded, tmp_path):
    moved = overrides.apply(loaded, overrides.Overrides(adapters_in=tmp_path / "si")).spec
    si = tmp_path / "si"
    assert moved.runtime.adapter_roots == [str(si / "loras"), str(si / str(tmp_path).lstrip("/") / "local")]
    assert moved.specialists[0].path == str(si / "loras" / "a")
    assert moved.specialists[0].versions[0].path == str(si / "loras" / "a-old")
    assert moved.specialists[1].path == str(si / str(tmp_path).lstrip("/") / "local" / "b")


def test_describe_gives_the_flags_back():
    described = overrides.Overrides("local", "sim", pathlib.Path("/tmp/x"), 9000).describe()
    assert described == "--runtime local --engine sim --adapters-in /tmp/x --ports-from 9000"


def test_stand_ins_pass_every_adapter_check_with_the_declared_ranks(loaded, tmp_path):
    written = standins.write(loaded, tmp_path / "si")
    assert [(w.specialist, w.version, w.rank) for w in written] == [("a", "1", 8), ("a", "0", 8), ("b", "1", 32)]
    # What the server gives slots to: q_proj and v_proj make vLLM wrap the packed qkv_proj, so k_proj too.
    assert all(w.modules == ("q_proj", "k_proj", "v_proj") for w in written)
    moved = overrides.apply(loaded, overrides.Overrides(adapters_in=tmp_path / "si"))
    reviewed = survey.review(moved)
    assert [d for d in reviewed.diagnostics if d.is_error or d.severity.value == "warning"] == []
    info = adapter_inspect.inspect(written[0].path)
    assert info.max_rank == 8 and len(info.modules) == 3 * 22  # q, k, v on each of TinyLlama's 22 layers
    disk = (written[0].path / "adapter_model.safetensors").stat()
    assert disk.st_blocks * 512 < disk.st_size  # sparse: zeros cost no disk


def test_stand_ins_never_overwrite_an_adapter_unasked(loaded, tmp_path):
    standins.write(loaded, tmp_path / "si")
    with pytest.raises(errors.FleetspecError, match="already holds an adapter"):
        standins.write(loaded, tmp_path / "si")
    assert len(standins.write(loaded, tmp_path / "si", overwrite=True)) == 3
