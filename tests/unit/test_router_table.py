"""Routing decisions: every rule kind, precedence, scoring, splits, fallbacks, explicit models."""

from __future__ import annotations

import collections
import os
import subprocess
import sys
import textwrap

import pytest

from fleetspec.routing import splits, table
from fleetspec.spec import loading

FLEET = textwrap.dedent("""\
    name: shop
    base_model: {id: org/base-model}
    gpus: "1x A100-80GB"
    servers:
      - name: main
        lora: {max_loras: 4, max_lora_rank: 64}
    specialists:
      - name: python
        version: 2.0.0
        path: /a/python/2.0.0
        domains: [python, testing]
        keywords: [pytest, django, pip]
        extensions: [.py]
        versions: [{version: 1.0.0, path: /a/python/1.0.0}]
      - name: sql
        version: 1.0.0
        path: /a/sql/1.0.0
        domains: [databases]
        keywords: [sql, postgres, query]
        extensions: [.sql]
      - name: cpp
        version: 1.0.0
        path: /a/cpp/1.0.0
        keywords: [c++, segfault, memory leak]
        extensions: [.cpp]
        priority: 5
      - name: bash
        version: 1.0.0
        path: /a/bash/1.0.0
        keywords: [script]
      - name: awk
        version: 1.0.0
        path: /a/awk/1.0.0
        keywords: [script]
    routing:
      fallback: base
      rules:
        - {name: traceback, regex: 'Traceback \\(most recent call last\\)', to: python}
        - {name: sql-files, extensions: [.sql], to: sql}
        - {name: notebooks, extensions: [.ipynb], to: python@1.0.0}
        - {name: db-words, keywords: [Postgres, SQLite], to: sql}
        - {name: signals, specialist_signals: true}
      splits:
        - specialist: python
          weights: {2.0.0: 90, 1.0.0: 10}
    """)


def make_table(text: str = FLEET, cluster_maps=None) -> table.RoutingTable:
    return table.RoutingTable.from_spec(loading.load_text(text).spec, cluster_maps)


@pytest.fixture(scope="module")
def routing() -> table.RoutingTable:
    return make_table()


# (prompt, metadata extensions) → (specialist, rule name, matched)
CASES = {
    "keyword rule, any case": ("Does POSTGRES vacuum lock tables?", (), ("sql", "db-words", ("postgres",))),
    "extension seen in the prompt": ("what is wrong in schema.sql?", (), ("sql", "sql-files", (".sql",))),
    "extension from request metadata": ("what is wrong here?", (".sql",), ("sql", "sql-files", (".sql",))),
    "metadata extension without dot, upper case": ("look", ("SQL",), ("sql", "sql-files", (".sql",))),
    "regex rule beats a later extension rule": (
        "Traceback (most recent call last):\n  File \"load.sql\"", (), ("python", "traceback",
                                                                    ("Traceback (most recent call last)",))),
    "signals: keywords and extension add up": ("pytest fails in app.py with django", (),
                                                ("python", "signals", (".py", "django", "pytest"))),
    "signals: domains count as terms": ("a testing strategy", (), ("python", "signals", ("testing",))),
    "signals: terms with punctuation and spaces": ("a memory\n leak in C++ code", (),
                                                    ("cpp", "signals", ("c++", "memory leak"))),
    "signals: more terms beat priority": ("segfault in my sql query", (), ("sql", "signals", ("query", "sql"))),
    "signals: priority breaks a tie": ("a segfault in sql", (), ("cpp", "signals", ("segfault",))),
    "signals: name breaks a tie of equal priority": ("run the script", (), ("awk", "signals", ("script",))),
}


@pytest.mark.parametrize("prompt, extensions, expected", CASES.values(), ids=CASES.keys())
def test_rule_decides(routing, prompt, extensions, expected):
    decision = routing.decide(prompt, extensions=extensions)
    assert (decision.specialist, decision.rule.name, decision.matched) == expected
    assert decision.fallback_reason is None and not decision.rejected


WHOLE_WORDS = {
    "a longer word is not the keyword": "postgresql tuning",
    "a keyword glued to a word": "mypytest and sqlish",
    "an extension that only starts like one": "see notes.sqlx",
    "punctuation keyword inside a word": "abc++ code",
}


@pytest.mark.parametrize("prompt", WHOLE_WORDS.values(), ids=WHOLE_WORDS.keys())
def test_only_whole_words_match(routing, prompt):
    decision = routing.decide(prompt)
    assert decision.specialist is None
    assert decision.fallback_reason == table.NO_MATCH


