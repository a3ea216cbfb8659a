"""Offline image recipe pieces that need no engine: mirror discovery, dependency closure, input hash."""

from __future__ import annotations

import pathlib

import pytest

from fleetspec.images import payload, rootfs


@pytest.fixture
def apt_dir(tmp_path: pathlib.Path) -> pathlib.Path:
    (tmp_path / "sources.list.d").mkdir()
    return tmp_path


def test_mirror_comes_from_deb822_sources(apt_dir, monkeypatch):
    monkeypatch.delenv("FLEETSPEC_DEBIAN_MIRROR", raising=False)
    (apt_dir / "sources.list.d" / "debian.sources").write_text(
        "Types: deb\n# http://snapshot.debian.org/archive/debian/20250520T000000Z\n"
        "URIs: http://mirror.example.org/debian/\nSuites: bookworm bookworm-updates\n\n"
        "Types: deb\nURIs: http://deb.debian.org/debian-security\nSuites: bookworm-security\n"
    )
    assert rootfs.find_mirror(apt_dir) == "http://mirror.example.org/debian"


def test_mirror_comes_from_one_line_sources_skipping_security_and_others(apt_dir, monkeypatch):
    monkeypatch.delenv("FLEETSPEC_DEBIAN_MIRROR", raising=False)
    (apt_dir / "sources.list").write_text(
        "deb https://packages.cloud.google.com/apt cloud-sdk-bookworm main\n"
        "# deb http://commented.example.org/debian bookworm main\n"
        "deb http://security.debian.org/debian-security bookworm-security main\n"
        "deb [arch=amd64 signed-by=/k.gpg] http://ftp.example.net/debian bookworm main\n"
    )
    assert rootfs.find_mirror(apt_dir) == "http://ftp.example.net/debian"


def test_mirror_falls_back_to_deb_debian_org_and_env_overrides(apt_dir, monkeypatch):
    monkeypatch.delenv("FLEETSPEC_DEBIAN_MIRROR", raising=False)
    assert rootfs.find_mirror(apt_dir) == "http://deb.debian.org/debian"
    monkeypatch.setenv("FLEETSPEC_DEBIAN_MIRROR", "http://local:3142/debian")
    assert rootfs.find_mirror(apt_dir) == "http://local:3142/debian"


def test_rootfs_hash_changes_with_suite_and_packages():
    assert rootfs.Recipe().inputs_hash() == rootfs.Recipe().inputs_hash()
    assert rootfs.Recipe(packages=("python3", "curl")).inputs_hash() != rootfs.Recipe().inputs_hash()
    assert rootfs.Recipe(suite="trixie").inputs_hash() != rootfs.Recipe().inputs_hash()


@pytest.mark.parametrize(
    ("requirement", "parsed"),
    [
        ("pydantic>=2.6,<3", ("pydantic", False)),
        ("typing-extensions>=4.6.1; python_version < '3.13'", ("typing-extensions", True)),
        ('email-validator>=2.0.0; extra == "email"', (None, True)),
        ("PyYAML", ("PyYAML", False)),
    ],
)
def test_requirement_lines_are_reduced_to_a_name(requirement, parsed):
    assert payload._parse(requirement) == parsed


def test_dependency_closure_follows_requirements_of_installed_packages():
    names = {d.metadata["Name"].lower().replace("_", "-") for d in payload.dependency_closure(["pydantic>=2"])}
    assert {"pydantic", "pydantic-core", "annotated-types", "typing-extensions", "typing-inspection"} <= names
    assert "email-validator" not in names  # only wanted for pydantic's `email` extra


def test_missing_unconditional_dependency_is_reported_with_the_fix():
    with pytest.raises(payload.errors.PermanentError, match=r"needs no-such-dist-xyz, which is not installed"):
        payload.dependency_closure(["no-such-dist-xyz>=1"])


