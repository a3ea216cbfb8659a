"""Fleet files are read by YAML 1.2's core schema, not by PyYAML's YAML 1.1 resolver.

The cases are where the two disagree: 1.1 reads `1e3` and `0o17` as text, `017` as octal, `1_000` as a
number, and `yes`/`on`/`off` as booleans; 1.2 reads them as 1000.0, 15, 17, text and text.
"""

from __future__ import annotations

import math
import textwrap

import pytest
from test_spec_loading import VALID  # noqa: E402  (the same small valid fleet)

from fleetspec import errors
from fleetspec.spec import loading, yaml_source


def value(text: str):
    data, _ = yaml_source.parse(f"v: {text}\n", "f.yaml")
    return data["v"]


@pytest.mark.parametrize(("text", "expected"), [
    # numbers YAML 1.1 misses
    ("1e3", 1000.0), ("1E3", 1000.0), ("-1.5e-3", -0.0015), ("+2e+2", 200.0), (".5", 0.5), ("1.", 1.0),
    ("0o17", 15), ("0x1F", 31), ("0xff", 255),
    # numbers YAML 1.1 reads differently
    ("017", 17), ("-017", -17), ("+12", 12), ("0", 0), ("-0", 0),
    # YAML 1.1 numbers that are text in 1.2
    ("1_000", "1_000"), ("0b101", "0b101"), ("-0x1F", "-0x1F"), ("+0o17", "+0o17"), ("0O17", "0O17"),
    ("0o18", "0o18"), ("12:30", "12:30"), ("1e", "1e"), ("e3", "e3"), ("1.2.3", "1.2.3"),
    # booleans and null: exactly the core forms
    ("true", True), ("True", True), ("TRUE", True), ("false", False), ("FALSE", False),
    ("yes", "yes"), ("no", "no"), ("on", "on"), ("off", "off"), ("y", "y"), ("n", "n"), ("tRUE", "tRUE"),
    ("null", None), ("Null", None), ("NULL", None), ("~", None), ("", None), ("nULL", "nULL"),
    # dates are text (no timestamp type in the core schema)
    ("2025-06-06", "2025-06-06"),
    # special floats: the spec's spellings only
    (".inf", math.inf), ("+.inf", math.inf), ("-.Inf", -math.inf), (".INF", math.inf), (".iNf", ".iNf"),
    (".NaN", "nan"), (".nan", "nan"), (".NAN", "nan"), (".nAn", ".nAn"), ("-.nan", "-.nan"),
])
def test_plain_scalars_resolve_by_the_core_schema(text, expected):
    got = value(text)
    if expected == "nan":
        assert isinstance(got, float) and math.isnan(got)
        return
    assert got == expected
    assert type(got) is type(expected)  # 1 is not True, 1000.0 is a float, 15 an int


@pytest.mark.parametrize(("text", "expected"), [
    ('"1e3"', "1e3"), ("'true'", "true"), ('"017"', "017"), ("!!str 1e3", "1e3"), ("!!str true", "true"),
    ("!!str ~", "~"), ("|\n  0o17", "0o17\n"),
    ("!!int 017", 17), ('!!int "0x1F"', 31), ("!!float 1", 1.0), ("!!float 1e3", 1000.0),
    ("!!bool false", False), ("!!null null", None),
])
def test_quotes_and_explicit_tags_decide_the_type(text, expected):
    got = value(text)
    assert got == expected and type(got) is type(expected)


@pytest.mark.parametrize("text", ["!!int yes", "!!int true", "!!int 1.5", "!!bool yes", "!!float x", "!!null 0"])
def test_an_explicit_tag_on_a_value_of_another_type_is_refused_where_it_is(text):
    with pytest.raises(yaml_source.YamlProblem) as raised:
        yaml_source.parse(f"a: 1\nv: {text}\n", "f.yaml")
    diagnostic = raised.value.diagnostic
    assert diagnostic.code == "yaml-tag" and diagnostic.path == "v"
    assert (diagnostic.location.line, diagnostic.location.column) == (2, 4)


