"""The routing table: fleet.yaml's routing rules compiled once into a pure `decide(prompt)`.

Rules are tried in declared order and the first that matches decides. The per-request work is one
pass of the keyword matcher and one of the extension finder over the prompt (`matchers`), then only
the rules that can still match are looked at: keyword and extension rules whose terms were seen,
plus every regex, hash-cluster and specialist-signals rule. No loop over every keyword of every
specialist happens per request.

Decisions name the rule that fired and, when asked to explain, the runner-up: the best candidate
for another specialist that the same walk would have picked next.

When no rule matched and the fleet enables routing.embedding, the nearest specialist by sentence
embedding takes the prompt if its similarity reaches the threshold (rule kind "embedding"). The
index is built outside (`routing.embedding`, heavy and optional) and handed in, so this module stays
free of numpy and torch.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Iterable, Iterator, Mapping

from fleetspec.routing import matchers, splits
from fleetspec.spec import derived, models

AUTO = "auto"
NO_MATCH = "no-match"  # seed 001's "no_domain_match": nothing in the prompt pointed anywhere
CLUSTER_UNMAPPED = "cluster-unmapped"  # seed 000's miss: the prompt's cluster has no adapter
UNKNOWN_MODEL = "unknown-model"  # the request named a model the fleet does not serve


@dataclasses.dataclass(frozen=True)
class RuleRef:
    name: str
    index: int | None  # position in routing.rules; None for explicit requests and fallbacks
    kind: str  # a models.RULE_KINDS entry, "explicit", "embedding" or "fallback"

    def to_json(self) -> dict:
        return dataclasses.asdict(self)


EXPLICIT = RuleRef("explicit", None, "explicit")
FALLBACK = RuleRef("fallback", None, "fallback")
EMBEDDING = RuleRef("embedding", None, "embedding")


@dataclasses.dataclass(frozen=True)
class Target:
    specialist: str
    version: str | None = None  # pinned (`name@version`); None: the active version or the split

    def __str__(self) -> str:
        return self.specialist if self.version is None else f"{self.specialist}@{self.version}"


@dataclasses.dataclass(frozen=True)
class Candidate:
    specialist: str
    version: str | None
    rule: RuleRef
    matched: tuple[str, ...] = ()  # the keywords, extensions, cluster id or regex text that matched
    score: int | None = None  # specialist_signals: distinct terms matched
    similarity: float | None = None  # embedding: cosine similarity to the prompt

    def to_json(self) -> dict:
        return {"specialist": self.specialist, "version": self.version, "rule": self.rule.to_json(),
                "matched": list(self.matched), "score": self.score, "similarity": self.similarity}


@dataclasses.dataclass(frozen=True)
class Decision:
    specialist: str | None  # None: the base model (fallback or asked for), or rejected
    version: str | None
    served_name: str | None  # the `model` the engine gets; None when rejected
    rule: RuleRef
    runner_up: Candidate | None = None
    fallback_reason: str | None = None
    rejected: bool = False
    matched: tuple[str, ...] = ()
    cluster: str | None = None  # the hash cluster the prompt fell into, when a hash rule looked
    bucket: int | None = None  # split bucket 0..99, when a split chose the version
    # The embedding tier's best similarity: the winner's, or the nearest one below the threshold.
    similarity: float | None = None

    def to_json(self) -> dict:
        return {
            "specialist": self.specialist, "version": self.version, "served_name": self.served_name,
            "rule": self.rule.to_json(), "matched": list(self.matched),
            "runner_up": self.runner_up.to_json() if self.runner_up else None,
            "fallback_reason": self.fallback_reason, "rejected": self.rejected,
            "cluster": self.cluster, "bucket": self.bucket, "similarity": self.similarity,
        }


@dataclasses.dataclass(frozen=True)
class _Rule:
    ref: RuleRef
    target: Target | None = None
    terms: frozenset[str] = frozenset()
    extensions: frozenset[str] = frozenset()
    regex: object = None  # matchers.RuleRegex
    clusters: _Clusters | None = None


@dataclasses.dataclass(frozen=True)
class _Clusters:
    num_clusters: int
    prefix: str
    mapping: Mapping[str, Target]


class _Probe:
    """What one prompt looks like to the rules, each part computed at most once."""

    __slots__ = ("prompt", "terms", "extensions", "_sha1", "cluster", "unmapped")

    def __init__(self, prompt: str, terms: set[str], extensions: set[str]):
        self.prompt, self.terms, self.extensions = prompt, terms, extensions
        self._sha1: int | None = None
        self.cluster: str | None = None
        self.unmapped = False

    def cluster_of(self, clusters: _Clusters) -> str:
        if self._sha1 is None:
            # Seed 000: sha1(prompt) read as one big integer.
            self._sha1 = int.from_bytes(hashlib.sha1(self.prompt.encode()).digest(), "big")
        return f"{clusters.prefix}{self._sha1 % clusters.num_clusters}"


@dataclasses.dataclass(frozen=True, eq=False)
class RoutingTable:
    fleet: str
    base_served_name: str
    fallback: str  # "base", "previous" (base for a prompt nothing matches) or "reject"
    sticky_key: str | None  # request header whose value keeps a user on one split version
    rules: tuple[_Rule, ...]
    specialists: Mapping[str, models.Specialist]
    served: Mapping[tuple[str, str], str]  # (specialist, version) → served adapter name
    aliases: Mapping[str, Target | None]  # explicit model names; None = the base model
    splits: Mapping[str, splits.Split]
    _matcher: matchers.TermMatcher
    _term_rules: Mapping[str, tuple[int, ...]]
    _extension_rules: Mapping[str, tuple[int, ...]]
    _always: tuple[int, ...]  # regex, hash-cluster and signals rules: looked at for every prompt
    _signals: _SignalIndex | None
    embedding: object | None = None  # routing.embedding.Index: rank(prompt) and threshold

    # -- compiling ---------------------------------------------------------------------------------

    @classmethod
    def from_spec(cls, spec: models.FleetSpec, cluster_maps: Mapping[int, Mapping[str, str]] | None = None,
                  embedding: object | None = None) -> RoutingTable:
        """Compile the spec's routing. `cluster_maps` holds the entries of each hash rule's
        `map_file` (read by the caller), keyed by rule index; the inline `map` wins over them.
        `embedding` is the specialists' embedding index when routing.embedding is enabled."""
        specialists = {s.name: s for s in spec.specialists}
        served = {(s.name, v): derived.served_adapter_name(s.name, v) for s in spec.specialists for v in s.all_versions}
        rules = tuple(_compile_rule(i, rule, specialists, (cluster_maps or {}).get(i, {}))
                      for i, rule in enumerate(spec.routing.rules))
        signals = _SignalIndex(spec.specialists) if any(
            r.ref.kind == "specialist_signals" for r in rules) else None
        terms = {t for r in rules for t in r.terms} | (signals.terms if signals else set())
        return cls(
            fleet=spec.name, base_served_name=derived.served_base_name(spec), fallback=spec.routing.fallback,
            sticky_key=spec.routing.sticky_key, rules=rules, specialists=specialists, served=served,
            aliases=_aliases(spec, served), splits={
                s.specialist: splits.Split.from_weights(s.specialist, s.weights) for s in spec.routing.splits},
            _matcher=matchers.TermMatcher(terms),
            _term_rules=_index((t, r.ref.index) for r in rules for t in r.terms),
            _extension_rules=_index((e, r.ref.index) for r in rules for e in r.extensions),
            _always=tuple(r.ref.index for r in rules if r.clusters is not None or r.regex is not None
                          or r.ref.kind == "specialist_signals"),
            _signals=signals,
            embedding=embedding,
        )

    def target(self, text: str) -> Target | None:
        """`name` or `name@version` as a Target, or None when the fleet declares no such thing."""
        return _target(text, self.specialists)

    def hash_rules(self) -> list[RuleRef]:
        return [r.ref for r in self.rules if r.clusters is not None]

    def cluster_map(self, index: int) -> dict[str, str]:
        return {cluster: str(t) for cluster, t in self.rules[index].clusters.mapping.items()}

    def with_cluster_overrides(self, overrides: Mapping[int, Mapping[str, str]]) -> RoutingTable:
        """A copy whose hash rules also map these clusters (runtime changes from the admin API).
        Targets must resolve (`target()`); unknown ones raise ValueError."""
        rules = list(self.rules)
        for index, entries in overrides.items():
            rule = rules[index]
            if rule.clusters is None:
                raise ValueError(f"rule {rule.ref.name} is not a hash_clusters rule")
            mapping = dict(rule.clusters.mapping)
            for cluster, text in entries.items():
                target = self.target(text)
                if target is None:
                    raise ValueError(f"`{text}` is not a declared specialist or version")
                mapping[cluster] = target
            rules[index] = dataclasses.replace(rule, clusters=dataclasses.replace(rule.clusters, mapping=mapping))
        return dataclasses.replace(self, rules=tuple(rules))

    # -- deciding ----------------------------------------------------------------------------------

    def decide(self, prompt: str, *, extensions: Iterable[str] = (), explicit_model: str | None = None,
               sticky_key: str | None = None, explain: bool = True, embed: bool = True) -> Decision:
        """Where a prompt goes. `extensions` come from request metadata; `explicit_model` is the
        request's `model` (routed by the table when "auto" or the fleet's name); `sticky_key` is
        the value of the sticky header. `explain=False` skips finding the runner-up. `embed=False`
        stops before the embedding tier (the proxy runs it off its event loop: `by_embedding`)."""
        if explicit_model and explicit_model != AUTO and explicit_model != self.fleet:
            return self._explicit(explicit_model, prompt, sticky_key)
        folded = matchers.fold(matchers.window(prompt))  # bounded: see matchers.MATCH_WINDOW
        probe = _Probe(
            prompt, self._matcher.find(folded) if len(self._matcher) else set(),
            matchers.find_extensions(folded) | {matchers.normalize_extension(e) for e in extensions},
        )
        found = self._candidates(probe)
        winner = next(found, None)
        if winner is None:
            fallback = self._fallback(probe)
            return self.by_embedding(fallback, prompt, sticky_key) if embed else fallback
        runner_up = next((c for c in found if c.specialist != winner.specialist), None) if explain else None
        return self._resolve(winner, sticky_key or prompt, runner_up, probe.cluster)

    def _candidates(self, probe: _Probe) -> Iterator[Candidate]:
        seen = {i for t in probe.terms for i in self._term_rules.get(t, ())}
        seen.update(i for e in probe.extensions for i in self._extension_rules.get(e, ()))
        for index in sorted(seen.union(self._always)) if seen else self._always:
            rule = self.rules[index]
            kind, target = rule.ref.kind, rule.target
            if kind == "keywords":
                yield Candidate(target.specialist, target.version, rule.ref, tuple(sorted(probe.terms & rule.terms)))
            elif kind == "extensions":
                matched = tuple(sorted("." + e for e in probe.extensions & rule.extensions))
                yield Candidate(target.specialist, target.version, rule.ref, matched)
            elif kind == "regex":
                match = rule.regex.search(probe.prompt)
                if match is not None:
                    yield Candidate(target.specialist, target.version, rule.ref, (match.group(0)[:80],))
            elif kind == "hash_clusters":
                yield from self._cluster_candidate(rule, probe)
            elif self._signals is not None:
                yield from self._signals.rank(probe, rule.ref)

    @staticmethod
    def _cluster_candidate(rule: _Rule, probe: _Probe) -> Iterator[Candidate]:
        cluster = probe.cluster_of(rule.clusters)
        probe.cluster = probe.cluster or cluster
        target = rule.clusters.mapping.get(cluster)
        if target is None:
            probe.unmapped = True
            return
        yield Candidate(target.specialist, target.version, rule.ref, (cluster,))

    def _resolve(self, chosen: Candidate, key: str, runner_up: Candidate | None = None,
                 cluster: str | None = None) -> Decision:
        version, where = chosen.version, None
        split = self.splits.get(chosen.specialist) if version is None else None
        if split is not None:
            version, where = split.pick(key)
        specialist = self.specialists[chosen.specialist]
        version = version or specialist.version
        served = self.served.get((specialist.name, version)) or derived.served_adapter_name(specialist.name, version)
        return Decision(specialist.name, version, served, chosen.rule, runner_up, matched=chosen.matched,
                        cluster=cluster, bucket=where)

    def _fallback(self, probe: _Probe) -> Decision:
        reason = CLUSTER_UNMAPPED if probe.unmapped else NO_MATCH
        if self.fallback == "reject":
            return Decision(None, None, None, FALLBACK, fallback_reason=reason, rejected=True, cluster=probe.cluster)
        return Decision(None, None, self.base_served_name, FALLBACK, fallback_reason=reason, cluster=probe.cluster)

    def wants_embedding(self, decision: Decision) -> bool:
        """Whether the embedding tier would look at this decision: no rule matched, and it is on."""
        return self.embedding is not None and decision.rule is FALLBACK

    def by_embedding(self, fallback: Decision, prompt: str, sticky_key: str | None = None) -> Decision:
        """The embedding tier for a prompt no rule matched: the nearest specialist when its
        similarity reaches the threshold, else `fallback` with the nearest similarity noted."""
        if not self.wants_embedding(fallback):
            return fallback
        ranked = self.embedding.rank(prompt)
        if not ranked:
            return fallback
        (name, similarity), rest = ranked[0], ranked[1:]
        if similarity < self.embedding.threshold:
            return dataclasses.replace(fallback, similarity=similarity)
        runner_up = Candidate(rest[0][0], None, EMBEDDING, similarity=rest[0][1]) if rest else None
        chosen = Candidate(name, None, EMBEDDING, (f"similarity {similarity:.3f}",), similarity=similarity)
        decision = self._resolve(chosen, sticky_key or prompt, runner_up, fallback.cluster)
        return dataclasses.replace(decision, similarity=similarity)

    def _explicit(self, model: str, prompt: str, sticky_key: str | None) -> Decision:
        if model not in self.aliases:
            return Decision(None, None, None, EXPLICIT, fallback_reason=UNKNOWN_MODEL, rejected=True,
                            matched=(model,))
        target = self.aliases[model]
        if target is None:
            return Decision(None, None, self.base_served_name, EXPLICIT, matched=(model,))
        return self._resolve(Candidate(target.specialist, target.version, EXPLICIT, (model,)), sticky_key or prompt)