def test_rule_order_decides_and_runner_up_is_next_other_specialist(routing):
    decision = routing.decide("Traceback (most recent call last): while loading dump.sql")
    assert decision.rule == table.RuleRef("traceback", 0, "regex")
    assert decision.runner_up.specialist == "sql"
    assert decision.runner_up.rule.name == "sql-files"


def test_runner_up_of_signals_is_second_best_score(routing):
    decision = routing.decide("segfault in my sql query")
    assert (decision.runner_up.specialist, decision.runner_up.score) == ("cpp", 1)
    assert decision.runner_up.matched == ("segfault",)


def test_explain_false_skips_runner_up(routing):
    assert routing.decide("segfault in my sql query", explain=False).runner_up is None


def test_pinned_rule_target_ignores_split(routing):
    decision = routing.decide("open analysis.ipynb")
    assert (decision.specialist, decision.version, decision.served_name) == ("python", "1.0.0", "python--1.0.0")
    assert decision.bucket is None


def test_fallback_to_base_records_reason(routing):
    decision = routing.decide("hello there")
    assert decision.served_name == "org/base-model"
    assert decision.specialist is None and decision.rule == table.FALLBACK
    assert decision.fallback_reason == "no-match" and not decision.rejected


def test_fallback_reject():
    rejecting = make_table(FLEET.replace("fallback: base", "fallback: reject"))
    decision = rejecting.decide("hello there")
    assert decision.rejected and decision.served_name is None
    assert decision.fallback_reason == "no-match"


EXPLICIT = {
    "specialist name: active version via split": ("sql", ("sql", "1.0.0", "sql--1.0.0")),
    "name@version": ("python@1.0.0", ("python", "1.0.0", "python--1.0.0")),
    "served adapter name": ("python--1.0.0", ("python", "1.0.0", "python--1.0.0")),
    "base model id": ("org/base-model", (None, None, "org/base-model")),
}


@pytest.mark.parametrize("model, expected", EXPLICIT.values(), ids=EXPLICIT.keys())
def test_explicit_model_passes_through(routing, model, expected):
    decision = routing.decide("segfault in my sql query", explicit_model=model)
    assert (decision.specialist, decision.version, decision.served_name) == expected
    assert decision.rule == table.EXPLICIT and decision.fallback_reason is None


@pytest.mark.parametrize("model", ["auto", "shop", None, ""])
def test_auto_and_fleet_name_route_by_table(routing, model):
    assert routing.decide("schema.sql", explicit_model=model).rule.name == "sql-files"


def test_unknown_explicit_model_is_rejected(routing):
    decision = routing.decide("x", explicit_model="gpt-4")
    assert decision.rejected and decision.fallback_reason == table.UNKNOWN_MODEL and decision.matched == ("gpt-4",)


def test_rule_with_undeclared_target_never_fires():
    broken = make_table(FLEET.replace("to: sql}", "to: nosuch}"))
    decision = broken.decide("schema.sql")
    assert (decision.specialist, decision.rule.name) == ("sql", "signals")


# -- splits -----------------------------------------------------------------------------------------


def test_split_distribution_over_10000_keys_within_2_percent(routing):
    counts = collections.Counter(
        routing.decide("pytest", sticky_key=f"user-{n}").version for n in range(10_000))
    assert abs(counts["2.0.0"] / 10_000 - 0.90) <= 0.02
    assert abs(counts["1.0.0"] / 10_000 - 0.10) <= 0.02


def test_split_without_key_is_deterministic_per_prompt_and_spread(routing):
    prompts = [f"pytest question number {n}" for n in range(10_000)]
    first = [routing.decide(p).version for p in prompts]
    assert first == [routing.decide(p).version for p in prompts]
    assert abs(first.count("1.0.0") / 10_000 - 0.10) <= 0.02


def test_sticky_key_keeps_version_whatever_the_prompt(routing):
    versions = {routing.decide(f"pytest {n}", sticky_key="alice").version for n in range(200)}
    assert versions == {"2.0.0"}  # bucket("alice", "python") is 83 < 90
    assert routing.decide("pytest", sticky_key="alice").bucket == 83


def test_bucket_is_fixed_across_processes():
    # blake2b, not hash(): the same under any PYTHONHASHSEED, on any machine, after restarts.
    assert splits.bucket("user-42", "python") == 11
    assert splits.bucket("alice", "python") == 83
    assert splits.bucket("alice", "sql") == 28
    code = "from fleetspec.routing import splits; print(splits.bucket('user-42', 'python'))"
    for seed in ("1", "12345"):
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                             env={**os.environ, "PYTHONHASHSEED": seed})
        assert out.stdout.strip() == "11"


