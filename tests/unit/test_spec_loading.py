"""Every class of mistake in a fleet file yields a located diagnostic with a useful hint."""

from __future__ import annotations

import textwrap

import pytest

from fleetspec import errors
from fleetspec.spec import loading, yaml_source

VALID = """\
name: demo
base_model:
  id: TinyLlama/TinyLlama-1.1B-Chat-v1.0
gpus: 2x L4
servers:
  - name: main
    lora: {max_loras: 3, max_lora_rank: 64}
specialists:
  - name: code
    version: "2.0"
    path: /adapters/code/2.0
    rank: 64
"""


def problems(text: str) -> list[errors.Diagnostic]:
    with pytest.raises(errors.SpecError) as raised:
        loading.load_text(textwrap.dedent(text), "fleet.yaml")
    return raised.value.diagnostics


def only(text: str) -> errors.Diagnostic:
    found = problems(text)
    assert len(found) == 1, [d.render() for d in found]
    return found[0]


def where(diagnostic: errors.Diagnostic) -> tuple[int, int]:
    return diagnostic.location.line, diagnostic.location.column


def test_a_valid_file_loads_with_defaults_and_shorthands():
    fleet = loading.load_text(VALID, "fleet.yaml")
    assert fleet.spec.gpus[0].type == "L4" and fleet.spec.gpus[0].count == 2
    assert fleet.spec.runtime.engine == "sim"
    assert fleet.locate(("servers", 0, "lora", "max_lora_rank")).line == 7


@pytest.mark.parametrize(
    ("text", "line", "column"),
    [
        ("name: demo\nbase_model: {id: x\n", 3, 1),  # unclosed flow mapping: reported where parsing failed
        ("name: demo\n  bad: indent\n", 2, 6),
        ("name: [a, b\n", 2, 1),
    ],
)
def test_yaml_syntax_errors_point_at_the_line(text, line, column):
    diagnostic = only(text)
    assert diagnostic.code == "yaml-syntax"
    assert where(diagnostic) == (line, column)
    assert diagnostic.hint


def test_tabs_get_a_tab_specific_hint():
    diagnostic = only("name: demo\nbase_model:\n\tid: x\n")
    assert diagnostic.code == "yaml-syntax"
    assert "tabs" in diagnostic.hint


def test_unknown_key_suggests_the_field_it_resembles():
    diagnostic = only(VALID.replace("    lora:", "    tensor_paralel_size: 2\n    lora:"))
    assert diagnostic.code == "unknown-key"
    assert diagnostic.path == "servers[0].tensor_paralel_size"
    assert where(diagnostic) == (7, 5)
    assert diagnostic.hint == "did you mean `tensor_parallel_size`?"


def test_unknown_key_without_a_close_match_lists_the_allowed_keys():
    diagnostic = only(VALID + "routing:\n  zzz: 1\n")
    assert diagnostic.path == "routing.zzz"
    assert diagnostic.hint.startswith("allowed keys here: ")
    assert "rules" in diagnostic.hint


def test_unknown_key_inside_a_tagged_rule_names_the_rule_fields():
    diagnostic = only(VALID + "routing:\n  rules:\n    - keywords: [py]\n      too: code\n")
    assert diagnostic.path == "routing.rules[0].too"
    assert where(diagnostic) == (16, 7)
    assert diagnostic.hint == "did you mean `to`?"


def test_missing_required_key_points_at_the_enclosing_mapping():
    diagnostic = only(VALID.replace("    path: /adapters/code/2.0\n", ""))
    assert diagnostic.code == "missing-key"
    assert diagnostic.path == "specialists[0].path"
    assert where(diagnostic) == (9, 5)  # the list item that lacks it
    assert diagnostic.hint == "add `path:` here"


def test_wrong_type_reports_expected_and_given():
    diagnostic = only(VALID.replace("max_loras: 3", "max_loras: three"))
    assert diagnostic.code == "wrong-type"
    assert diagnostic.path == "servers[0].lora.max_loras"
    assert diagnostic.message == "expected a whole number, got `'three'`"


def test_a_number_where_text_is_expected_suggests_quotes_with_the_original_spelling():
    diagnostic = only(VALID.replace('version: "2.0"', "version: 1.10"))
    assert diagnostic.path == "specialists[0].version"
    assert diagnostic.hint == 'YAML reads 1.10 as a float; put it in quotes: "1.10"'


def test_bad_enum_value_suggests_the_nearest_choice():
    diagnostic = only(VALID.replace("  id: TinyLlama/TinyLlama-1.1B-Chat-v1.0",
                                    "  id: TinyLlama/TinyLlama-1.1B-Chat-v1.0\n  quantization: awk"))
    assert diagnostic.code == "bad-value"
    assert diagnostic.path == "base_model.quantization"
    assert diagnostic.hint == "did you mean `awq`?"


def test_out_of_range_number_states_the_bound():
    diagnostic = only(VALID.replace("  - name: main\n", "  - name: main\n    gpu_memory_utilization: 1.5\n"))
    assert diagnostic.code == "out-of-range"
    assert diagnostic.message == "gpu_memory_utilization must be at most 1.0, got `1.5`"


