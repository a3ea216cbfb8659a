"""Bringing a fleet file up somewhere else without editing it: command-line overrides (pure).

A fleet file describes its real deployment: Docker with vLLM on GPUs, adapters under `/loras` or
`/adapters`, engines on ports 8000.... To try it on a laptop or in CI, `apply`, `plan`, `status`,
`destroy` and `rollback` take:

    --runtime local|docker     runtime.target
    --engine sim|vllm          runtime.engine
    --adapters-in DIR          read every adapter (and adapter root) below DIR: the path the file
                               gives, made absolute against the file's directory, under DIR
                               (/loras/2025-06-06 → DIR/loras/2025-06-06)
    --ports-from PORT          the router on PORT, every replica on the ports after it

`fleetspec adapters stand-ins FILE DIR` writes adapters with the declared ranks and the base
model's shapes at exactly the paths `--adapters-in DIR` reads. The file's text, locations and name
stay as they are: diagnostics still point at its lines, and its state lives beside it.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib

from fleetspec.spec import loading, models


@dataclasses.dataclass(frozen=True)
class Overrides:
    target: str | None = None
    engine: str | None = None
    adapters_in: pathlib.Path | None = None
    ports_from: int | None = None

    def __bool__(self) -> bool:
        return any(v is not None for v in dataclasses.astuple(self))

    def describe(self) -> str:
        """The flags, as the user would type them again."""
        words = []
        if self.target is not None:
            words += ["--runtime", self.target]
        if self.engine is not None:
            words += ["--engine", self.engine]
        if self.adapters_in is not None:
            words += ["--adapters-in", str(self.adapters_in)]
        if self.ports_from is not None:
            words += ["--ports-from", str(self.ports_from)]
        return " ".join(words)


def relocated(value: str, base_dir: pathlib.Path, directory: pathlib.Path) -> pathlib.Path:
    """Where `--adapters-in directory` reads a path of the fleet file: its absolute form, below it."""
    candidate = pathlib.Path(value).expanduser()
    if not candidate.is_absolute():
        candidate = base_dir / candidate
    absolute = pathlib.Path(os.path.normpath(candidate))
    return directory / absolute.relative_to(absolute.anchor)


def apply(loaded: loading.LoadedFleet, overrides: Overrides) -> loading.LoadedFleet:
    """The loaded fleet as the overrides describe it (the same object when there are none)."""
    if not overrides:
        return loaded
    spec = loaded.spec
    runtime_update: dict = {}
    if overrides.target is not None:
        runtime_update["target"] = overrides.target
    if overrides.engine is not None:
        runtime_update["engine"] = overrides.engine
    servers, specialists = list(spec.servers), list(spec.specialists)
    if overrides.ports_from is not None:
        runtime_update["router"] = spec.runtime.router.model_copy(update={"port": overrides.ports_from})
        runtime_update["base_port"] = overrides.ports_from + 1
        servers = [s.model_copy(update={"port": None}) for s in servers]
    if overrides.adapters_in is not None:
        directory = pathlib.Path(os.path.abspath(overrides.adapters_in))

        def move(value: str) -> str:
            return str(relocated(value, loaded.base_dir, directory))

        runtime_update["adapter_roots"] = [move(r) for r in spec.runtime.adapter_roots]
        specialists = [s.model_copy(update={
            "path": move(s.path), "versions": [v.model_copy(update={"path": move(v.path)}) for v in s.versions],
        }) for s in specialists]
    runtime = spec.runtime.model_copy(update=runtime_update)
    changed: models.FleetSpec = spec.model_copy(update={"runtime": runtime, "servers": servers,
                                                        "specialists": specialists})
    return dataclasses.replace(loaded, spec=changed)