class _SignalIndex:
    """Seed 001's dispatcher: every specialist scored by its own keywords, domains and extensions."""

    def __init__(self, specialists: list[models.Specialist]):
        term_owners: dict[str, set[int]] = {}
        extension_owners: dict[str, set[int]] = {}
        for i, s in enumerate(specialists):
            for term in (*s.keywords, *s.domains):
                term_owners.setdefault(matchers.normalize_term(term), set()).add(i)
            for extension in s.extensions:
                extension_owners.setdefault(matchers.normalize_extension(extension), set()).add(i)
        self.term_owners = {t: tuple(sorted(o)) for t, o in term_owners.items()}
        self.extension_owners = {e: tuple(sorted(o)) for e, o in extension_owners.items()}
        self.terms = set(self.term_owners)
        self.names = [s.name for s in specialists]
        self.priorities = [s.priority for s in specialists]

    def rank(self, probe: _Probe, ref: RuleRef) -> Iterator[Candidate]:
        """Candidates best first: most distinct terms matched, then priority, then name. Lazily,
        so a caller that needs only the winner builds one Candidate."""
        found: dict[int, list[str]] = {}
        for term in probe.terms:
            for owner in self.term_owners.get(term, ()):
                found.setdefault(owner, []).append(term)
        for extension in probe.extensions:
            for owner in self.extension_owners.get(extension, ()):
                found.setdefault(owner, []).append("." + extension)
        order = sorted(found, key=lambda o: (-len(found[o]), -self.priorities[o], self.names[o]))
        for owner in order:
            yield Candidate(self.names[owner], None, ref, tuple(sorted(found[owner])), len(found[owner]))


