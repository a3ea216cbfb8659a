"""Plan-time checks of the routing rules: rules that can never fire, and rules whose target no
server runs. Pure; `check(fleet)` returns located diagnostics like `spec.checks.check_fields`.

Whether a target is declared at all is `spec.checks`' job; rules with undeclared targets are
skipped here (and never count as covering a later rule, since they never fire).
"""

from __future__ import annotations

import re
from collections.abc import Iterator

from fleetspec.errors import Diagnostic, Severity
from fleetspec.routing import matchers
from fleetspec.spec import models

try:  # Python's own regex parser (3.11+), to prove a pattern matches every prompt
    from re import _constants as sre_constants
    from re import _parser as sre_parser
except ImportError:  # pragma: no cover - a future Python without it only loses the catch-all check
    sre_parser = sre_constants = None

ERROR, WARNING = Severity.ERROR, Severity.WARNING


def check(fleet) -> list[Diagnostic]:
    """Routing problems of a loaded fleet (`spec.loading.LoadedFleet`)."""
    return [*_shadowed(fleet), *_unhosted(fleet), *_clusters_never_hashed(fleet), *_embedding_blind(fleet)]


def _declared(spec: models.FleetSpec, target: str) -> bool:
    name, _, version = target.partition("@")
    specialist = spec.specialist(name)
    return specialist is not None and (not version or version in specialist.all_versions)


class _Coverage:
    """What the rules seen so far already catch: their keywords, extensions, or everything."""

    def __init__(self) -> None:
        self.terms: set[str] = set()
        self.extensions: set[str] = set()
        self.catch_all: str | None = None  # name of the first rule that matches every prompt
        self.names_by_term: dict[str, str] = {}
        self.names_by_extension: dict[str, str] = {}

    def add_terms(self, terms, name: str) -> None:
        for term in terms:
            self.terms.add(term)
            self.names_by_term.setdefault(term, name)

    def add_extensions(self, extensions, name: str) -> None:
        for extension in extensions:
            self.extensions.add(extension)
            self.names_by_extension.setdefault(extension, name)


def _shadowed(fleet) -> Iterator[Diagnostic]:
    spec = fleet.spec
    seen = _Coverage()
    for index, rule in enumerate(spec.routing.rules):
        name = _name(rule, index)
        where = ("routing", "rules", index)
        if seen.catch_all is not None:
            yield fleet.diagnostic(
                WARNING, "rule-never-fires", where,
                f"rule `{name}` can never fire: rule `{seen.catch_all}` before it matches every prompt",
                f"move `{name}` above `{seen.catch_all}`, or remove it",
            )
            continue
        covered_by = _covered_by(rule, seen)
        if covered_by:
            yield fleet.diagnostic(
                WARNING, "rule-never-fires", where,
                f"rule `{name}` can never fire: every {_what(rule)} it lists is already caught by {covered_by}",
                f"move `{name}` above {covered_by}, or remove it",
            )
        _remember(rule, name, spec, seen)


def _covered_by(rule, seen: _Coverage) -> str:
    """Names of the earlier rules that catch everything this rule would; '' when something is left."""
    if isinstance(rule, models.KeywordRule):
        terms = {matchers.normalize_term(k) for k in rule.keywords}
        if terms <= seen.terms:
            return _names(seen.names_by_term[t] for t in terms)
    elif isinstance(rule, models.ExtensionRule):
        extensions = {matchers.normalize_extension(e) for e in rule.extensions}
        if extensions <= seen.extensions:
            return _names(seen.names_by_extension[e] for e in extensions)
    return ""


def _remember(rule, name: str, spec: models.FleetSpec, seen: _Coverage) -> None:
    if isinstance(rule, models.SpecialistSignalsRule):
        # The dispatcher fires for any specialist's keyword, domain or extension.
        for s in spec.specialists:
            seen.add_terms((matchers.normalize_term(t) for t in (*s.keywords, *s.domains)), name)
            seen.add_extensions((matchers.normalize_extension(e) for e in s.extensions), name)
    elif isinstance(rule, models.HashClusterRule):
        clusters = rule.hash_clusters
        # Every cluster id mapped to a live target: counted over the map, never over range(num_clusters)
        # (a number from the file; the map's keys are unique, so distinct valid ids are counted once).
        live = sum(1 for c, t in clusters.map.items() if _declared(spec, t) and cluster_number(c, clusters) is not None)
        if clusters.map_file is None and live == clusters.num_clusters:
            seen.catch_all = name
    elif not _declared(spec, rule.to):
        return  # never fires, so it shadows nothing
    elif isinstance(rule, models.KeywordRule):
        seen.add_terms((matchers.normalize_term(k) for k in rule.keywords), name)
    elif isinstance(rule, models.ExtensionRule):
        seen.add_extensions((matchers.normalize_extension(e) for e in rule.extensions), name)
    elif isinstance(rule, models.RegexRule) and matches_every_prompt(rule.regex):
        seen.catch_all = name


def matches_every_prompt(pattern: str) -> bool:
    """True when `re.search(pattern, text)` succeeds for every text, e.g. `.*`, `^`, `(?s).*`,
    `x?`: the pattern matches the empty string at position 0 without any condition on the text."""
    if sre_parser is None:
        return False
    try:
        parsed = sre_parser.parse(pattern)
    except re.error:
        return False
    return _nullable(parsed.data if hasattr(parsed, "data") else list(parsed))


