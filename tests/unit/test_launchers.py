"""What a local process's argv[0] means: fleetspec's interpreter, or the vLLM installation."""

from __future__ import annotations

import os
import sys

import pytest

from fleetspec import errors
from fleetspec.drivers import launchers


def test_python3_is_fleetspecs_own_interpreter_whatever_started_fleetspec():
    assert launchers.command(["python3", "-m", "fleetspec.router", "serve"]) == [
        sys.executable, "-m", "fleetspec.router", "serve"]


def test_vllm_serve_runs_the_api_server_module_of_the_configured_installation(tmp_path, monkeypatch):
    interpreter = tmp_path / "python"
    interpreter.write_text("#!/bin/sh\n")
    interpreter.chmod(0o755)
    monkeypatch.setenv(launchers.VLLM_PYTHON_ENV, str(interpreter))
    assert launchers.command(["vllm", "serve", "/models/tiny", "--port", "8001"]) == [
        str(interpreter), "-m", "vllm.entrypoints.openai.api_server", "--model", "/models/tiny", "--port", "8001"]


def test_a_vllm_script_on_path_names_its_installation(tmp_path, monkeypatch):
    interpreter = tmp_path / "venv-python"
    interpreter.write_text("#!/bin/sh\n")
    interpreter.chmod(0o755)
    script = tmp_path / "vllm"
    script.write_text(f"#!{interpreter}\nimport sys\n")
    script.chmod(0o755)
    monkeypatch.delenv(launchers.VLLM_PYTHON_ENV, raising=False)
    assert launchers.vllm_python(str(tmp_path)) == str(interpreter)


def test_no_installation_is_a_sentence_that_says_how_to_get_one(tmp_path, monkeypatch):
    monkeypatch.delenv(launchers.VLLM_PYTHON_ENV, raising=False)
    monkeypatch.setattr(launchers.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(errors.PermanentError, match=r"scripts/setup-vllm"):
        launchers.vllm_python(str(tmp_path))


def test_a_configured_interpreter_that_is_not_executable_is_named(tmp_path, monkeypatch):
    monkeypatch.setenv(launchers.VLLM_PYTHON_ENV, str(tmp_path / "missing"))
    with pytest.raises(errors.PermanentError, match=r"not an executable interpreter"):
        launchers.vllm_python()


def test_other_programs_run_as_written():
    assert launchers.command(["/bin/true", "x"]) == ["/bin/true", "x"]
    assert os.sep not in launchers.PYTHON
