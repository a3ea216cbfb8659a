"""Reading fleetspec's own packaged catalog data (the only I/O the pure core does)."""

from __future__ import annotations

import functools
from importlib import resources

import yaml

_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


@functools.cache
def load(name: str) -> dict:
    """The parsed `fleetspec/catalog/data/<name>.yaml`; cached, callers must not mutate it."""
    text = resources.files("fleetspec.catalog").joinpath("data", f"{name}.yaml").read_text(encoding="utf-8")
    return yaml.load(text, Loader=_Loader)