def _nullable(items) -> bool:
    return all(_item_nullable(op, av) for op, av in items)


def _item_nullable(op, av) -> bool:
    c = sre_constants
    if op in (c.MAX_REPEAT, c.MIN_REPEAT, getattr(c, "POSSESSIVE_REPEAT", None)):
        low, _, body = av
        return low == 0 or _nullable(body)
    if op is c.SUBPATTERN:
        return _nullable(av[-1])
    if op is getattr(c, "ATOMIC_GROUP", None):
        return _nullable(av)
    if op is c.BRANCH:
        return any(_nullable(branch) for branch in av[1])
    if op is c.AT:
        # At position 0 these always hold; `$`, `\b` and friends depend on the text.
        return av in (c.AT_BEGINNING, c.AT_BEGINNING_STRING, c.AT_BEGINNING_LINE)
    return False


def _unhosted(fleet) -> Iterator[Diagnostic]:
    spec = fleet.spec
    for index, rule in enumerate(spec.routing.rules):
        if isinstance(rule, models.HashClusterRule):
            for cluster, target in rule.hash_clusters.map.items():
                yield from _target_hosted(fleet, target, ("routing", "rules", index, "hash_clusters", "map", cluster),
                                          f"cluster {cluster} of rule `{_name(rule, index)}`")
        elif hasattr(rule, "to"):
            yield from _target_hosted(fleet, rule.to, ("routing", "rules", index, "to"), f"rule `{_name(rule, index)}`")


def _target_hosted(fleet, target: str, where: tuple, subject: str) -> Iterator[Diagnostic]:
    spec = fleet.spec
    if not _declared(spec, target):
        return
    specialist = spec.specialist(target.partition("@")[0])
    hosts = [s for s in spec.hosts_of(specialist) if s.lora is not None]
    if not hosts:
        yield fleet.diagnostic(
            ERROR, "route-target-not-hosted", where,
            f"{subject} sends prompts to `{specialist.name}`, but no server hosts it",
            "list a server with a `lora` section under the specialist's `servers`, or route elsewhere",
        )
    elif not any(s.replicas > 0 for s in hosts):
        names = ", ".join(f"`{s.name}`" for s in hosts)
        yield fleet.diagnostic(
            WARNING, "route-target-not-running", where,
            f"{subject} sends prompts to `{specialist.name}`, but its servers ({names}) have 0 replicas; "
            f"those prompts get the {'base model' if spec.routing.fallback == 'base' else 'rejection'} fallback",
            "give one of its servers `replicas: 1` or more",
        )


def _clusters_never_hashed(fleet) -> Iterator[Diagnostic]:
    for index, rule in enumerate(fleet.spec.routing.rules):
        if not isinstance(rule, models.HashClusterRule):
            continue
        clusters = rule.hash_clusters
        for cluster in clusters.map:
            if cluster_number(cluster, clusters) is None:
                yield fleet.diagnostic(
                    WARNING, "cluster-never-hashed", ("routing", "rules", index, "hash_clusters", "map", cluster),
                    f"no prompt can land in cluster {cluster}: ids run from {clusters.prefix}0 to "
                    f"{clusters.prefix}{clusters.num_clusters - 1}",
                    "fix the cluster id, or raise num_clusters to match how clusters were mined",
                )


def cluster_number(cluster: str, clusters: models.HashClusters) -> int | None:
    """n when `cluster` is an id the hash can produce (prefix + n written as the router writes it,
    0 <= n < num_clusters), else None."""
    digits = cluster.removeprefix(clusters.prefix) if cluster.startswith(clusters.prefix) else ""
    if not digits.isascii() or not digits.isdigit() or (len(digits) > 1 and digits[0] == "0"):
        return None
    number = int(digits) if len(digits) <= 12 else clusters.num_clusters  # longer is out of range anyway
    return number if number < clusters.num_clusters else None


def _embedding_blind(fleet) -> Iterator[Diagnostic]:
    """The embedding tier compares prompts with domains, keywords and examples: a specialist with
    none of them can never be its answer."""
    spec = fleet.spec
    if not spec.routing.embedding.enabled or not spec.specialists:
        return
    blind = [s.name for s in spec.specialists if not (s.domains or s.keywords or s.examples)]
    if not blind:
        return
    everyone = len(blind) == len(spec.specialists)
    subject = "no specialist declares" if everyone else f"{_names(blind)} declare{'s' if len(blind) == 1 else ''} no"
    yield fleet.diagnostic(
        WARNING, "embedding-nothing-to-compare", ("routing", "embedding", "enabled"),
        f"routing.embedding is on, but {subject} domains, keywords or examples, so the tier can never send "
        f"prompts to {'any of them' if everyone else 'it' if len(blind) == 1 else 'them'}",
        "add a few `examples` (prompts they serve well) to those specialists, or turn routing.embedding off",
    )


def _name(rule, index: int) -> str:
    return rule.name or f"rules[{index}]"


def _names(names) -> str:
    unique = sorted(set(names))
    return ", ".join(f"`{n}`" for n in unique)


def _what(rule) -> str:
    return "keyword" if isinstance(rule, models.KeywordRule) else "extension"
