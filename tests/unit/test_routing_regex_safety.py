"""Routing regexes are safe by construction (RE2, linear time) and a routing decision looks at a
bounded part of the prompt, so no request can stall the router's event loop (issue 15, item 4)."""

from __future__ import annotations

import textwrap
import time

import pytest

from fleetspec import errors
from fleetspec.routing import matchers, table
from fleetspec.spec import loading

FLEET = textwrap.dedent("""\
    name: shop
    base_model: {id: org/base-model}
    gpus: "1x A100-80GB"
    servers:
      - name: main
        lora: {max_loras: 4, max_lora_rank: 64}
    specialists:
      - {name: python, version: '1', path: /a/python, keywords: [pytest]}
      - {name: sql, version: '1', path: /a/sql, keywords: [postgres]}
    routing:
      rules:
        - {name: evil, regex: '{REGEX}', to: sql}
        - {name: signals, specialist_signals: true}
    """)


def routing_table(regex: str) -> table.RoutingTable:
    return table.RoutingTable.from_spec(loading.load_text(FLEET.replace("{REGEX}", regex)).spec)


@pytest.mark.parametrize("regex", ["(a+)+$", "(a|aa)+$", "(.*a){20}$", "(x+x+)+y"])
def test_patterns_that_backtrack_exponentially_in_python_match_in_linear_time(regex):
    routes = routing_table(regex)
    prompt = "a" * 50_000 + "!"  # 26 characters already took Python's `re` 3 s on `(a+)+$`
    started = time.perf_counter()
    decision = routes.decide(prompt)
    assert time.perf_counter() - started < 0.5  # generous; RE2 takes about a millisecond here
    assert decision.rule.name != "evil"


def test_the_regex_still_routes_what_it_matches():
    decision = routing_table(r"(?i)\bselect\b.+\bfrom\b").decide("please SELECT * FROM users")
    assert (decision.specialist, decision.rule.name) == ("sql", "evil")


@pytest.mark.parametrize(
    ("regex", "what"),
    [
        (r"(a)\\1", "backreference"),
        ("(?=x)y", "lookahead"),
        ("(?<=x)y", "lookbehind"),
        ("(x{1000}){1000}", "huge repetition"),
    ],
)
def test_what_re2_cannot_run_in_linear_time_is_refused_at_validate_where_it_is(regex, what):
    with pytest.raises(errors.SpecError) as raised:
        loading.load_text(FLEET.replace("{REGEX}", regex.replace("\\\\", "\\")))
    diagnostic = raised.value.diagnostics[0]
    assert diagnostic.path == "routing.rules[0].regex", what
    assert (diagnostic.location.line, diagnostic.location.column) == (12, 20)  # the `regex` key
    assert diagnostic.message.startswith("the regular expression is refused by RE2, the linear-time engine")
    assert "no backreferences" in diagnostic.hint


def test_an_overlong_pattern_is_refused():
    with pytest.raises(errors.SpecError) as raised:
        loading.load_text(FLEET.replace("{REGEX}", "a" * 3000))
    assert raised.value.diagnostics[0].code == "too-long"


def test_matching_looks_at_the_head_and_tail_of_a_huge_prompt_only():
    routes = routing_table("never-matches-anything-here")
    middle = "x " * (matchers.MATCH_WINDOW * 4)
    assert routes.decide("postgres " + middle).specialist == "sql"  # in the head
    assert routes.decide(middle + " pytest").specialist == "python"  # in the tail
    assert (
        routes.decide(middle[:200_000] + " pytest " + middle).specialist is None
    )  # past the head, before the tail


def test_a_64_mib_prompt_is_decided_quickly():
    routes = routing_table(r"[a-z]+\d+[a-z]+$")
    prompt = "word " * (64 * 1024 * 1024 // 5)
    started = time.perf_counter()
    routes.decide(prompt)
    assert time.perf_counter() - started < 0.5  # bounded by the window, not by the prompt


def test_the_window_keeps_short_prompts_whole_and_never_joins_words():
    assert matchers.window("short") == "short"
    long = "a" * (matchers.MATCH_WINDOW * 3)
    cut = matchers.window(long)
    assert len(cut) == 2 * matchers.MATCH_WINDOW + 1 and cut[matchers.MATCH_WINDOW] == "\n"
