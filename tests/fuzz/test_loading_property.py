"""However broken the input, loading and checking yield fleetspec diagnostics, nothing else."""

from __future__ import annotations

import pathlib
import random

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fleetspec import errors
from fleetspec.spec import loading
from fleetspec.validation import checks

ROOT = pathlib.Path(__file__).resolve().parents[2]
EXAMPLES = [p for p in sorted(ROOT.glob("examples/*.yaml")) + [ROOT / "fleet.yaml"] if p.exists()]
SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def load_and_check(text: str) -> None:
    try:
        fleet = loading.load_text(text, "fuzz.yaml")
    except errors.SpecError as exc:
        assert exc.diagnostics, "a SpecError must carry at least one diagnostic"
        assert all(isinstance(d, errors.Diagnostic) and d.message for d in exc.diagnostics)
        return
    for diagnostic in checks.check(fleet):
        assert isinstance(diagnostic, errors.Diagnostic)


scalars = st.one_of(st.none(), st.booleans(), st.integers(-10**6, 10**6), st.floats(allow_nan=False),
                    st.text(max_size=12))
documents = st.recursive(scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=10), inner, max_size=4)), max_leaves=20)


@SETTINGS
@given(st.text(max_size=300))
def test_arbitrary_text(text):
    load_and_check(text)


@SETTINGS
@given(documents)
def test_arbitrary_documents(document):
    load_and_check(yaml.safe_dump(document))


def _paths(value, prefix=()):
    yield prefix
    if isinstance(value, dict):
        for key, child in value.items():
            yield from _paths(child, (*prefix, key))
    elif isinstance(value, list):
        for index, child in enumerate(value):
            yield from _paths(child, (*prefix, index))


def _mutate(document, rng: random.Random, replacement):
    paths = [p for p in _paths(document) if p]
    path = rng.choice(paths)
    parent = document
    for part in path[:-1]:
        parent = parent[part]
    key = path[-1]
    action = rng.choice(["delete", "replace", "typo", "scale"])
    if action == "delete":
        del parent[key]
    elif action == "typo" and isinstance(key, str) and key:
        index = rng.randrange(len(key))
        parent[key[:index] + key[index + 1:] + "x"] = parent.pop(key)
    elif action == "scale" and isinstance(parent[key], int | float) and not isinstance(parent[key], bool):
        parent[key] = parent[key] * rng.choice([-1, 0, 1000, 10**9])
    else:
        parent[key] = replacement


@SETTINGS
@given(st.sampled_from(EXAMPLES), st.integers(0, 2**32), scalars, st.integers(1, 4))
def test_mutated_examples(example, seed, replacement, mutations):
    document = yaml.safe_load(example.read_text(encoding="utf-8"))
    rng = random.Random(seed)
    for _ in range(mutations):
        if document:
            _mutate(document, rng, replacement)
    load_and_check(yaml.safe_dump(document))