def test_max_lora_rank_outside_vllm_choices_suggests_the_next_allowed_rank():
    diagnostic = only(VALID.replace("max_lora_rank: 64", "max_lora_rank: 48"))
    assert diagnostic.path == "servers[0].lora.max_lora_rank"
    assert where(diagnostic) == (7, 26)
    assert diagnostic.hint == "use 64, the smallest allowed value that holds rank 48"


def test_duplicate_keys_are_errors_naming_the_first_occurrence():
    diagnostic = only(VALID.replace("name: demo\n", "name: demo\nname: other\n", 1))
    assert diagnostic.code == "duplicate-key"
    assert where(diagnostic) == (2, 1)
    assert "first on line 1" in diagnostic.message


def test_all_errors_of_a_file_are_reported_at_once_in_file_order():
    text = VALID.replace("max_loras: 3", "max_loras: 0").replace("rank: 64\n", "rank: 64\n    colour: red\n")
    found = problems(text)
    assert [d.path for d in found] == ["servers[0].lora.max_loras", "specialists[0].colour"]


def test_yaml_11_booleans_and_dates_stay_text():
    fleet = loading.load_text(VALID + "    keywords: [no, on, yes]\n    versions:\n      - {version: 2025-06-06, path: /a/b}\n")
    specialist = fleet.spec.specialists[0]
    assert specialist.keywords == ["no", "on", "yes"]
    assert specialist.versions[0].version == "2025-06-06"


def test_custom_and_python_tags_are_refused():
    diagnostic = only(VALID.replace("name: demo", "name: !!python/object:os.system demo"))
    assert diagnostic.code == "yaml-tag"
    assert where(diagnostic) == (1, 7)


def test_alias_bomb_is_refused_by_its_alias_expansion():
    bomb = ["a: &a [x, x, x, x, x, x, x, x, x, x]"]
    for level in range(1, 8):
        prev = chr(ord("a") + level - 1)
        name = chr(ord("a") + level)
        bomb.append(f"{name}: &{name} [*{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}]")
    diagnostic = only("\n".join(bomb) + "\n")
    assert diagnostic.code == "alias-expansion-too-large"


def test_oversized_document_is_refused_before_parsing():
    diagnostic = only("#" * (yaml_source.MAX_DOCUMENT_BYTES + 10))
    assert diagnostic.code == "document-too-large"


def test_oversized_file_is_refused_without_reading_it(tmp_path):
    big = tmp_path / "fleet.yaml"
    with big.open("wb") as handle:
        handle.truncate(yaml_source.MAX_DOCUMENT_BYTES * 4)
    with pytest.raises(errors.SpecError) as raised:
        loading.load_path(big)
    assert raised.value.diagnostics[0].code == "document-too-large"


@pytest.mark.parametrize(("text", "code"), [("", "empty-document"), ("- a\n- b\n", "not-a-mapping"),
                                            ("a: 1\n---\nb: 2\n", "multiple-documents")])
def test_documents_that_are_not_one_mapping(text, code):
    assert only(text).code == code


def test_merge_keys_share_settings_between_servers():
    text = VALID.replace("servers:\n  - name: main\n", "defaults: &d {replicas: 2}\nservers:\n  - name: main\n    <<: *d\n")
    diagnostic = only(text)  # `defaults` is not a fleet key, but the merge itself worked
    assert diagnostic.path == "defaults"
    fixed = text.replace("defaults: &d {replicas: 2}\n", "").replace("    <<: *d\n", "    <<: {replicas: 2}\n")
    assert loading.load_text(fixed).spec.servers[0].replicas == 2


def test_secret_references_are_kept_verbatim():
    fleet = loading.load_text(VALID.replace("  - name: main\n", "  - name: main\n    env: {HF_TOKEN: '${HF_TOKEN}'}\n"))
    assert fleet.spec.servers[0].env == {"HF_TOKEN": "${HF_TOKEN}"}


def test_missing_file_is_a_diagnostic(tmp_path):
    with pytest.raises(errors.SpecError) as raised:
        loading.load_path(tmp_path / "nope.yaml")
    assert raised.value.diagnostics[0].code == "file-not-found"


def test_local_base_model_reads_config_json(tmp_path):
    model = tmp_path / "models" / "tiny"
    model.mkdir(parents=True)
    (model / "config.json").write_text(
        '{"model_type": "llama", "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,'
        ' "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 1000, "rope_theta": 10000}'
    )
    fleet_file = tmp_path / "fleet.yaml"
    fleet_file.write_text(VALID.replace("id: TinyLlama/TinyLlama-1.1B-Chat-v1.0", "id: ./models/tiny"))
    architecture = loading.load_path(fleet_file).spec.base_model.architecture
    assert (architecture.hidden_size, architecture.kv_heads, architecture.attention_head_dim) == (64, 2, 16)


def test_local_base_model_without_config_json_is_located(tmp_path):
    fleet_file = tmp_path / "fleet.yaml"
    fleet_file.write_text(VALID.replace("id: TinyLlama/TinyLlama-1.1B-Chat-v1.0", "id: ./missing"))
    with pytest.raises(errors.SpecError) as raised:
        loading.load_path(fleet_file)
    diagnostic = raised.value.diagnostics[0]
    assert (diagnostic.code, diagnostic.path, diagnostic.location.line) == ("local-model-config", "base_model.id", 3)
