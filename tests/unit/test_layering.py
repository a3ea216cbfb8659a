"""The layering contract: every fleetspec module imports only from its own layer or lower ones.

Walks the source with `ast` (nothing is imported), so every import counts: module level,
inside functions, under `if TYPE_CHECKING:`. No allowlist and no exceptions: a new package or
top-level module fails here until it is given a layer in LAYERS.

Layers, lowest first (docs/architecture.md draws the same picture):

0. the package root and `errors`: the diagnostics and exception types everything reports with.
1. `spec`: the fleet file's models, loading, derived names, and field checks that need nothing
   but the spec itself.
2. `catalog`: model, GPU, quantization and vLLM flag facts (data + lookups, keyed by spec types).
3. `adapters`: pure inspection of LoRA adapter files (headers, sizes, layout) against the spec.
4. `planner`: the memory model and GPU placement (catalog numbers applied to the spec).
5. `routing`: the routing table, its matchers and splits, the routing checks, and the router's
   config document. Pure; shared by compile, `fleetspec route` and the router server, so it sits
   below all three. The embedding tier loads its model lazily, only when a fleet enables it.
6. `validation`: cross-stage checks of a loaded fleet (spec checks + planner findings + routing
   analysis) and the located plan; above planner and routing because it needs both.
7. `compile`: fleet → manifests, vLLM argv, the desired containers and the label names they carry.
8. `engine_api`: the one vLLM HTTP contract and client; needs nothing of compile, but everything
   that talks to engines (reconcile, router) is above it.
9. `drivers`: the effectful runtime shell (Docker, local processes, the state file on disk).
10. `images`: offline-built images; needs the Docker driver, used by reconcile.
11. `reconcile`: observe, diff, plan, apply.
12. `sim`, `router` (the server), `watch`, `agent` (the pod sidecar): long-running programs built on the
    layers below.
13. `cli` and `fleetspec.__main__`: the commands.

Within a layer, modules may import each other, but packages must never form an import cycle.
"""

from __future__ import annotations

import ast
import pathlib

import fleetspec

ROOT = pathlib.Path(fleetspec.__file__).resolve().parent

LAYERS: tuple[tuple[str, ...], ...] = (
    ("", "errors"),  # "": the package root itself (`import fleetspec`)
    ("spec",),
    ("catalog",),
    ("adapters",),
    ("planner",),
    ("routing",),
    ("validation",),
    ("compile",),
    ("engine_api",),
    ("drivers",),
    ("images",),
    ("reconcile",),
    ("sim", "router", "watch", "agent"),
    ("cli", "__main__"),
)
LAYER_OF = {unit: index for index, units in enumerate(LAYERS) for unit in units}


def module_name(path: pathlib.Path) -> str:
    parts = ("fleetspec", *path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def unit_of(module: str) -> str:
    """The layer unit of a dotted fleetspec module: its top-level package or module ("" for the root)."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def sources() -> dict[str, pathlib.Path]:
    return {module_name(p): p for p in sorted(ROOT.rglob("*.py"))}


def imported_modules(module: str, path: pathlib.Path, known: set[str]) -> list[tuple[int, str]]:
    """(line, module) for every fleetspec module `path` imports, wherever the import statement is."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            found.extend((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            for alias in node.names:  # `from fleetspec import errors` imports fleetspec.errors
                sub = f"{base}.{alias.name}"
                found.append((node.lineno, sub if sub in known else base))
    return [(line, name) for line, name in found if name == "fleetspec" or name.startswith("fleetspec.")]


def import_edges() -> list[tuple[str, int, str]]:
    modules = sources()
    known = set(modules)
    return [(module, line, target) for module, path in modules.items()
            for line, target in imported_modules(module, path, known)]


def test_every_package_has_a_layer():
    units = {unit_of(m) for m in sources()}
    missing = sorted(units - set(LAYER_OF))
    assert not missing, f"fleetspec units without a layer (add them to LAYERS with a reason): {missing}"
    stale = sorted(set(LAYER_OF) - units)
    assert not stale, f"LAYERS names units that no longer exist: {stale}"


def test_no_module_imports_a_higher_layer():
    upward = []
    for module, line, target in import_edges():
        source, dest = unit_of(module), unit_of(target)
        if LAYER_OF.get(dest, -1) > LAYER_OF.get(source, len(LAYERS)):
            upward.append(f"{module}:{line} imports {target} "
                          f"(layer {LAYER_OF[source]} {source or 'fleetspec'} → layer {LAYER_OF[dest]} {dest})")
    assert not upward, "imports that go up the layers:\n" + "\n".join(upward)


def test_packages_form_no_import_cycle():
    graph: dict[str, set[str]] = {}
    for module, _, target in import_edges():
        source, dest = unit_of(module), unit_of(target)
        if source != dest:
            graph.setdefault(source, set()).add(dest)
    cycles = []

    def visit(node: str, trail: list[str]) -> None:
        for nxt in sorted(graph.get(node, ())):
            if nxt in trail:
                cycles.append(" → ".join([*trail[trail.index(nxt):], nxt]))
            elif nxt not in done:
                visit(nxt, [*trail, nxt])
        done.add(node)

    done: set[str] = set()
    for start in sorted(graph):
        if start not in done:
            visit(start, [start])
    assert not cycles, "package import cycles:\n" + "\n".join(sorted(set(cycles)))


def test_the_walk_sees_function_level_and_type_checking_imports(tmp_path):
    """The contract counts imports wherever they are written (a guard against a lazy walk)."""
    probe = tmp_path / "probe.py"
    probe.write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from fleetspec.cli import app\n"
                     "def f():\n    import fleetspec.router.server\n    from fleetspec import errors\n")
    found = [m for _, m in imported_modules("fleetspec.spec.probe", probe, {"fleetspec.errors"})]
    assert found == ["fleetspec.cli", "fleetspec.router.server", "fleetspec.errors"]
