"""The routing table's embedding tier, with a stand-in index whose similarities are given, so the
decision logic (threshold, runner-up, splits, fallback, reject) is checked without the model. The
real model is exercised in tests/integration/test_router_embedding.py."""

from __future__ import annotations

import textwrap

import pytest

from fleetspec.routing import checks, embedding, table
from fleetspec.spec import loading

FLEET = textwrap.dedent("""\
    name: shop
    base_model: {id: org/base}
    gpus: "1x A100-80GB"
    servers: [{name: main, lora: {max_loras: 2, max_lora_rank: 16}}]
    specialists:
      - {name: python, version: 2.0.0, path: /a/p2, keywords: [pytest], versions: [{version: 1.0.0, path: /a/p1}]}
      - {name: sql, version: 1.0.0, path: /a/s, domains: [databases], examples: ["Why is my JOIN slow?"]}
    routing:
      fallback: FALLBACK
      rules: [{name: words, keywords: [pytest], to: python}]
      splits: [{specialist: python, weights: {2.0.0: 50, 1.0.0: 50}}]
      embedding: {enabled: true, threshold: 0.4}
    """)


class GivenIndex:
    """Answers `rank` from a table of prompt → [(specialist, similarity), ...]."""

    def __init__(self, answers: dict, threshold: float = 0.4):
        self.answers, self.threshold, self.asked = answers, threshold, []

    def rank(self, prompt: str, top: int = 2):
        self.asked.append(prompt)
        return self.answers.get(prompt, [])[:top]


def make(answers: dict, fallback: str = "base") -> tuple[table.RoutingTable, GivenIndex]:
    index = GivenIndex(answers)
    spec = loading.load_text(FLEET.replace("FALLBACK", fallback)).spec
    return table.RoutingTable.from_spec(spec, embedding=index), index


def test_the_nearest_specialist_above_the_threshold_takes_the_prompt():
    routing, _ = make({"slow joins": [("sql", 0.61), ("python", 0.12)]})
    decision = routing.decide("slow joins")
    assert (decision.specialist, decision.version, decision.served_name) == ("sql", "1.0.0", "sql--1.0.0")
    assert (decision.rule, decision.matched, decision.similarity) == (table.EMBEDDING, ("similarity 0.610",), 0.61)
    assert decision.runner_up == table.Candidate("python", None, table.EMBEDDING, similarity=0.12)
    assert decision.to_json()["rule"] == {"name": "embedding", "index": None, "kind": "embedding"}


def test_below_the_threshold_the_fallback_keeps_the_nearest_similarity():
    routing, _ = make({"a haiku": [("sql", 0.39), ("python", 0.1)]})
    decision = routing.decide("a haiku")
    assert (decision.specialist, decision.rule, decision.fallback_reason) == (None, table.FALLBACK, table.NO_MATCH)
    assert (decision.served_name, decision.similarity, decision.runner_up) == ("org/base", 0.39, None)
    rejecting, _ = make({"a haiku": [("sql", 0.39)]}, fallback="reject")
    refused = rejecting.decide("a haiku")
    assert refused.rejected and refused.similarity == 0.39


def test_exactly_the_threshold_routes():
    routing, _ = make({"edge": [("sql", 0.4)]})
    assert routing.decide("edge").specialist == "sql"


def test_rules_first_then_the_tier_and_never_for_explicit_models():
    routing, index = make({"pytest here": [("sql", 0.9)], "x": [("sql", 0.9)]})
    assert routing.decide("pytest here").rule.name == "words"
    assert routing.decide("x", explicit_model="nope").rejected
    assert routing.decide("x", explicit_model="python").rule == table.EXPLICIT
    assert index.asked == []  # the tier was not consulted for any of them


def test_the_proxy_can_stop_before_the_tier_and_run_it_later():
    routing, index = make({"slow joins": [("sql", 0.61)]})
    first = routing.decide("slow joins", embed=False)
    assert first.rule == table.FALLBACK and first.similarity is None and index.asked == []
    assert routing.wants_embedding(first)
    assert routing.by_embedding(first, "slow joins").specialist == "sql"
    assert not routing.wants_embedding(routing.decide("pytest", embed=False))


def test_a_split_specialist_chosen_by_embedding_keeps_each_user_on_one_version():
    prompt = "mocking in unit tests"
    routing, _ = make({prompt: [("python", 0.7)]})
    versions = {user: routing.decide(prompt, sticky_key=user).version for user in map(str, range(20))}
    assert set(versions.values()) == {"1.0.0", "2.0.0"}
    assert all(routing.decide(prompt, sticky_key=u).version == v for u, v in versions.items())


def test_without_the_tier_nothing_changes():
    spec = loading.load_text(FLEET.replace("FALLBACK", "base")).spec
    routing = table.RoutingTable.from_spec(spec)
    decision = routing.decide("slow joins")
    assert decision.rule == table.FALLBACK and decision.similarity is None
    assert not routing.wants_embedding(decision)


def test_specialists_are_compared_by_their_terms_line_and_each_example():
    spec = loading.load_text(FLEET.replace("FALLBACK", "base")).spec
    assert embedding.texts_of(spec.specialist("sql")) == ["databases", "Why is my JOIN slow?"]
    assert embedding.texts_of(spec.specialist("python")) == ["pytest"]


@pytest.mark.parametrize("prompt, expected", [
    ("short question", "short question"),
    ("aaa " + "b" * 28, "b" * 28),  # the window starts inside "aaa": it begins at the next word
    ("x" * 40, "x" * 30),  # one long word: cut where the window starts
])
def test_long_prompts_are_embedded_by_their_last_characters(prompt, expected):
    assert embedding.window(prompt, chars=30) == expected


def test_plan_warns_when_a_specialist_gives_the_tier_nothing_to_compare():
    fleet = loading.load_text(FLEET.replace("FALLBACK", "base").replace(
        "- {name: python, version: 2.0.0, path: /a/p2, keywords: [pytest], ",
        "- {name: python, version: 2.0.0, path: /a/p2, "))
    found = [(d.code, d.path, d.message) for d in checks.check(fleet) if d.code == "embedding-nothing-to-compare"]
    assert found == [("embedding-nothing-to-compare", "routing.embedding.enabled",
                      "routing.embedding is on, but `python` declares no domains, keywords or examples, so the "
                      "tier can never send prompts to it")]
    fine = loading.load_text(FLEET.replace("FALLBACK", "base"))
    assert not [d for d in checks.check(fine) if d.code == "embedding-nothing-to-compare"]
