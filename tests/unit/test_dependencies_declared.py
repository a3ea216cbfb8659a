"""What fleetspec imports is what pyproject.toml declares, and the runtime dependencies are nothing more.

Every `import` statement under fleetspec/ is read with `ast` (imports inside functions included) and its
top-level module mapped to the distribution that provides it (`importlib.metadata.packages_distributions`):
- an import that runs when the module is imported (module level, class bodies, top-level try/if) needs a
  distribution in `[project].dependencies`;
- an import inside a function may instead come from an optional extra (not `test`: fleetspec itself never
  needs a test tool), so that fleetspec works without the extra until the feature is used;
- every runtime dependency is imported somewhere (a test-only package belongs in the `test` extra);
- vLLM is never imported: fleetspec launches it (scripts/setup-vllm installs it in its own virtualenv).
"""

from __future__ import annotations

import ast
import dataclasses
import functools
import importlib.metadata
import pathlib
import re
import sys
import tomllib

ROOT = pathlib.Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "fleetspec"
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
TEST_EXTRA = "test"
_NAME = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)")


def normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def requirement_names(requirements: list[str]) -> set[str]:
    return {normalise(_NAME.match(r).group(1)) for r in requirements}


RUNTIME = requirement_names(PYPROJECT["dependencies"])
EXTRAS = {extra: requirement_names(reqs) for extra, reqs in PYPROJECT.get("optional-dependencies", {}).items()}


@dataclasses.dataclass(frozen=True)
class Import:
    module: str  # top-level module name
    where: str  # path:line
    lazy: bool  # inside a function (or an `if TYPE_CHECKING:` block): does not run on import


class _Imports(ast.NodeVisitor):
    def __init__(self, path: pathlib.Path):
        self.path = path.relative_to(ROOT).as_posix()
        self.depth = 0
        self.found: list[Import] = []

    def _function(self, node) -> None:
        self.depth += 1
        self.generic_visit(node)
        self.depth -= 1

    visit_FunctionDef = visit_AsyncFunctionDef = visit_Lambda = _function

    def visit_If(self, node: ast.If) -> None:
        test = node.test
        if (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or \
                (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"):
            self.depth += 1
            for child in node.body:
                self.visit(child)
            self.depth -= 1
            for child in node.orelse:
                self.visit(child)
            return
        self.generic_visit(node)

    def _add(self, module: str, node: ast.AST) -> None:
        self.found.append(Import(module.split(".")[0], f"{self.path}:{node.lineno}", self.depth > 0))

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            self._add(alias.name, node)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        if node.level == 0 and node.module:  # relative imports stay inside fleetspec
            self._add(node.module, node)


@functools.cache
def third_party_imports() -> tuple[Import, ...]:
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        visitor = _Imports(path)
        visitor.visit(ast.parse(path.read_text(encoding="utf-8"), str(path)))
        found += [i for i in visitor.found if i.module != "fleetspec" and i.module not in sys.stdlib_module_names]
    return tuple(found)


@functools.cache
def _installed() -> dict[str, list[str]]:
    return importlib.metadata.packages_distributions()


def distributions(module: str) -> set[str]:
    """The distributions that provide `module`: the installed ones, else (an extra that is not installed
    here) a declared requirement of the same name, such as `sentence_transformers` → sentence-transformers."""
    installed = _installed().get(module)
    if installed:
        return {normalise(d) for d in installed}
    declared = RUNTIME.union(*EXTRAS.values())
    return {normalise(module)} & declared


def problem(found: Import) -> str | None:
    dists = distributions(found.module)
    if not dists:
        return f"{found.where}: `{found.module}` is neither installed nor declared in pyproject.toml"
    if dists & RUNTIME:
        return None
    if not found.lazy:
        return (f"{found.where}: `{found.module}` ({', '.join(sorted(dists))}) is imported when the module "
                "is, so it must be in [project].dependencies")
    extras = sorted(e for e, names in EXTRAS.items() if e != TEST_EXTRA and dists & names)
    if extras:
        return None
    return (f"{found.where}: `{found.module}` ({', '.join(sorted(dists))}) is in no runtime dependency or "
            f"optional extra (the `{TEST_EXTRA}` extra does not count: fleetspec never needs a test tool)")


def test_the_walk_sees_imports_inside_functions_and_top_level_blocks():
    imports = third_party_imports()
    assert any(i.module == "pydantic" and not i.lazy for i in imports)
    assert any(i.module == "sentence_transformers" and i.lazy for i in imports)  # the embedding extra


def test_every_import_of_fleetspec_is_declared():
    problems = sorted(filter(None, (problem(i) for i in third_party_imports())))
    assert problems == []


def test_every_runtime_dependency_is_imported_by_fleetspec():
    imported = set().union(*(distributions(i.module) for i in third_party_imports()))
    assert sorted(RUNTIME - imported) == [], "runtime dependencies fleetspec never imports: move them to an extra"


def test_vllm_is_launched_never_imported():
    assert [i.where for i in third_party_imports() if i.module == "vllm"] == []
    assert "vllm" not in RUNTIME


def test_a_top_level_import_of_an_extra_is_refused():
    assert problem(Import("sentence_transformers", "x.py:1", lazy=True)) is None
    assert "must be in [project].dependencies" in problem(Import("sentence_transformers", "x.py:1", lazy=False))
    assert "test" in problem(Import("hypothesis", "x.py:1", lazy=True))