def test_growing_a_canary_never_moves_users_out_of_it():
    before = splits.Split.from_weights("python", {"2.0.0": 95, "1.0.0": 5})
    after = splits.Split.from_weights("python", {"2.0.0": 90, "1.0.0": 10})
    for n in range(5_000):
        if before.pick(f"u{n}")[0] == "1.0.0":
            assert after.pick(f"u{n}")[0] == "1.0.0"


def test_zero_weight_version_gets_nothing():
    split = splits.Split.from_weights("python", {"2.0.0": 100, "1.0.0": 0})
    assert {split.pick(f"u{n}")[0] for n in range(1_000)} == {"2.0.0"}


# -- hash clusters (seed 000) -----------------------------------------------------------------------

CLUSTERS = textwrap.dedent("""\
    name: ensemble
    base_model: {id: TinyLlama/TinyLlama-1.1B-Chat-v1.0}
    gpus: "1x T4"
    servers:
      - name: swarm-api
        lora: {max_loras: 3, max_lora_rank: 64}
    specialists:
      - {name: "2025-06-06", version: "2025-06-06", path: /loras/2025-06-06}
      - {name: code-specialist-v2, version: v2, path: /loras/code-specialist-v2}
    routing:
      rules:
        - name: ensemble
          hash_clusters:
            num_clusters: 100
            prefix: c
            map: {c81: "2025-06-06", c10: code-specialist-v2}
        - {name: code-words, keywords: [quicksort], to: code-specialist-v2}
    """)

# sha1 as an integer mod 100, computed independently with `printf %s PROMPT | sha1sum` and bc.
SEED_000_CLUSTERS = {"hello": "c81", "fix my pytest failure in utils.py": "c25", "Explain quicksort": "c21"}


@pytest.mark.parametrize("prompt, cluster", SEED_000_CLUSTERS.items())
def test_cluster_id_is_sha1_mod_num_clusters(prompt, cluster):
    assert make_table(CLUSTERS).decide(prompt).cluster == cluster


def test_mapped_cluster_routes_to_its_specialist():
    decision = make_table(CLUSTERS).decide("hello")
    assert (decision.specialist, decision.rule.name, decision.matched) == ("2025-06-06", "ensemble", ("c81",))


def test_unmapped_cluster_falls_through_to_later_rules():
    decision = make_table(CLUSTERS).decide("Explain quicksort")
    assert (decision.specialist, decision.rule.name, decision.cluster) == ("code-specialist-v2", "code-words", "c21")


def test_unmapped_cluster_with_no_other_match_is_a_miss():
    decision = make_table(CLUSTERS).decide("fix my pytest failure in utils.py")
    assert decision.specialist is None
    assert (decision.fallback_reason, decision.cluster) == (table.CLUSTER_UNMAPPED, "c25")


def test_other_prefix_and_cluster_count():
    text = CLUSTERS.replace("num_clusters: 100", "num_clusters: 7").replace("prefix: c", "prefix: k")
    assert make_table(text).decide("hello").cluster == "k3"


def test_map_file_entries_add_to_inline_map_which_wins():
    routing = make_table(CLUSTERS, cluster_maps={0: {"c25": "2025-06-06", "c81": "code-specialist-v2"}})
    assert routing.decide("fix my pytest failure in utils.py").specialist == "2025-06-06"
    assert routing.decide("hello").specialist == "2025-06-06"  # inline c81 wins over the file


def test_runtime_overrides_lay_over_the_map():
    base = make_table(CLUSTERS)
    changed = base.with_cluster_overrides({0: {"c25": "code-specialist-v2", "c81": "code-specialist-v2@v2"}})
    assert changed.decide("fix my pytest failure in utils.py").specialist == "code-specialist-v2"
    assert changed.decide("hello").version == "v2"
    assert base.decide("hello").specialist == "2025-06-06"  # the original table is untouched
    with pytest.raises(ValueError, match="not a declared specialist"):
        base.with_cluster_overrides({0: {"c1": "nope"}})


def test_decision_json_shape(routing):
    data = routing.decide("schema.sql").to_json()
    assert data == {
        "specialist": "sql", "version": "1.0.0", "served_name": "sql--1.0.0",
        "rule": {"name": "sql-files", "index": 1, "kind": "extensions"}, "matched": [".sql"],
        "runner_up": None, "fallback_reason": None, "rejected": False, "cluster": None, "bucket": None,
        "similarity": None,
    }
