"""Reading an agent's `GET /status` from outside the pod (pure): what the router shows per replica in
its /health, and what `fleetspec status` prints for a Kubernetes fleet.

The document is the one `reconciler.Agent.status` writes. Only what a reader needs is kept: whether
the pod is Ready, the ConfigMap revision read, the last good set (its revision and adapter names),
and the problem, turned into one sentence for the person who edited the ConfigMap, e.g.
"ConfigMap revision ..2026_12_03_23_10_00.1 could not be loaded: sql--2: ...; serving last good set
..2026_12_03_22_00_00.0 (chat--1, sql--1)".
"""

from __future__ import annotations

import dataclasses
import json

STATUS_PATH = "/status"
MAX_STATUS_BYTES = 1 << 20  # 4,096 adapters with long paths (the last good set's, required and on
# demand together) and what the engine serves (at most max_cpu_loras, hundreds) fit easily

# The agent's problem kinds (`reconciler.Problem.kind`), as the verb of the sentence.
_VERBS = {"invalid": "refused", "unloadable": "could not be loaded", "unreadable": "cannot be read"}

OK, PROBLEM, NOT_READY = "ok", "problem", "not-ready"
UNREACHABLE, BAD_ANSWER = "unreachable", "bad-answer"  # the agent itself could not be read


class BadStatus(ValueError):
    """The answer is not an agent's /status document; the message says how."""


@dataclasses.dataclass(frozen=True)
class AgentView:
    ready: bool
    reason: str
    revision: str | None  # of the ConfigMap content last read (kubelet's `..data` target)
    last_good_revision: str | None
    last_good: tuple[str, ...] | None  # served names of the last good set; None: no good set yet
    serving: tuple[str, ...] | None  # what the engine served at the agent's last look
    problem_kind: str | None  # "invalid", "unloadable", "unreadable"; None: the ConfigMap is applied
    problem_revision: str | None
    problem_message: str | None

    @property
    def state(self) -> str:
        if self.problem_kind is not None:
            return PROBLEM
        return OK if self.ready else NOT_READY

    def problem(self) -> str | None:
        """One sentence: what the agent refused and what the pod serves instead; None when all is well."""
        if self.problem_kind is not None:
            verb = _VERBS.get(self.problem_kind, f"not applied ({self.problem_kind})")
            message = (self.problem_message or "no reason given").rstrip(". ")
            return f"ConfigMap revision {self.problem_revision or '?'} {verb}: {message}; {self._fallback()}"
        if not self.ready:
            return f"the agent says the pod is not Ready: {self.reason.rstrip('. ')}"
        return None

    def _fallback(self) -> str:
        if self.last_good is None:
            return "no good set was served yet, so the pod stays unready"
        return f"serving last good set {self.last_good_revision or '?'} ({', '.join(self.last_good) or 'no adapters'})"


def parse(body: bytes) -> AgentView:
    """An agent's /status answer; raises BadStatus when it is not one."""
    try:
        doc = json.loads(body)
    except (UnicodeDecodeError, ValueError) as exc:
        raise BadStatus(f"its /status is not JSON ({exc.__class__.__name__})") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("ready"), bool) or "last_good" not in doc:
        raise BadStatus("its /status is not a fleetspec agent's (no `ready` and `last_good`)")
    try:
        last_good, problem, serving = doc["last_good"], doc.get("problem"), doc.get("serving")
        return AgentView(
            ready=doc["ready"],
            reason=str(doc.get("reason") or ""),
            revision=_text(doc.get("revision")),
            last_good_revision=_text(last_good.get("revision")) if last_good else None,
            last_good=tuple(sorted(map(str, last_good.get("adapters") or {}))) if last_good else None,
            serving=tuple(sorted(map(str, serving))) if isinstance(serving, dict) else None,
            problem_kind=str(problem["kind"]) if problem else None,
            problem_revision=_text(problem.get("revision")) if problem else None,
            problem_message=_text(problem.get("message")) if problem else None,
        )
    except (AttributeError, KeyError, TypeError) as exc:
        raise BadStatus(f"its /status has an unexpected shape ({exc.__class__.__name__}: {exc})") from None


def _text(value) -> str | None:
    return None if value is None else str(value)


def unanswered(url: str, state: str, error: str) -> str:
    """The sentence for an agent that could not be read: never an engine failure."""
    if state == UNREACHABLE:
        return (f"the agent does not answer at {url}{STATUS_PATH} ({error}), so whether this pod applied its "
                "ConfigMap is unknown; its engine is checked on its own")
    return (f"the agent at {url}{STATUS_PATH} gave no usable answer ({error}), so whether this pod applied its "
            "ConfigMap is unknown; its engine is checked on its own")