_KINDS = {
    models.KeywordRule: "keywords", models.ExtensionRule: "extensions", models.RegexRule: "regex",
    models.HashClusterRule: "hash_clusters", models.SpecialistSignalsRule: "specialist_signals",
}


def _compile_rule(index: int, rule, specialists: Mapping[str, models.Specialist],
                  file_map: Mapping[str, str]) -> _Rule:
    kind = _KINDS[type(rule)]
    ref = RuleRef(rule.name or f"rules[{index}]", index, kind)
    if kind == "hash_clusters":
        spec = rule.hash_clusters
        entries = {**file_map, **spec.map}
        mapping = {c: t for c, t in ((c, _target(text, specialists)) for c, text in entries.items()) if t}
        return _Rule(ref, clusters=_Clusters(spec.num_clusters, spec.prefix, mapping))
    if kind == "specialist_signals":
        return _Rule(ref)
    target = _target(rule.to, specialists)
    if target is None:
        # An undeclared target (spec.checks reports it): the rule never sends traffic anywhere.
        return _Rule(ref)
    if kind == "keywords":
        return _Rule(ref, target, terms=frozenset(matchers.normalize_term(k) for k in rule.keywords))
    if kind == "extensions":
        return _Rule(ref, target, extensions=frozenset(matchers.normalize_extension(e) for e in rule.extensions))
    return _Rule(ref, target, regex=matchers.RuleRegex(rule.regex))


def _target(text: str, specialists: Mapping[str, models.Specialist]) -> Target | None:
    name, _, version = text.partition("@")
    specialist = specialists.get(name)
    if specialist is None or (version and version not in specialist.all_versions):
        return None
    return Target(name, version or None)


def _aliases(spec: models.FleetSpec, served: Mapping[tuple[str, str], str]) -> dict[str, Target | None]:
    """Every `model` a client may send: base names, specialist names, name@version, served names."""
    aliases: dict[str, Target | None] = {spec.base_model.id: None, derived.served_base_name(spec): None}
    for (name, version), served_name in served.items():
        aliases.setdefault(served_name, Target(name, version))
        aliases[f"{name}@{version}"] = Target(name, version)
    for s in spec.specialists:
        aliases[s.name] = Target(s.name)
    return aliases


def _index(pairs: Iterable[tuple[str, int]]) -> dict[str, tuple[int, ...]]:
    found: dict[str, list[int]] = {}
    for key, index in pairs:
        found.setdefault(key, []).append(index)
    return {k: tuple(sorted(set(v))) for k, v in found.items()}