@pytest.mark.parametrize("tag", ["!!timestamp 2025-06-06", "!!binary aGk=", "!!python/none ''", "!custom x"])
def test_tags_outside_the_core_schema_are_refused(tag):
    with pytest.raises(yaml_source.YamlProblem) as raised:
        yaml_source.parse(f"v: {tag}\n", "f.yaml")
    assert raised.value.diagnostic.code == "yaml-tag"


def test_merge_keys_and_aliases_still_work():
    data, source = yaml_source.parse("base: &b {rank: 1e3, on: yes}\nother:\n  <<: *b\n  rank: 0o17\n", "f.yaml")
    assert data == {"base": {"rank": 1000.0, "on": "yes"}, "other": {"rank": 15, "on": "yes"}}
    assert source.locate(("other", "rank")).line == 4


def test_only_values_are_remembered_as_written_not_keys():
    _, source = yaml_source.parse("outer:\n  inner: 1e3\n", "f.yaml")
    assert source.plain_scalars == {("outer", "inner"): "1e3"}


def problem(text: str) -> errors.Diagnostic:
    with pytest.raises(errors.SpecError) as raised:
        loading.load_text(textwrap.dedent(text), "fleet.yaml")
    found = raised.value.diagnostics
    assert len(found) == 1, [d.render() for d in found]
    return found[0]


def test_a_fleet_reads_numbers_in_exponent_and_octal_form():
    fleet = loading.load_text(VALID.replace("max_lora_rank: 64}", "max_lora_rank: 64}\n    max_num_seqs: 1e3"))
    assert fleet.spec.servers[0].max_num_seqs == 1000
    fleet = loading.load_text(VALID.replace("max_loras: 3", "max_loras: 0o3"))
    assert fleet.spec.servers[0].lora.max_loras == 3


def test_a_yaml_11_number_is_text_and_is_reported_at_its_line():
    diagnostic = problem(VALID.replace("max_loras: 3", "max_loras: 0b11"))  # 3 in YAML 1.1
    assert diagnostic.path == "servers[0].lora.max_loras"
    assert (diagnostic.location.line, diagnostic.location.column) == (7, 12)
    assert diagnostic.message == "expected a whole number, got `'0b11'`"


def test_a_number_where_text_belongs_says_to_quote_it_at_its_line():
    diagnostic = problem(VALID.replace('version: "2.0"', "version: 1e3"))
    assert diagnostic.path == "specialists[0].version"
    assert diagnostic.location.line == 10
    assert diagnostic.hint == 'YAML reads 1e3 as a float; put it in quotes: "1e3"'


@pytest.mark.parametrize(("written", "meant"), [("yes", "true"), ("on", "true"), ("Off", "false"), ("no", "false")])
def test_a_yaml_11_boolean_is_a_clear_error_not_a_quiet_true(written, meant):
    diagnostic = problem(VALID + f"    preload: {written}\n")
    assert diagnostic.path == "specialists[0].preload"
    assert (diagnostic.location.line, diagnostic.location.column) == (13, 5)
    assert diagnostic.message == f"expected true or false, got `'{written}'`"
    assert diagnostic.hint == f"YAML 1.2 reads {written} as text, not a boolean; write {meant}"


def test_a_number_or_quoted_word_for_a_boolean_is_refused_too():
    assert problem(VALID + "    pinned: 1\n").hint == "YAML 1.2 reads 1 as a number, not a boolean; write true"
    assert problem(VALID + '    pinned: "true"\n').hint == "remove the quotes: true"
    assert problem(VALID + "    pinned: maybe\n").hint == "write true or false"
    fleet = loading.load_text(VALID + "    pinned: true\n    preload: TRUE\n")
    assert fleet.spec.specialists[0].pinned is True
