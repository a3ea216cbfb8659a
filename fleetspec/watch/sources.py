"""What wakes the watch loop: file changes, the runtime's container events, process exits.

Each source runs on its own daemon thread and only posts `loop.Wake`s; none of them decides
anything. Missing an event is harmless (the periodic re-observe catches up), so sources favour
being cheap and never crashing over being complete.

- Files: watchfiles on the DIRECTORIES of the fleet file and of the files it references (editors
  save through a temp file and a rename, which replaces the inode), filtered to those files;
  adapter and local model directories are watched recursively.
- Docker: the engine's event stream for the fleet's containers (die, destroy, oom, health_status).
- Local runtime: a liveness poll of the fleet's processes, a few times a second (reading /proc is
  cheap), that posts when a running engine exits.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import pathlib
import threading
from collections.abc import Callable

from fleetspec import errors
from fleetspec.compile import vllm_args
from fleetspec.spec import models
from fleetspec.watch import loop

Post = Callable[[loop.Wake], None]

DOCKER_ACTIONS = {"die": "died", "destroy": "was removed", "oom": "ran out of memory",
                  "health_status": "changed health"}
LIVENESS_POLL_S = 0.1
_FILE_STEP_MS = 20  # watchfiles yields after this much quiet; the loop does the real debouncing
_FILE_DEBOUNCE_MS = 200


@dataclasses.dataclass(frozen=True)
class Targets:
    """Files and directory trees whose changes matter to a fleet."""

    files: frozenset[pathlib.Path]
    trees: frozenset[pathlib.Path] = frozenset()

    def matches(self, path: str | pathlib.Path) -> bool:
        path = pathlib.Path(path)
        return path in self.files or any(path == tree or tree in path.parents for tree in self.trees)

    def flat_roots(self) -> frozenset[pathlib.Path]:
        """Directories to watch without recursion: parents of files, the nearest existing ancestor
        of a tree that does not exist yet (its creation is then seen)."""
        roots = {_existing(f.parent) for f in self.files}
        roots |= {_existing(t.parent) for t in self.trees if not t.is_dir()}
        return frozenset(r for r in roots if r is not None)

    def deep_roots(self) -> frozenset[pathlib.Path]:
        return frozenset(t for t in self.trees if t.is_dir())


def targets_for(fleet_file: str | pathlib.Path, prepared=None) -> Targets:
    """The fleet file, its hash-cluster map files, local adapter directories, a local base model."""
    file = _absolute(pathlib.Path(fleet_file))
    if prepared is None:
        return Targets(frozenset({file}))
    fleet = prepared.fleet
    spec: models.FleetSpec = fleet.spec
    files = {file}
    for rule in spec.routing.rules:
        if isinstance(rule, models.HashClusterRule) and rule.hash_clusters.map_file:
            files.add(_absolute(fleet.resolve_path(rule.hash_clusters.map_file)))
    trees = set()
    for specialist in spec.specialists:
        for version in specialist.all_versions:
            entry = specialist.version_entry(version)
            if entry is not None:
                trees.add(vllm_args.resolve_path(entry.path, fleet.base_dir))
    trees.add(vllm_args.resolve_path(spec.base_model.id, fleet.base_dir))
    # Hugging Face ids stay relative after resolving: they live in no directory of ours.
    local = {_absolute(pathlib.Path(os.path.expanduser(t))) for t in trees if t.startswith(("/", "~"))}
    return Targets(frozenset(files), frozenset(local))


def _absolute(path: pathlib.Path) -> pathlib.Path:
    # watchfiles reports real paths; a symlinked directory must compare equal.
    return pathlib.Path(os.path.realpath(path))


def _existing(path: pathlib.Path) -> pathlib.Path | None:
    for candidate in (path, *path.parents):
        if candidate.is_dir():
            return candidate
    return None


class FileSource:
    """watchfiles on two threads: flat roots without recursion, trees recursively."""

    def __init__(self, post: Post, label: Callable[[pathlib.Path], str]):
        self.post = post
        self.label = label
        self.targets = Targets(frozenset())
        self._threads: list[tuple[threading.Thread, threading.Event]] = []

    def retarget(self, targets: Targets) -> None:
        if targets == self.targets and all(t.is_alive() for t, _ in self._threads):
            return
        self.stop()
        self.targets = targets
        for roots, recursive in ((targets.flat_roots(), False), (targets.deep_roots(), True)):
            if roots:
                stop = threading.Event()
                thread = threading.Thread(target=self._watch, args=(sorted(roots), recursive, stop),
                                          name=f"watch-files-{'deep' if recursive else 'flat'}", daemon=True)
                thread.start()
                self._threads.append((thread, stop))

    def stop(self) -> None:
        for _, stop in self._threads:
            stop.set()
        self._threads = []

    def _watch(self, roots: list[pathlib.Path], recursive: bool, stop: threading.Event) -> None:
        import watchfiles

        targets = self.targets
        # A root that vanishes (or runs out of inotify watches) ends this watch; the periodic re-observe
        # still reads the file, and the next good version re-targets the watch.
        with contextlib.suppress(OSError, RuntimeError):
            for changes in watchfiles.watch(*roots, watch_filter=lambda _, p: targets.matches(p),
                                            debounce=_FILE_DEBOUNCE_MS, step=_FILE_STEP_MS, stop_event=stop,
                                            recursive=recursive, raise_interrupt=False):
                for _, path in sorted(changes, key=lambda c: c[1]):
                    self.post(loop.Wake(loop.FILE, f"{self.label(pathlib.Path(path))} changed"))


class DockerEventSource:
    """The Docker engine's event stream for one fleet's containers; reconnects when it drops."""

    def __init__(self, post: Post, fleet_name: str, connect: Callable | None = None):
        self.post = post
        self.fleet_name = fleet_name
        self._connect = connect
        self._stopped = threading.Event()
        self._stream = None
        self._thread = threading.Thread(target=self._run, name="watch-docker-events", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stopped.set()
        with contextlib.suppress(Exception):  # closing the socket is what unblocks the reading thread
            if self._stream is not None:
                self._stream.close()

    def _run(self) -> None:
        import docker.errors
        import requests
        import urllib3

        from fleetspec.compile import labels

        # An engine that restarts or goes away must not end the watch: reconnect with back-off.
        dropped = (docker.errors.DockerException, requests.exceptions.RequestException, urllib3.exceptions.HTTPError,
                   errors.FleetspecError, OSError, ValueError)
        delay = 1.0
        while not self._stopped.is_set():
            try:
                client = (self._connect or _docker_connect)()
                self._stream = client.events(decode=True, filters={
                    "type": "container", "label": f"{labels.FLEET}={self.fleet_name}"})
                delay = 1.0
                for event in self._stream:
                    wake = docker_wake(event)
                    if wake is not None:
                        self.post(wake)
            except dropped:
                pass
            self._stopped.wait(delay)
            delay = min(delay * 2, 30.0)


def _docker_connect():
    from fleetspec.drivers import docker as docker_driver

    return docker_driver.connect()


def docker_wake(event: dict) -> loop.Wake | None:
    """A wake for the events that mean a container may need repair; None for the rest."""
    action = str(event.get("Action") or event.get("status") or "")
    verb, _, detail = action.partition(":")
    if verb not in DOCKER_ACTIONS:
        return None
    attributes = (event.get("Actor") or {}).get("Attributes") or {}
    name = attributes.get("name") or str(event.get("id", ""))[:12]
    text = f"container {name} {DOCKER_ACTIONS[verb]}"
    if verb == "die" and attributes.get("exitCode") is not None:
        text += f" (exit {attributes['exitCode']})"
    elif verb == "health_status" and detail.strip():
        text = f"container {name} is {detail.strip()}"
    return loop.Wake(loop.RUNTIME, text)


class LocalLivenessSource:
    """Polls the local runtime's process records and posts when a running engine has exited."""

    def __init__(self, post: Post, run_dir: pathlib.Path, fleet_name: str, poll_s: float = LIVENESS_POLL_S):
        from fleetspec.drivers import local

        self.post = post
        self.fleet_name = fleet_name
        self.poll_s = poll_s
        self._driver = local.LocalDriver(run_dir)  # read-only use: observe() never starts or stops anything
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name="watch-local-liveness", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stopped.set()

    def _run(self) -> None:
        running: set[str] = set()
        while not self._stopped.wait(self.poll_s):
            try:
                seen = self._driver.observe(self.fleet_name)
            except (OSError, ValueError, errors.FleetspecError):
                continue  # a record being rewritten, a process gone mid-read: the next poll sees it
            now_running = {c.id for c in seen if c.running}
            for container in seen:
                if container.id in running and not container.running:
                    code = f" (exit {container.exit_code})" if container.exit_code is not None else ""
                    self.post(loop.Wake(loop.RUNTIME, f"process {container.name} exited{code}"))
            running = now_running


