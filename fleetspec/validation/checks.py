"""The full validation of a loaded fleet file: the spec's own cross-field checks, what vLLM refuses
at start-up for this model (the planner's rules over the catalog's facts), and the routing analysis
(`routing.checks`), plus the located plan that `fleetspec plan` and apply report.

Pure: takes a LoadedFleet (for locations) and returns diagnostics; never raises for user mistakes.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Mapping, Sequence

from fleetspec import errors
from fleetspec.catalog import models as catalog_models
from fleetspec.catalog import vllm_flags
from fleetspec.errors import Diagnostic
from fleetspec.planner import findings, report
from fleetspec.routing import checks as routing_checks
from fleetspec.spec import checks as spec_checks
from fleetspec.spec import models as spec_models


def check(fleet) -> list[Diagnostic]:
    """Every cross-field problem of the fleet (errors and warnings)."""
    found = spec_checks.check_fields(fleet) + list(_engine_refusals(fleet)) + list(_extra_args(fleet))
    if not any(d.is_error for d in found):  # routing analysis assumes every target resolves
        found.extend(routing_checks.check(fleet))
    return found


def _engine_refusals(fleet) -> Iterator[Diagnostic]:
    """What vLLM refuses at start-up for this model (tensor parallel splits, LoRA support, context
    length), from the catalog's facts; the planner owns these rules, validation reports them too."""
    facts = catalog_models.resolve(fleet.spec.base_model)
    if facts is None:
        return  # `fleetspec plan` asks for base_model.architecture; validation has nothing to check
    for found in findings.model_findings(fleet.spec, facts):
        yield dataclasses.replace(found, location=fleet.locate(report.parse_path(found.path)))


def _extra_args(fleet) -> Iterator[Diagnostic]:
    """extra_args words vLLM would refuse, or that override a flag fleetspec compiles (`--port`), located
    at the word: compile refuses them too, but validate is where a pull request should hear it."""
    version = fleet.spec.runtime.vllm_version
    for index, server in enumerate(fleet.spec.servers):
        for position, word in enumerate(server.extra_args):
            for code, message, hint in vllm_flags.extra_arg_problems(word, version):
                yield fleet.diagnostic(errors.Severity.ERROR, code, ("servers", index, "extra_args", position),
                                       message, hint)


def plan_loaded(loaded, gpus_override: Sequence[spec_models.GpuGroup] | None = None,
                inspected: Mapping[tuple[str, str], report.InspectedAdapter] | None = None,
                extra: Sequence[Diagnostic] = ()) -> report.FleetPlan:
    """Cross-field checks and the memory plan of a loaded fleet file, as one list of findings.

    Where a check and the planner report the same problem (same code and path), the planner's
    version is kept: it carries a fix computed from the memory model.
    """
    checked = list(check(loaded)) + list(extra)
    planned = report.plan_fleet(loaded.spec, gpus_override, locate=loaded.locate, inspected=inspected)
    seen = {(f.code, f.path) for f in planned.findings}
    merged = [d for d in checked if (d.code, d.path) not in seen] + list(planned.findings)
    return dataclasses.replace(planned, findings=tuple(sorted(merged, key=errors.sort_key)))
