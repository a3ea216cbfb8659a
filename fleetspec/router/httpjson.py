"""JSON request bodies with a nesting limit. Python's decoder recurses once per level, so a body of
`[[[[...` 100,000 deep would otherwise end in a RecursionError deep inside a request handler."""

from __future__ import annotations

import json


class TooDeep(ValueError):
    pass


def loads(body: bytes, max_depth: int):
    """The decoded body; ValueError when it is not JSON, TooDeep when it nests beyond max_depth.

    A body cannot nest deeper than it has opening brackets, so the ordinary chat request (a few
    dozen) skips the depth walk; only bodies with many brackets pay for it."""
    opens = body.count(b"[") + body.count(b"{")
    try:
        value = json.loads(body)
    except RecursionError:
        raise TooDeep(f"The JSON body nests deeper than {max_depth} levels.") from None
    if opens > max_depth and _depth_exceeds(value, max_depth):
        raise TooDeep(f"The JSON body nests deeper than {max_depth} levels.")
    return value


def _depth_exceeds(value, max_depth: int) -> bool:
    """Iterative, so checking a deep value cannot itself recurse."""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        if depth > max_depth:
            return True
        stack.extend((child, depth + 1) for child in children if isinstance(child, dict | list))
    return False
