"""Inspect every adapter a fleet names: confine its path, read its files. The I/O edge of adapters.

`survey(loaded)` gives the AdapterInfo of each (specialist, version) whose files could be read, and
diagnostics for the rest (refused paths, missing directories). Commands then hand the infos to the
pure `checks.check_fleet` and to the planner (`sizing.adapter_host_bytes`).
"""

from __future__ import annotations

import dataclasses
import pathlib

from fleetspec import errors
from fleetspec.adapters import checks, paths
from fleetspec.adapters import inspect as adapter_inspect
from fleetspec.catalog import models as catalog_models
from fleetspec.errors import Diagnostic, Severity
from fleetspec.spec import loading, models


@dataclasses.dataclass(frozen=True)
class Survey:
    infos: dict[tuple[str, str], adapter_inspect.AdapterInfo]  # (specialist, version) → what was read
    diagnostics: list[Diagnostic]


def survey(loaded: loading.LoadedFleet) -> Survey:
    spec = loaded.spec
    found: list[Diagnostic] = []
    warning = paths.roots_warning(spec, loaded.locate)
    if warning:
        found.append(warning)
    infos: dict[tuple[str, str], adapter_inspect.AdapterInfo] = {}
    cache: dict[pathlib.Path, adapter_inspect.AdapterInfo] = {}
    confinement = paths.Confinement(spec.runtime.adapter_roots, loaded.base_dir)
    for index, specialist in enumerate(spec.specialists):
        for where, version in checks.version_fields(index, specialist):
            raw = specialist.version_entry(version).path
            info = _read_one(loaded, confinement, raw, where, cache, found)
            if info is not None:
                infos[(specialist.name, version)] = info
    return Survey(infos, found)


def review(loaded: loading.LoadedFleet) -> Survey:
    """Read every adapter of the fleet and check it against the base model and its servers:
    what `fleetspec adapters check` reports, and what `fleetspec plan` adds to its findings."""
    found = survey(loaded)
    architecture, embedding_lora, notes = base_facts(loaded)
    diagnostics = found.diagnostics + notes + checks.check_fleet(
        loaded.spec, found.infos, architecture, embedding_lora, loaded.locate)
    return Survey(found.infos, sorted(diagnostics, key=errors.sort_key))


def _read_one(loaded, confinement: paths.Confinement, raw: str, where: tuple, cache: dict,
              found: list) -> adapter_inspect.AdapterInfo | None:
    real, refused = confinement.check(raw, where, loaded.locate)
    found += refused
    if real is None:
        return None
    if real in cache:
        return cache[real]
    try:
        info = adapter_inspect.inspect(real)
    except adapter_inspect.AdapterNotFound:
        found.append(loaded.diagnostic(
            Severity.ERROR, "adapter-missing", where, f"the adapter directory {raw} does not exist (looked for {real})",
            f"check the path; relative paths start from the fleet file's directory {loaded.base_dir}",
        ))
        return None
    except OSError as exc:
        found.append(loaded.diagnostic(
            Severity.ERROR, "adapter-unreadable", where, f"the adapter at {raw} cannot be read: {exc.strerror or exc}",
            "give the user running fleetspec read access to the adapter directory",
        ))
        return None
    cache[real] = info
    return info


def base_facts(loaded: loading.LoadedFleet) -> tuple[models.Architecture | None, bool, list[Diagnostic]]:
    """The base model's architecture and whether vLLM gives it embedding LoRA (catalog.models.resolve).

    With no facts (a model neither the catalog nor the fleet file describes), shapes and modules go
    unchecked and one info diagnostic says so.
    """
    facts = catalog_models.resolve(loaded.spec.base_model)
    if facts is not None:
        return facts.architecture, facts.embedding_lora, []
    return None, False, [loaded.diagnostic(
        Severity.INFO, "adapter-base-facts-unknown", ("base_model", "id"),
        f"fleetspec has no architecture facts for {loaded.spec.base_model.id}, so adapter shapes and modules "
        "were not checked",
        "add base_model.architecture (the config.json values) to the fleet file",
    )]
