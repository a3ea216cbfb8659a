"""Plan-time routing checks: shadowed rules and rules whose target no server runs."""

from __future__ import annotations

import textwrap

import pytest

from fleetspec.errors import Severity
from fleetspec.routing import checks
from fleetspec.spec import loading

HEAD = textwrap.dedent("""\
    name: shop
    base_model: {id: org/base-model}
    gpus: "1x A100-80GB"
    servers:
      - name: main
        lora: {max_loras: 4, max_lora_rank: 64}
      - name: plain
      - name: parked
        replicas: 0
        lora: {max_loras: 1, max_lora_rank: 64}
    specialists:
      - {name: python, version: 1.0.0, path: /a/p, keywords: [pytest, django], extensions: [.py]}
      - {name: sql, version: 1.0.0, path: /a/s, keywords: [sql], domains: [databases]}
      - {name: idle, version: 1.0.0, path: /a/i, servers: [parked]}
    routing:
      rules:
    """)


def run(rules: str) -> list:
    fleet = loading.load_text(HEAD + textwrap.indent(textwrap.dedent(rules), "    "))
    return [(d.severity, d.code, d.path) for d in checks.check(fleet)]


SHADOWED = {
    "keywords covered by one earlier rule": """\
        - {name: a, keywords: [pytest, django], to: python}
        - {name: b, keywords: [Django], to: sql}
        """,
    "keywords covered by several earlier rules together": """\
        - {name: a, keywords: [pytest], to: python}
        - {name: c, keywords: [sql], to: sql}
        - {name: b, keywords: [sql, pytest], to: sql}
        """,
    "extensions covered earlier": """\
        - {name: a, extensions: [.py, .pyx], to: python}
        - {name: b, extensions: [.PY], to: sql}
        """,
    "anything after a catch-all regex": """\
        - {name: a, regex: '(?s).*', to: python}
        - {name: b, extensions: [.sql], to: sql}
        """,
    "keywords the dispatcher already catches": """\
        - {name: a, specialist_signals: true}
        - {name: b, keywords: [databases], to: python}
        """,
    "after a hash rule that maps every cluster": """\
        - {name: a, hash_clusters: {num_clusters: 2, map: {c0: python, c1: sql}}}
        - {name: b, regex: x, to: sql}
        """,
}


@pytest.mark.parametrize("rules", SHADOWED.values(), ids=SHADOWED.keys())
def test_rule_that_can_never_fire_is_warned(rules):
    found = run(rules)
    last = rules.count("- {") - 1
    assert (Severity.WARNING, "rule-never-fires", f"routing.rules[{last}]") in found
    assert [f for f in found if f[1] == "rule-never-fires"] == [(Severity.WARNING, "rule-never-fires",
                                                                  f"routing.rules[{last}]")]


NOT_SHADOWED = {
    "one keyword left uncovered": """\
        - {name: a, keywords: [pytest], to: python}
        - {name: b, keywords: [pytest, sql], to: sql}
        """,
    "a regex that needs text": """\
        - {name: a, regex: '^.*$', to: python}
        - {name: b, extensions: [.sql], to: sql}
        """,
    "an earlier rule to an undeclared specialist never fires": """\
        - {name: a, keywords: [pytest], to: nosuch}
        - {name: b, keywords: [pytest], to: python}
        """,
    "a hash rule with a cluster unmapped": """\
        - {name: a, hash_clusters: {num_clusters: 3, map: {c0: python, c1: sql}}}
        - {name: b, regex: x, to: sql}
        """,
    "a multi-word keyword does not cover its first word": """\
        - {name: a, keywords: [unit test], to: python}
        - {name: b, keywords: [unit], to: sql}
        """,
}


@pytest.mark.parametrize("rules", NOT_SHADOWED.values(), ids=NOT_SHADOWED.keys())
def test_rule_that_can_fire_is_not_warned(rules):
    assert not [f for f in run(rules) if f[1] == "rule-never-fires"]


def test_shadow_message_names_the_covering_rules():
    fleet = loading.load_text(HEAD + "    - {name: a, keywords: [pytest], to: python}\n"
                                     "    - {name: b, keywords: [pytest], to: sql}\n")
    (found,) = checks.check(fleet)
    assert found.message == "rule `b` can never fire: every keyword it lists is already caught by `a`"
    assert found.hint == "move `b` above `a`, or remove it"
    assert found.location is not None and found.location.line == 18  # the second rule, counted in HEAD


def test_target_on_server_without_lora_is_an_error():
    text = HEAD.replace("{name: sql, version: 1.0.0, path: /a/s,", "{name: sql, version: 1.0.0, path: /a/s, servers: [plain],")
    fleet = loading.load_text(text + "    - {name: a, keywords: [sql], to: sql}\n")
    found = [(d.severity, d.code, d.path) for d in checks.check(fleet)]
    assert found == [(Severity.ERROR, "route-target-not-hosted", "routing.rules[0].to")]


def test_target_on_scaled_down_server_is_a_warning():
    assert run("- {name: a, keywords: [x], to: idle}\n") == [
        (Severity.WARNING, "route-target-not-running", "routing.rules[0].to")]


def test_hash_map_targets_are_checked_too():
    found = run("- {name: a, hash_clusters: {num_clusters: 4, map: {c2: idle, c9: python}}}\n")
    assert found == [
        (Severity.WARNING, "route-target-not-running", "routing.rules[0].hash_clusters.map.c2"),
        (Severity.WARNING, "cluster-never-hashed", "routing.rules[0].hash_clusters.map.c9"),
    ]


CATCH_ALL = {".*": True, "^": True, "(?s).*": True, "x?": True, "(?:a|.*)": True, r"\A": True,
             "^.*$": False, "a": False, r"\b": False, "^(?!foo)": False, "$": False, ".+": False}


@pytest.mark.parametrize("pattern, expected", CATCH_ALL.items())
def test_matches_every_prompt(pattern, expected):
    assert checks.matches_every_prompt(pattern) is expected
