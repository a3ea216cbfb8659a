"""No adapter_config.json and no weights header, however broken, makes inspection or checks crash."""

from __future__ import annotations

import json
import pathlib
import tempfile

import adapter_factory
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fleetspec.adapters import checks, engine
from fleetspec.adapters import inspect as adapter_inspect
from fleetspec.errors import Diagnostic
from fleetspec.spec import models

JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-5, 600) | st.floats(allow_nan=False) | st.text(max_size=6),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=6,
)
KEYS = ["peft_type", "r", "lora_alpha", "target_modules", "rank_pattern", "alpha_pattern", "modules_to_save",
        "bias", "use_dora", "lora_bias", "init_lora_weights", "use_rslora", "layer_replication", "use_qalora",
        "base_model_name_or_path", "alora_invocation_tokens", "use_bdlora"]
TARGET = checks.Target("fleetspec/tiny-llama", adapter_factory.TINY_LLAMA, True,
                       ((0, models.Server(name="main", lora=models.LoraLimits(max_lora_rank=16))),))


def exercise(directory: pathlib.Path) -> None:
    info = adapter_inspect.inspect(directory)
    found = checks.check_adapter(info, TARGET, ("specialists", 0, "path"))
    assert all(isinstance(d, Diagnostic) and d.message for d in found)
    message = engine.engine_load_error(info, 16, adapter_factory.TINY_LLAMA, embedding_lora=True)
    assert message is None or message.startswith(("Call to add_lora method failed: ", "Loading lora"))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(st.sampled_from(KEYS), JSON, max_size=8))
def test_any_config_values(overrides):
    with tempfile.TemporaryDirectory() as tmp:
        directory = adapter_factory.write_adapter(pathlib.Path(tmp) / "a")
        document = json.loads((directory / "adapter_config.json").read_text())
        document.update(overrides)
        (directory / "adapter_config.json").write_text(json.dumps(document))
        exercise(directory)


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(st.text(max_size=40), st.fixed_dictionaries({
    "dtype": st.sampled_from(["F16", "BF16", "F32", "I8"]),
    "shape": st.lists(st.integers(0, 300), max_size=3),
}), max_size=5))
def test_any_tensor_table(tensors):
    with tempfile.TemporaryDirectory() as tmp:
        table = {name: (spec["dtype"], spec["shape"]) for name, spec in tensors.items()}
        directory = adapter_factory.write_adapter(pathlib.Path(tmp) / "a", tensors=table)
        exercise(directory)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.sampled_from([
    "base_model.model.model.layers.{i}.self_attn.{m}.lora_A.weight",
    "base_model.model.model.layers.{i}.self_attn.{m}.lora_B.weight",
    "base_model.model.model.layers.{i}.mlp.{m}.lora_A.weight",
    "base_model.model.model.embed_tokens.lora_embedding_A",
    "base_model.model.lm_head.lora_B.weight",
]), max_size=6), st.sampled_from(["q_proj", "down_proj", "gate", "experts"]), st.integers(0, 5),
    st.lists(st.integers(1, 300), min_size=2, max_size=2))
def test_plausible_names_with_any_shapes(names, module, layer, shape):
    with tempfile.TemporaryDirectory() as tmp:
        table = {name.format(i=layer, m=module): ("BF16", shape) for name in names}
        exercise(adapter_factory.write_adapter(pathlib.Path(tmp) / "a", tensors=table))
