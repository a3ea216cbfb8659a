"""Precompiled text matchers: every keyword of the fleet found in one pass over the prompt.

A combined alternation of thousands of keywords is slow in Python's `re` (it tries each branch at
each position), so single-word terms are matched by splitting the prompt into words once and
intersecting with a frozenset (hashing, independent of the number of terms). Terms with spaces or
punctuation (`c++`, `ci-cd`, `machine learning`) go into one trie-shaped regex, tried only when the
fleet declares such terms. Both match whole words, case-insensitively (via `str.casefold`).
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from fleetspec.spec import regex as regex_dialect

_WORD = re.compile(r"\w+")
# For ASCII text (most prompts) splitting bytes is 2-3x faster than the regex: every ASCII byte
# that `\w` would not match becomes a space. Same words, same boundaries.
_ASCII_NON_WORD = bytes(b if chr(b).isalnum() or b == ord("_") or b >= 128 else 32 for b in range(256))
# A file extension after a word character: `main.py`, `src/app.tsx`. `(?<=\w\.)` sits after the
# literal dot so the regex engine can jump from dot to dot instead of testing every position.
_EXTENSION = re.compile(r"\.(?<=\w\.)([0-9a-z_+-]+)")


# Matching looks at most at the first and the last 128 Ki characters of a prompt (the instructions
# and the question; a pasted file in between rarely decides the specialist). Every matcher is linear,
# so this bounds one routing decision at about a millisecond however large the request body is.
MATCH_WINDOW = 128 * 1024


def window(prompt: str) -> str:
    """The part of a prompt that rules match against: all of it up to 256 Ki characters, else its
    first and last MATCH_WINDOW characters (joined by a newline, so no word spans the cut)."""
    if len(prompt) <= 2 * MATCH_WINDOW:
        return prompt
    return prompt[:MATCH_WINDOW] + "\n" + prompt[-MATCH_WINDOW:]


class RuleRegex:
    """A routing rule's pattern, compiled by RE2 (`spec.regex`), searched in the prompt's window."""

    __slots__ = ("pattern", "_compiled")

    def __init__(self, pattern: str):
        self.pattern = pattern
        self._compiled = regex_dialect.compile_pattern(pattern)

    def search(self, prompt: str):
        return self._compiled.search(window(prompt))


def normalize_term(term: str) -> str:
    """Case-folded, inner whitespace collapsed: how terms are stored and reported."""
    return " ".join(term.casefold().split())


def normalize_extension(extension: str) -> str:
    """`.PY`, `py` → `py`: extensions are kept without their dot."""
    return extension.strip().casefold().lstrip(".")


def fold(text: str) -> str:
    return text.casefold()


class TermMatcher:
    """Finds which of a fixed set of terms occur as whole words in a (case-folded) text."""

    def __init__(self, terms: Iterable[str]):
        normalized = {normalize_term(t) for t in terms if t.strip()}
        self.simple = frozenset(t for t in normalized if _WORD.fullmatch(t))
        self._simple_bytes = frozenset(t.encode() for t in self.simple)
        self.complex = tuple(sorted(normalized - self.simple))
        self._complex_regex = _trie_regex(self.complex) if self.complex else None

    def __len__(self) -> int:
        return len(self.simple) + len(self.complex)

    def find(self, folded: str) -> set[str]:
        """The terms present in `folded` (a text passed through `fold`)."""
        if not self.simple:
            hits: set[str] = set()
        elif folded.isascii():
            words = folded.encode("ascii").translate(_ASCII_NON_WORD).split()
            hits = {word.decode("ascii") for word in self._simple_bytes.intersection(words)}
        else:
            hits = set(self.simple.intersection(_WORD.findall(folded)))
        if self._complex_regex is not None:
            hits.update(" ".join(m.split()) for m in self._complex_regex.findall(folded))
        return hits


def find_extensions(folded: str) -> set[str]:
    """Extensions (without the dot) of file names mentioned in a case-folded text."""
    if "." not in folded:
        return set()
    return set(_EXTENSION.findall(folded))


def _trie_regex(terms: Iterable[str]) -> re.Pattern[str]:
    """One regex for many terms, shaped as a trie so shared prefixes are matched once."""
    trie: dict = {}
    for term in terms:
        node = trie
        for char in term:
            node = node.setdefault(char, {})
        node[""] = {}
    # Whole words: no word character may touch the match on either side.
    return re.compile(r"(?<!\w)(?:" + _trie_pattern(trie) + r")(?!\w)")


def _trie_pattern(node: dict) -> str:
    branches = [_char_pattern(char) + _trie_pattern(child) for char, child in sorted(node.items()) if char]
    if not branches:
        return ""
    body = branches[0] if len(branches) == 1 else "(?:" + "|".join(branches) + ")"
    # A term ending here may also continue: try the longer term first (greedy), then stop here.
    return f"(?:{body})?" if "" in node else body


def _char_pattern(char: str) -> str:
    return r"\s+" if char == " " else re.escape(char)
