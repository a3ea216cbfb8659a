"""The desired adapter set of one server: the document in its ConfigMap that the pod's agent serves.

Written by `compile.k8s` (one ConfigMap per server, mounted into every pod of its Deployment) and read
by `fleetspec agent` (`agent.loop`), so both ends of the format live here. An adapter change is then
a ConfigMap change: the pod template, and so the pods, stay as they are.

    {"format": "fleetspec-adapters/1", "fleet": "f", "server": "main", "base": "f-base",
     "adapters": {"sql--2": "/adapters/sql/2", ...},
     "on_demand": {"legal--1": "/adapters/legal/1", ...}}

`adapters` is required: the agent loads each one and keeps it loaded. `on_demand` (`preload:
false` specialists) is allowed, not required: the router loads those on the first request and
vLLM's LRU evicts them, so the agent neither loads nor unloads one while the document lists it, and
unloads it once it leaves the document (`reconcile.diff`'s rule, as in `fleetspec apply`).

Format versions: the number changes only when an older agent, ignoring what it does not know,
would serve something wrong. `on_demand` came later without a change: it is optional (a document
without it has no on-demand adapters), and an agent from before it ignores the key and only treats
an adapter the router loaded on demand as drift (it unloads it; the router loads it again on the
next request, a slower first answer and nothing worse), whereas a new number would make every
older agent refuse every new document (no adapter change applied on pods not yet rolled to the new
image). A required key that changes what serves would need `fleetspec-adapters/2`.

`parse` refuses anything else with a sentence that says what is wrong: the agent keeps serving the
last good set and reports that sentence, so it must make sense to whoever edited the ConfigMap.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
import re

from fleetspec.compile import vllm_args
from fleetspec.spec import derived, models

FORMAT = "fleetspec-adapters/1"
FILE = "adapters.json"
_SERVED_NAME = re.compile(models.ADAPTER_NAME_PATTERN)
MAX_ADAPTERS = 4_096  # required and on demand together: far above any max_cpu_loras; more is a mistake


class AdapterSetError(ValueError):
    """The document cannot be served; the message says why, for the operator."""


@dataclasses.dataclass(frozen=True)
class AdapterSet:
    server: str
    base: str  # served name of the base model, which must answer too
    adapters: tuple[tuple[str, str], ...]  # (served name, path), sorted: required, kept loaded
    on_demand: tuple[tuple[str, str], ...] = ()  # (served name, path), sorted: allowed, not required

    @property
    def mapping(self) -> dict[str, str]:
        return dict(self.adapters)

    @property
    def on_demand_mapping(self) -> dict[str, str]:
        return dict(self.on_demand)

    def to_json(self) -> dict:
        return {
            "server": self.server,
            "base": self.base,
            "adapters": self.mapping,
            "on_demand": self.on_demand_mapping,
        }


def document(spec: models.FleetSpec, server: models.Server, base_dir: pathlib.Path | None = None) -> dict:
    adapters = {a.served_name: a.path for a in vllm_args.served_adapters(spec, server, base_dir)}
    on_demand = {a.served_name: a.path for a in vllm_args.on_demand_adapters(spec, server, base_dir)}
    return {
        "format": FORMAT,
        "fleet": spec.name,
        "server": server.name,
        "base": derived.served_base_name(spec),
        "adapters": dict(sorted(adapters.items())),
        "on_demand": dict(sorted(on_demand.items())),
    }


def to_text(doc: dict) -> str:
    return json.dumps(doc, indent=2, sort_keys=True) + "\n"


def parse(text: str) -> AdapterSet:
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        raise AdapterSetError(
            f"{FILE} is not valid JSON ({exc.msg} at line {exc.lineno}, column {exc.colno})"
        ) from None
    if not isinstance(doc, dict):
        raise AdapterSetError(f"{FILE} must hold a JSON object, not {type(doc).__name__}")
    if doc.get("format") != FORMAT:
        raise AdapterSetError(
            f"{FILE} has format {doc.get('format')!r}; this agent reads {FORMAT!r} "
            "(recompile with the fleetspec release the agent image has)"
        )
    server, base, adapters = doc.get("server"), doc.get("base"), doc.get("adapters")
    on_demand = doc.get("on_demand", {})  # absent in documents compiled before on-demand adapters
    if not isinstance(server, str) or not isinstance(base, str) or not base:
        raise AdapterSetError(f"{FILE} needs `server` and `base` as text")
    if not isinstance(adapters, dict):
        raise AdapterSetError(f"{FILE} needs `adapters` as an object of served name → adapter path")
    if not isinstance(on_demand, dict):
        raise AdapterSetError(
            f"{FILE} needs `on_demand`, when present, as an object of served name → adapter path"
        )
    if len(adapters) + len(on_demand) > MAX_ADAPTERS:
        raise AdapterSetError(
            f"{FILE} lists {len(adapters) + len(on_demand)} adapters; no server holds more than {MAX_ADAPTERS}"
        )
    for mapping in (adapters, on_demand):
        _check(mapping, base)
    both = sorted(set(adapters) & set(on_demand))
    if both:
        raise AdapterSetError(
            f"{', '.join(both)} in {FILE} {'is' if len(both) == 1 else 'are'} both in `adapters` (required) "
            "and in `on_demand` (loaded when asked for): list each adapter once"
        )
    return AdapterSet(server, base, tuple(sorted(adapters.items())), tuple(sorted(on_demand.items())))


def _check(adapters: dict, base: str) -> None:
    for name, path in adapters.items():
        if not _SERVED_NAME.match(name):
            raise AdapterSetError(
                f"adapter name {name!r} in {FILE} is not a name vLLM can serve "
                "(letters, digits, `.`, `_`, `-`)"
            )
        if not isinstance(path, str) or not path.strip():
            raise AdapterSetError(f"adapter {name} in {FILE} needs its path as text")
        if name == base:
            raise AdapterSetError(f"adapter {name} in {FILE} has the base model's served name")
