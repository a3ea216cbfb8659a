"""The combined keyword matcher and the extension finder."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fleetspec.routing import matchers

MATCHER = matchers.TermMatcher(["Python", "pip", "c++", "ci-cd", "machine learning", "machine", ".net", "übersetze"])

CASES = {
    "case-insensitive whole word": ("I use PYTHON daily", {"python"}),
    "word inside a longer word does not count": ("pythonic pipeline", set()),
    "punctuation around a word is fine": ("(pip), python!", {"pip", "python"}),
    "symbol keyword": ("templates in C++ are hard", {"c++"}),
    "symbol keyword glued to a word": ("abc++ x", set()),
    "hyphenated keyword": ("our CI-CD pipeline", {"ci-cd"}),
    "multi-word keyword across whitespace": ("Machine\n  Learning rocks", {"machine", "machine learning"}),
    "leading punctuation keyword": ("port it to .NET now", {".net"}),
    "leading punctuation keyword inside a word": ("asp.net", set()),
    "non-ASCII keyword": ("Übersetze das", {"übersetze"}),
    "empty text": ("", set()),
}


@pytest.mark.parametrize("text, expected", CASES.values(), ids=CASES.keys())
def test_term_matcher(text, expected):
    assert MATCHER.find(matchers.fold(text)) == expected


def test_matcher_splits_simple_and_complex_terms():
    assert MATCHER.simple == frozenset({"python", "pip", "machine", "übersetze"})
    assert MATCHER.complex == (".net", "c++", "ci-cd", "machine learning")
    assert len(MATCHER) == 8


EXTENSIONS = {
    "file name": ("fix utils.py please", {"py"}),
    "path and several files": ("src/app.TSX and lib/x.rs", {"tsx", "rs"}),
    "double extension": ("backup.tar.gz", {"tar", "gz"}),
    "a sentence's full stop is not an extension": ("It works. Now what", set()),
    "a bare extension is not a file": ("what is .py", set()),
    "no dots at all": ("plain words", set()),
}


@pytest.mark.parametrize("text, expected", EXTENSIONS.values(), ids=EXTENSIONS.keys())
def test_find_extensions(text, expected):
    assert matchers.find_extensions(matchers.fold(text)) == expected


@pytest.mark.parametrize("raw, expected", [(".PY", "py"), ("py", "py"), (" .sql ", "sql")])
def test_normalize_extension(raw, expected):
    assert matchers.normalize_extension(raw) == expected


WORDS = ["python", "pip", "sql", "k8s", "a_b", "x1"]
ASCII_MATCHER = matchers.TermMatcher(WORDS)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from([*WORDS, "py", "thon", " ", "\n", ".", "-", "_", "'", "é", "9", "/"]), max_size=30))
def test_ascii_fast_path_finds_what_the_word_regex_finds(pieces):
    text = "".join(pieces)
    expected = set(WORDS) & set(re.findall(r"\w+", text))
    assert ASCII_MATCHER.find(text) == expected
