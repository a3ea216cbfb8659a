"""What applying new manifests does to a cluster: two compiled manifest sets in, one line per object
that changes, each saying whether it is hot or restarts pods. Pure; `fleetspec plan --against` shows it
for fleets with `runtime.target: k8s` (what would this pull request, or its revert, do?).

- an adapter set ConfigMap (`vllm-<server>-adapters`): hot, the agent in every pod of the server
  loads the new versions, then unloads the old ones; no restart (kubelet delivers it within ~1 min);
- the router's ConfigMap: hot, the router re-reads its config;
- a Deployment whose pod template changed: a rollout, its pods are replaced one by one;
- a Deployment whose replica count alone changed: a scale, running pods keep running;
- anything else (Services, Ingress, claims): applied in place, no pod restarts.
"""

from __future__ import annotations

import dataclasses

import yaml

from fleetspec.compile import adapter_set

HOT, ROLLOUT, SCALE, IN_PLACE, CREATE, DELETE = "hot", "rollout", "scale", "in place", "create", "delete"


@dataclasses.dataclass(frozen=True)
class ObjectChange:
    kind: str
    name: str
    effect: str
    detail: str

    @property
    def restarts(self) -> bool:
        return self.effect in (ROLLOUT, DELETE) and self.kind == "Deployment"

    def line(self) -> str:
        symbol = {CREATE: "+", DELETE: "-"}.get(self.effect, "~")
        return f"{symbol} {self.kind} {self.name} ({self.effect}): {self.detail}"

    def to_json(self) -> dict:
        return {**dataclasses.asdict(self), "restarts": self.restarts}


def objects(files: dict[str, str]) -> dict[tuple[str, str], dict]:
    """(kind, name) → object, from every document of every manifest file (a file holds several)."""
    found = {}
    for name, text in files.items():
        if name == "kustomization.yaml":
            continue
        for document in yaml.safe_load_all(text):
            if document is not None:  # an empty document (`---` twice) is no object, to kustomize either
                found[(document["kind"], document["metadata"]["name"])] = document
    return found


def compare(old_files: dict[str, str], new_files: dict[str, str]) -> list[ObjectChange]:
    old, new = objects(old_files), objects(new_files)
    changes = []
    for key in sorted(set(old) | set(new)):
        kind, name = key
        if key not in old:
            changes.append(ObjectChange(kind, name, CREATE, "new object"))
        elif key not in new:
            what = (
                "its pods stop" if kind == "Deployment" else "removed (kubectl apply --prune, or delete it)"
            )
            changes.append(ObjectChange(kind, name, DELETE, what))
        elif old[key] != new[key]:
            changes.append(_changed(kind, name, old[key], new[key]))
    return changes


def _changed(kind: str, name: str, old: dict, new: dict) -> ObjectChange:
    if kind == "ConfigMap" and adapter_set.FILE in (new.get("data") or {}):
        return ObjectChange(kind, name, HOT, _adapter_detail(old, new))
    if kind == "ConfigMap":
        return ObjectChange(
            kind, name, HOT, "its readers re-read it (the router reloads its config); no restart"
        )
    if kind == "Deployment":
        old_template, new_template = old["spec"]["template"], new["spec"]["template"]
        if old_template != new_template:
            return ObjectChange(
                kind,
                name,
                ROLLOUT,
                "pods are replaced one by one: " + _template_detail(old_template, new_template),
            )
        before, after = old["spec"].get("replicas"), new["spec"].get("replicas")
        if before != after:
            return ObjectChange(kind, name, SCALE, f"replicas {before} → {after}; running pods keep running")
    return ObjectChange(kind, name, IN_PLACE, "updated in place; no pod restarts")


def _adapter_detail(old: dict, new: dict) -> str:
    def mappings(document: dict) -> tuple[dict[str, str], dict[str, str]]:
        try:
            parsed = adapter_set.parse(document["data"][adapter_set.FILE])
        except (KeyError, TypeError, adapter_set.AdapterSetError):
            return {}, {}
        return parsed.mapping, parsed.on_demand_mapping

    (before, before_on_demand), (after, after_on_demand) = mappings(old), mappings(new)
    # The agent's rule (`reconcile.diff`): an on-demand adapter is neither loaded nor unloaded while listed.
    added = sorted(n for n in after if before.get(n) != after[n])
    removed = sorted(n for n in {**before, **before_on_demand} if n not in after and n not in after_on_demand)
    allowed = sorted(n for n in after_on_demand if before_on_demand.get(n) != after_on_demand[n])
    steps = []
    if added:
        steps.append(f"load {', '.join(added)}")
    if removed:
        steps.append(f"then unload {', '.join(removed)}" if added else f"unload {', '.join(removed)}")
    what = " ".join(steps) or "no adapter changes"
    if allowed:
        what += f" (and leave {', '.join(allowed)} to the router's on-demand loads)"
    return f"the agent in each pod will {what}; no restart"


def _template_detail(old: dict, new: dict) -> str:
    lines = []
    old_spec, new_spec = old.get("spec", {}), new.get("spec", {})
    old_containers = {c["name"]: c for c in old_spec.get("containers", [])}
    for container in new_spec.get("containers", []):
        before = old_containers.get(container["name"])
        if before is None:
            lines.append(f"container {container['name']} added")
            continue
        fields = [f for f in sorted(set(before) | set(container)) if before.get(f) != container.get(f)]
        shown = [
            _command_detail(before.get(f) or [], container.get(f) or []) if f == "command" else f
            for f in fields
        ]
        if shown:
            lines.append(f"{container['name']} {', '.join(shown)}")
    gone = set(old_containers) - {c["name"] for c in new_spec.get("containers", [])}
    lines += [f"container {name} removed" for name in sorted(gone)]
    if old_spec.get("volumes") != new_spec.get("volumes"):
        lines.append("volumes")
    if old.get("metadata") != new.get("metadata"):
        lines.append("pod labels")
    return "; ".join(lines) or "pod settings"


def _command_detail(old: list[str], new: list[str]) -> str:
    """`--max-num-seqs 14 → 16`: the flags whose values differ, else just "command"."""

    def flags(argv: list[str]) -> dict[str, str]:
        found, current = {}, None
        for word in argv:
            if word.startswith("--"):
                current = word
                found[current] = ""
            elif current is not None:
                found[current] = f"{found[current]} {word}".strip()
        return found

    before, after = flags(old), flags(new)
    changed = [
        f"{flag} {before.get(flag, '(unset)') or 'on'} → {after.get(flag, '(unset)') or 'on'}"
        for flag in sorted(set(before) | set(after))
        if before.get(flag) != after.get(flag)
    ]
    return "command (" + "; ".join(changed) + ")" if changed else "command"
