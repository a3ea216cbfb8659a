"""Adapter paths stay inside runtime.adapter_roots: no `..`, no symbolic links out."""

from __future__ import annotations

import os
import pathlib

import adapter_factory
import pytest

from fleetspec.adapters import paths
from fleetspec.errors import Location, Severity
from fleetspec.spec import models

WHERE = ("specialists", 1, "path")


@pytest.fixture
def layout(tmp_path):
    """fleet dir with adapters/ (the root), an adapter inside it, and a secret outside."""
    fleet = tmp_path / "fleet"
    root = fleet / "adapters"
    adapter_factory.write_adapter(root / "sql" / "v1")
    outside = tmp_path / "outside"
    adapter_factory.write_adapter(outside / "evil")
    return fleet, root, outside


def test_a_relative_path_inside_the_root_is_allowed(layout):
    fleet, root, _ = layout
    real, found = paths.check_path("adapters/sql/v1", fleet, ["adapters"], WHERE)
    assert found == []
    assert real == root / "sql" / "v1"


def test_an_absolute_path_inside_the_root_is_allowed(layout):
    fleet, root, _ = layout
    assert paths.check_path(str(root / "sql" / "v1"), fleet, ["./adapters"]) == (root / "sql" / "v1", [])


def test_dotdot_inside_the_root_is_harmless(layout):
    fleet, root, _ = layout
    real, found = paths.check_path("adapters/sql/../sql/v1", fleet, ["adapters"])
    assert (real, found) == (root / "sql" / "v1", [])


def test_dotdot_escaping_the_root_is_refused(layout):
    fleet, _, outside = layout
    located = Location("fleet.yaml", 30, 11)
    real, [diagnostic] = paths.check_path("adapters/../../outside/evil", fleet, ["adapters"], WHERE,
                                          lambda path: located if path == WHERE else None)
    assert real is None
    assert (diagnostic.severity, diagnostic.code, diagnostic.path, diagnostic.location) == (
        Severity.ERROR, "adapter-path-escapes-root", "specialists[1].path", located)
    assert diagnostic.message == (f"the adapter path adapters/../../outside/evil climbs out of the adapter roots "
                                  f"(adapters) with '..' and lands on {outside / 'evil'}")


def test_a_path_outside_every_root_is_refused(layout):
    fleet, _, outside = layout
    _, [diagnostic] = paths.check_path(str(outside / "evil"), fleet, ["adapters"], WHERE)
    assert diagnostic.code == "adapter-path-outside-roots"
    assert diagnostic.hint == ("move the adapter under one of runtime.adapter_roots, or add its directory to "
                               "adapter_roots")


def test_a_symlinked_directory_leading_out_is_refused(layout):
    fleet, root, outside = layout
    os.symlink(outside / "evil", root / "sneaky")
    real, [diagnostic] = paths.check_path("adapters/sneaky", fleet, ["adapters"], WHERE)
    assert real is None
    assert diagnostic.code == "adapter-path-symlink-escape"
    assert f"{root / 'sneaky'} leads to {outside / 'evil'}" in diagnostic.message


def test_a_symlinked_file_inside_the_adapter_is_refused(layout):
    fleet, root, outside = layout
    weights = root / "sql" / "v1" / "adapter_model.safetensors"
    weights.unlink()
    os.symlink(outside / "evil" / "adapter_model.safetensors", weights)
    _, [diagnostic] = paths.check_path("adapters/sql/v1", fleet, ["adapters"], WHERE)
    assert diagnostic.code == "adapter-path-symlink-escape"
    assert str(weights) in diagnostic.message


def test_a_dangling_link_out_of_the_root_is_refused(layout):
    fleet, root, _ = layout
    os.symlink("/etc/passwd-does-not-exist", root / "sql" / "v1" / "adapter_model.bin")
    _, [diagnostic] = paths.check_path("adapters/sql/v1", fleet, ["adapters"], WHERE)
    assert diagnostic.code == "adapter-path-symlink-escape"


def test_links_that_stay_inside_the_roots_are_fine(layout):
    fleet, root, _ = layout
    os.symlink(root / "sql" / "v1", root / "current")
    assert paths.check_path("adapters/current", fleet, ["adapters"]) == (root / "sql" / "v1", [])


def test_a_root_that_is_itself_a_link(layout, tmp_path):
    fleet, root, _ = layout
    os.symlink(root, tmp_path / "alias")
    real, found = paths.check_path(str(tmp_path / "alias" / "sql" / "v1"), fleet, [str(tmp_path / "alias")])
    assert (real, found) == (root / "sql" / "v1", [])


def test_without_roots_paths_are_allowed_and_made_absolute(tmp_path):
    assert paths.check_path("a/../b", tmp_path, []) == (tmp_path / "b", [])
    assert paths.absolute("~/x", pathlib.Path("/base")) == pathlib.Path.home() / "x"


def spec(roots, specialists=True) -> models.FleetSpec:
    return models.FleetSpec.model_validate({
        "name": "f", "base_model": {"id": "m"}, "gpus": "1x H100-80GB", "servers": [{"name": "main", "lora": {}}],
        "specialists": [{"name": "sql", "version": "1", "path": "/a"}] if specialists else [],
        "runtime": {"adapter_roots": roots},
    })


def test_a_fleet_without_roots_gets_one_warning():
    warning = paths.roots_warning(spec([]))
    assert (warning.severity, warning.code, warning.path) == (
        Severity.WARNING, "adapter-roots-undeclared", "runtime.adapter_roots")
    assert warning.hint == "declare the directories that hold your adapters, e.g. runtime: {adapter_roots: [/adapters]}"
    assert paths.roots_warning(spec(["/adapters"])) is None
    assert paths.roots_warning(spec([], specialists=False)) is None