class Sources:
    """Every source of one watch, re-targeted whenever the loop accepts a new version of the file."""

    def __init__(self, post: Post, fleet_file: str | pathlib.Path):
        self.post = post
        self.fleet_file = pathlib.Path(fleet_file)
        self._base = _absolute(self.fleet_file).parent
        self.files = FileSource(post, self._label)
        self.files.retarget(targets_for(self.fleet_file))
        self._runtime = None
        self._runtime_for: tuple[str, str] | None = None

    def retarget(self, prepared) -> None:
        self.files.retarget(targets_for(self.fleet_file, prepared))
        spec = prepared.fleet.spec
        wanted = (spec.runtime.target, spec.name)
        if wanted == self._runtime_for:
            return
        self._stop_runtime()
        self._runtime_for = wanted
        if spec.runtime.target == "docker":
            self._runtime = DockerEventSource(self.post, spec.name)
        elif spec.runtime.target == "local":
            from fleetspec import drivers

            self._runtime = LocalLivenessSource(self.post, drivers.run_dir(prepared.file, spec.name), spec.name)

    def close(self) -> None:
        self.files.stop()
        self._stop_runtime()

    def _stop_runtime(self) -> None:
        if self._runtime is not None:
            self._runtime.stop()
            self._runtime = None

    def _label(self, path: pathlib.Path) -> str:
        try:
            return str(path.relative_to(self._base))
        except ValueError:
            return str(path)
