"""The dialect of routing `regex` rules: RE2, whose matching time is linear in the prompt.

Python's `re` backtracks: `(a+)+$` against 26 `a`s and a `b` takes seconds, and every extra character
doubles it, so one prompt could hold the router's event loop. RE2 (Google's engine, through the
google-re2 binding) never backtracks; what it cannot promise linear time for (backreferences,
lookahead and lookbehind) it refuses to compile, and fleetspec refuses the rule at validate time,
located, saying so. Differences from `re` a user may meet: `\\w`, `\\d` and `\\b` are ASCII (write
`\\pL` or `[\\p{L}\\p{N}_]` for any letter), and `\\Z` is written `\\z`.
"""

from __future__ import annotations

import functools

# RE2 programs beyond this refuse to compile (e.g. `(x{1000}){1000}`); RE2's own default, stated.
MAX_PROGRAM_BYTES = 8 * 1024 * 1024


class RegexError(ValueError):
    """A pattern RE2 refuses; the message says why in RE2's words."""


@functools.cache
def _options():
    import re2  # imported on first use: validate and plan of fleets without regex rules never load it

    options = re2.Options()
    options.log_errors = False  # RE2 would print its own complaint to stderr; fleetspec reports it located
    options.max_mem = MAX_PROGRAM_BYTES
    return options


def compile_pattern(pattern: str):
    """The compiled RE2 pattern (`.search(text)` like `re`); raise RegexError when RE2 refuses it."""
    import re2

    try:
        return re2.compile(pattern, _options())
    except re2.error as exc:
        reason = exc.args[0] if exc.args else "it does not compile"
        if isinstance(reason, bytes):
            reason = reason.decode("utf-8", "replace")
        raise RegexError(str(reason)) from None