def test_inputs_hash_depends_on_content_and_mode_not_insertion_order():
    a = payload.Payload(files={"x": (b"1", False), "y": (b"2", True)}, dependencies=())
    b = payload.Payload(files={"y": (b"2", True), "x": (b"1", False)}, dependencies=())
    assert a.inputs_hash("base") == b.inputs_hash("base")
    assert a.inputs_hash("base") != a.inputs_hash("other-base")
    assert payload.Payload(files={"x": (b"1", False), "y": (b"2", False)}, dependencies=()).inputs_hash(
        "base") != a.inputs_hash("base")
    assert payload.Payload(files={"x": (b"1!", False), "y": (b"2", True)}, dependencies=()).inputs_hash(
        "base") != a.inputs_hash("base")


def _install(prefix: pathlib.Path, installer: str = "pip",
             requested: bool = False) -> payload.importlib.metadata.Distribution:
    """A distribution as pip leaves it in a virtualenv at `prefix`: a console script whose `#!` line
    names that virtualenv's python (so its RECORD hash differs per path), a direct_url.json, the
    INSTALLER that wrote it and, when the user named it on the command line, REQUESTED."""
    site = prefix / "lib" / "python3.11" / "site-packages"
    (site / "demo").mkdir(parents=True)
    (site / "demo" / "__init__.py").write_text("VALUE = 1\n")
    (prefix / "bin").mkdir()
    script = f"#!{prefix}/bin/python\nfrom demo import main\n"
    (prefix / "bin" / "demo").write_text(script)
    info = site / "demo-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: demo\nVersion: 1.0\n")
    (info / "direct_url.json").write_text(f'{{"url": "file://{prefix}/wheels/demo-1.0-py3-none-any.whl"}}')
    (info / "INSTALLER").write_text(installer + "\n")
    digest = payload.hashlib.sha256(script.encode()).hexdigest()
    rows = ("demo/__init__.py,sha256=abc,10\ndemo/__pycache__/__init__.cpython-311.pyc,,\n"
            f"../../../bin/demo,sha256={digest},{len(script)}\ndemo-1.0.dist-info/METADATA,,\n"
            f"demo-1.0.dist-info/INSTALLER,sha256={payload.hashlib.sha256(installer.encode()).hexdigest()},4\n"
            "demo-1.0.dist-info/direct_url.json,,\ndemo-1.0.dist-info/RECORD,,\n")
    if requested:
        (info / "REQUESTED").write_text("")
        rows += "demo-1.0.dist-info/REQUESTED,sha256=47DEQpj8HBSa-_TImW-5JCeuQeRkm5NMpJWZG3hSuFU,0\n"
    (info / "RECORD").write_text(rows)
    return payload.importlib.metadata.PathDistribution(info)


def test_image_inputs_do_not_depend_on_the_virtualenv_or_clone_path(tmp_path):
    first = payload._distribution_files(_install(tmp_path / "clone-a" / ".venv"))
    second = payload._distribution_files(_install(tmp_path / "elsewhere" / "b" / ".venv"))
    assert first == second  # same bytes, so the same cache key and no rebuild per checkout
    assert sorted(first) == ["site-packages/demo-1.0.dist-info/METADATA", "site-packages/demo-1.0.dist-info/RECORD",
                             "site-packages/demo/__init__.py"]
    record = first["site-packages/demo-1.0.dist-info/RECORD"][0].decode()
    assert "demo/__init__.py,sha256=abc,10" in record and "bin/demo" not in record and "__pycache__" not in record


def test_image_inputs_do_not_depend_on_how_a_dependency_was_installed(tmp_path):
    """A clone set up with uv, or one whose user once ran `pip install click`, gets the same image:
    INSTALLER and REQUESTED describe that install, not the package (issue #16 item 4)."""
    first = payload._distribution_files(_install(tmp_path / "a" / ".venv"))
    second = payload._distribution_files(_install(tmp_path / "b" / ".venv", installer="uv", requested=True))
    assert first == second
    record = first["site-packages/demo-1.0.dist-info/RECORD"][0].decode()
    assert "INSTALLER" not in record and "REQUESTED" not in record and "direct_url" not in record


def test_the_real_payload_names_no_path_of_this_checkout():
    collected = payload.collect({})
    here = str(payload.PACKAGE_DIR.parent).encode()
    assert not [name for name, (content, _) in collected.files.items() if here in content]
    assert not [name for name in collected.files if name.endswith("direct_url.json")]
