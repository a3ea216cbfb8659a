"""The shipped templates are safe by construction, so compile does not load their output back
(templating's docstring): these tests are that proof. Every printed value passes `q`, and what they
render from hostile values and from every example reads back as exactly what was compiled (the
check that still runs on every override template at compile time)."""

from __future__ import annotations

import pathlib

import jinja2.nodes
import pytest
import yaml
from test_compile_injection import nasty_spec  # noqa: E402  (the hostile fleet of the injection tests)

from fleetspec.compile import compose, k8s, slots, templating
from fleetspec.planner import report
from fleetspec.spec import loading

ROOT = pathlib.Path(__file__).resolve().parents[2]
SHIPPED = sorted(p.relative_to(templating._default_dir()).as_posix() for p in templating._default_dir().rglob("*.j2"))
EXAMPLES = sorted(ROOT.glob("examples/*.yaml")) + [ROOT / "fleet.yaml"]


def _unquoted_outputs(source: str) -> list[int]:
    """Lines of `{{ }}` expressions that print something other than `x | q` or a macro of the template."""
    tree = templating.environment().parse(source)
    macros = {m.name for m in tree.find_all(jinja2.nodes.Macro)}
    bad = []
    for output in tree.find_all(jinja2.nodes.Output):
        for node in output.nodes:
            if isinstance(node, jinja2.nodes.TemplateData):
                continue
            quoted = isinstance(node, jinja2.nodes.Filter) and node.name == "q"
            macro = isinstance(node, jinja2.nodes.Call) and isinstance(node.node, jinja2.nodes.Name) \
                and node.node.name in macros
            if not (quoted or macro):
                bad.append(node.lineno)
    return bad


def test_the_static_check_sees_a_bare_value():
    assert _unquoted_outputs('a: {{ x | q }}\nb: {{ x }}\nc: {{ x | lower }}\n') == [2, 3]


@pytest.mark.parametrize("name", SHIPPED)
def test_every_value_a_shipped_template_prints_passes_q(name):
    assert _unquoted_outputs((templating._default_dir() / name).read_text(encoding="utf-8")) == []


@pytest.mark.parametrize("fleet", [None, *EXAMPLES], ids=["nasty", *(p.stem for p in EXAMPLES)])
def test_shipped_output_reads_back_as_compiled(fleet):
    spec, base_dir = (nasty_spec(), None) if fleet is None else (loading.load_path(fleet).spec, pathlib.Path("/srv/fleet"))
    plan = report.plan_fleet(spec)
    placed = slots.from_plan(plan) if plan.fits else slots.sequential(spec)
    files = compose.compile_project(spec, placed, base_dir)
    compose.check(templating.parse_back(compose.TEMPLATE, files[compose.COMPOSE_FILE]),
                  compose.services(spec, placed, base_dir))
    manifests = k8s.compile_manifests(spec, placed, base_dir)
    listed = k8s.objects(spec, placed, base_dir)
    files = list(dict.fromkeys(file for file, *_ in listed))
    for file in files:  # a file's documents are its listed objects, in order, each one template's output
        here = [entry for entry in listed if entry[0] == file]
        texts = manifests[file].split(k8s.DOCUMENT_SEPARATOR)
        assert len(texts) == len(here) == len(list(yaml.safe_load_all(manifests[file]))), file
        for text, (_, template, view, kind, object_name) in zip(texts, here, strict=True):
            k8s.check(templating.parse_back(template, text), template, kind, object_name, view)
    k8s.check_kustomization(yaml.safe_load(manifests[k8s.KUSTOMIZATION]), files)


def test_an_override_that_renders_valid_yaml_but_other_values_is_refused(tmp_path):
    (tmp_path / "k8s").mkdir()
    shipped = (templating._default_dir() / "k8s" / "deployment.yaml.j2").read_text(encoding="utf-8")
    (tmp_path / "k8s" / "deployment.yaml.j2").write_text(shipped.replace("{% for word in c.command %}",
                                                                          "{% for word in c.command[1:] %}"))
    spec = nasty_spec()
    with pytest.raises(templating.TemplateError, match="with a different command"):
        k8s.compile_manifests(spec, slots.sequential(spec), templates=tmp_path)
