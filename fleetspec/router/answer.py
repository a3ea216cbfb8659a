"""What a client gets of an engine's answer: the engine's end-to-end headers, and the router's own
saying how the request was routed (the specialist, version, served adapter and rule)."""

from __future__ import annotations

import urllib.parse

from fleetspec.router import httpio
from fleetspec.routing import table

_HEADER_SAFE = " -_.@()[]/:+,"


def headers(head: httpio.ResponseHead, decision: table.Decision) -> list[tuple[str, str]]:
    """The answer's headers for the client, without framing: none that is hop-by-hop or named by
    the engine's Connection field (RFC 9110 §7.6.1), then the routing headers."""
    named, hop = head.connection, httpio.HOP_BY_HOP
    kept = [(k, v) for k, v in head.headers if (low := k.lower()) not in hop and low not in named]
    return kept + decision_headers(decision)


def decision_headers(decision: table.Decision) -> list[tuple[str, str]]:
    routed = [("x-fleetspec-model", _header_value(decision.served_name or "")),
              ("x-fleetspec-rule", _header_value(decision.rule.name))]
    if decision.specialist is not None:
        routed += [("x-fleetspec-specialist", decision.specialist), ("x-fleetspec-version", decision.version)]
    if decision.fallback_reason:
        routed.append(("x-fleetspec-fallback", decision.fallback_reason))
    return routed


def _header_value(text: str) -> str:
    """Rule names are free text; headers carry latin-1 only, so anything else is %-encoded."""
    return text if text.isascii() and text.isprintable() else urllib.parse.quote(text, safe=_HEADER_SAFE)
