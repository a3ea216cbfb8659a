"""The local runtime: engines as detached child processes, for machines without Docker.

Each "container" is one process started in its own session, so a Ctrl-C on `fleetspec watch` or
fleetspec exiting leaves the fleet running, exactly as with Docker. What fleetspec knows about a
process lives in `RUN_DIR/procs/<name>.json` (written atomically) and its output in
`RUN_DIR/logs/<name>.log`; both are re-read on every call, never cached.

Losing `.fleetspec` (an `rm -rf`, a fresh checkout over the old one) must not lose the fleet: each
process also carries a marker in its environment (MARK_*: the fleet file's absolute path, the run
directory, and the record's identity: id, name, labels, ports), which the kernel keeps for the
process's whole life and anyone of the same user reads in /proc/<pid>/environ, as Docker keeps
labels. `observe` finds processes by their record or by their marker, so `status` and `destroy`
see a fleet whose records are gone or garbled (a garbled record is reported and skipped), and
never claim another fleet's processes: a marker matches only this driver's fleet file and run dir,
never a fleet name alone, which other checkouts on a shared machine use too.

A pid alone does not identify a process: pids are reused. The record keeps the kernel's start
time of the process (/proc/<pid>/stat field 22), and a live pid with another start time is
someone else's process: it is reported as exited and never signalled. Linux only, like vLLM.

Local processes cannot remap ports or mount paths: the host port is the port in the argv, and
the engine sees host paths as they are. Specs that ask for more are refused with a sentence.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import errno
import json
import os
import pathlib
import re
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable

from fleetspec import errors
from fleetspec.compile import desired, labels
from fleetspec.drivers import base, files, launchers, procs

IMAGE = base.LOCAL_IMAGE  # what observe() reports as the image: there is none
_STOP_GRACE_S = 10.0  # SIGTERM → SIGKILL, as for Docker
# After SIGKILL the kernel still has to tear each process down; a real vLLM CPU worker holds GiBs of
# KV cache and shared memory, and on a busy VM freeing them was seen to take more than 5 s (issue 13's
# real-vLLM tier). The loop returns as soon as the group is gone, so the bound costs nothing otherwise.
_KILL_WAIT_S = 30.0
_INHERITED_ENV = ("PATH", "HOME", "LANG", "PYTHONPATH", "VIRTUAL_ENV")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")  # Docker's container-name rule: safe as a file name
_PROC = procs.PROC
ALIVE, DEAD, REUSED = procs.ALIVE, procs.DEAD, procs.REUSED
MARK_FLEET_FILE = "FLEETSPEC_FLEET_FILE"  # absolute path of the fleet file (or run dir, see LocalDriver)
MARK_RUN_DIR = "FLEETSPEC_RUN_DIR"  # absolute path of the run directory the records live in
MARK_PROCESS = "FLEETSPEC_PROCESS"  # JSON: the record's identity, enough to observe and stop the process


@dataclasses.dataclass(frozen=True)
class ProcessRecord:
    """What `run_dir/procs/<name>.json` holds about one process fleetspec started."""

    id: str
    name: str
    pid: int
    proc_start: int | None  # clock ticks after boot, /proc/<pid>/stat field 22; tells reused pids apart
    argv: list[str]
    labels: dict[str, str]
    ports: list[dict]  # {"container_port", "host_ip", "host_port"}; host_port == container_port
    gpu_ids: list[str]
    cwd: str
    log_offset: int  # where this process's output starts in the (appended) log file
    created_at: str
    started_at: str
    image: str = IMAGE

    def to_json(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> ProcessRecord:
        return cls(**{f.name: data[f.name] for f in dataclasses.fields(cls) if f.name in data})


class LocalDriver:
    """`fleet_file`: the fleet these processes belong to, written into each one's marker. Without it
    (tests, read-only observers) the marker names the run directory only, which also decides."""

    def __init__(self, run_dir: pathlib.Path, *, cwd: pathlib.Path | None = None, poll_s: float = 0.05,
                 stop_grace_s: float = _STOP_GRACE_S, fleet_file: pathlib.Path | None = None,
                 warn: Callable[[str], None] | None = None):
        self.run_dir = pathlib.Path(run_dir)
        self.cwd = pathlib.Path(cwd) if cwd is not None else self.run_dir
        self.poll_s = poll_s
        self.stop_grace_s = stop_grace_s
        self.fleet_file = str(pathlib.Path(fleet_file).resolve()) if fleet_file is not None else None
        self._warn = warn or _warn_on_stderr
        self._warned: set[str] = set()
        self._children: dict[str, subprocess.Popen] = {}  # id → our own child, for reaping and exit codes

    @property
    def procs_dir(self) -> pathlib.Path:
        return self.run_dir / "procs"

    def log_path(self, name: str) -> pathlib.Path:
        return self.run_dir / "logs" / f"{name}.log"

    def observe(self, fleet_name: str) -> list[base.ObservedContainer]:
        """Every process of the fleet, running or not, found by label; sorted by name."""
        self.reap()
        found = [self._observed(r) for r in self._records() if r.labels.get(labels.FLEET) == fleet_name]
        return sorted(found, key=lambda c: (c.name, c.id))

    def create(self, spec: desired.ContainerSpec) -> str:
        """Start the process detached; return its id. A failed start leaves nothing behind."""
        self.reap()
        _check_spec(spec)
        ports = _ports(spec)
        if (existing := self._record_by_name(spec.name)) is not None:
            raise errors.PermanentError(
                f"Could not start process {spec.name}: another process is already named {spec.name} "
                f"(id {existing.id[:12]}, pid {existing.pid}). Remove it (`fleetspec destroy FILE`) or "
                "rename the fleet."
            )
        env = child_env(spec)
        _check_program(spec, env)
        _check_ports_free(spec.name, ports)
        record = self._spawn(spec, launchers.command(spec.argv, env.get("PATH")), env, ports)
        try:
            files.write_atomic(self.procs_dir / f"{spec.name}.json", json.dumps(record.to_json(), indent=2) + "\n")
        except OSError:
            self._stop(record)  # its marker would find it again, but a half-done start is undone, as on Docker
            raise
        return record.id

    def describe(self, container_id: str) -> str:
        """How a user finds this process: its name, PID and log file."""
        record = self._record_by_id(container_id)
        if record is None:
            return f"process {container_id[:12]}"
        return f"process {record.name} (PID {record.pid}, log {_shown(self.log_path(record.name))})"

    def remove(self, container_id: str) -> None:
        """SIGTERM the process group, SIGKILL after a grace period, delete the record; gone is fine."""
        record = self._record_by_id(container_id)
        if record is not None:
            if _leader(record) != REUSED:
                self._stop(record)
            (self.procs_dir / f"{record.name}.json").unlink(missing_ok=True)
        child = self._children.pop(container_id, None)
        if child is not None:
            child.poll()

    def wait_running(self, container_id: str, timeout_s: float = 60.0) -> base.ObservedContainer:
        """A process runs from the moment it is spawned (there is no image to pull or unpack), so
        this only checks; an engine that already exited fails with its logs, as with Docker."""
        current = self._inspect(container_id)
        if not current.running:
            raise errors.PermanentError(
                f"Process {current.name} exited with code {current.exit_code} instead of starting. "
                f"Its last log lines:\n{self.logs_tail(container_id, 20)}"
            )
        return current

    def logs_tail(self, container_id: str, lines: int = 50) -> str:
        """The last `lines` lines this process wrote (stdout and stderr); "" when it is unknown."""
        record = self._record_by_id(container_id)
        if record is None:
            return ""
        return _tail(self.log_path(record.name), record.log_offset, lines)

    def reap(self) -> None:
        """Collect exited children so they do not linger as zombies while fleetspec runs."""
        for child in self._children.values():
            child.poll()  # waitpid(WNOHANG) under the hood

    def _spawn(self, spec: desired.ContainerSpec, argv: list[str], env: dict[str, str],
               ports: list[dict]) -> ProcessRecord:
        container_id = secrets.token_hex(32)
        log_path = self.log_path(spec.name)
        log_path.parent.mkdir(parents=True, exist_ok=True)
        self.procs_dir.mkdir(parents=True, exist_ok=True)
        created = _now()
        identity = {"id": container_id, "name": spec.name, "argv": list(spec.argv),
                    "labels": {**spec.label_dict, labels.SPEC_HASH: spec.spec_hash()}, "ports": ports,
                    "gpu_ids": list(spec.gpu_ids), "created_at": created}
        env = {**env, MARK_FLEET_FILE: self._fleet_mark(), MARK_RUN_DIR: str(self.run_dir.resolve()),
               MARK_PROCESS: json.dumps(identity, separators=(",", ":"))}
        with open(log_path, "ab") as log:
            log.write(f"--- fleetspec: {spec.name} (id {container_id[:12]}) started {created}: "
                      f"{shlex.join(argv)}\n".encode())
            log.flush()
            offset = log.tell()
            try:
                child = subprocess.Popen(
                    argv, env=env, cwd=self.cwd, stdin=subprocess.DEVNULL, stdout=log,
                    stderr=subprocess.STDOUT, start_new_session=True, close_fds=True,
                )
            except OSError as exc:
                raise errors.PermanentError(
                    f"Could not start process {spec.name}: {exc.strerror or exc} ({argv[0]}). "
                    "Check that the engine is installed and that the working directory exists."
                ) from exc
        self._children[container_id] = child
        identity.pop("created_at")
        return ProcessRecord(**identity, pid=child.pid, proc_start=_start_time(child.pid), cwd=str(self.cwd),
                             log_offset=offset, created_at=created, started_at=_now())

    def _stop(self, record: ProcessRecord) -> None:
        for sig, wait_s in ((signal.SIGTERM, self.stop_grace_s), (signal.SIGKILL, _KILL_WAIT_S)):
            if not self._alive(record):
                return
            _signal(record, sig)
            deadline = time.monotonic() + wait_s
            while self._alive(record) and time.monotonic() < deadline:
                time.sleep(self.poll_s)
        if self._alive(record):
            raise errors.TemporaryError(
                f"Process {record.name} (pid {record.pid}) survived SIGKILL for {_KILL_WAIT_S:g} s; "
                f"{_stuck_members(record.pid)}it is probably stuck in the kernel (a GPU driver call, or "
                "freeing a large amount of memory). Wait a little and run the command again."
            )

    def _alive(self, record: ProcessRecord) -> bool:
        """The engine or any process of its group (engine workers may outlive their parent)."""
        self.reap()
        leader = _leader(record)
        # A reused pid means our group is long gone; the pid's new owner is not ours to signal.
        return leader == ALIVE or (leader == DEAD and _group_alive(record.pid))

    def _inspect(self, container_id: str) -> base.ObservedContainer:
        self.reap()
        record = self._record_by_id(container_id)
        if record is None:
            raise errors.PermanentError(
                f"Process {container_id[:12]} disappeared (removed outside fleetspec?). "
                "Run the command again; fleetspec re-reads the fleet every time."
            )
        return self._observed(record)

    def _observed(self, record: ProcessRecord) -> base.ObservedContainer:
        running = _leader(record) == ALIVE
        return base.ObservedContainer(
            id=record.id, name=record.name, image=record.image,
            status=base.RUNNING if running else base.EXITED, health=None,
            # Like Docker, only a running container has published ports.
            ports=tuple((p["container_port"], p["host_ip"], p["host_port"]) for p in record.ports) if running else (),
            exit_code=None if running else self._exit_code(record.id),
            started_at=record.started_at, pid=record.pid if running else None,
            log_path=str(self.log_path(record.name)),
            **base.identity_from_labels(record.labels),
        )

    def _exit_code(self, container_id: str) -> int | None:
        """Docker's convention: the exit status, or 128 + signal number. Known for our own children only."""
        child = self._children.get(container_id)
        if child is None or child.poll() is None:  # poll: it may have died since the last reap
            return None
        return child.returncode if child.returncode >= 0 else 128 - child.returncode

    def _records(self) -> list[ProcessRecord]:
        """Every process of this run dir: its record file, else (record lost or garbled) its marker."""
        found: dict[str, ProcessRecord] = {}
        if self.procs_dir.is_dir():
            for path in sorted(self.procs_dir.glob("*.json")):
                if path.name.startswith("."):
                    continue  # temp files of an atomic write in progress
                record = self._read_or_report(path)
                if record is not None:
                    found.setdefault(record.id, record)
        for record in marked_processes(self.run_dir, self.fleet_file):
            found.setdefault(record.id, record)
        return sorted(found.values(), key=lambda r: (r.name, r.id))

    def _read_or_report(self, path: pathlib.Path) -> ProcessRecord | None:
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return None  # removed since the directory was listed
        except (OSError, UnicodeDecodeError) as exc:
            return self._garbled(path, str(exc))
        try:
            return ProcessRecord.from_json(json.loads(text))
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            return self._garbled(path, f"{type(exc).__name__}: {exc}")

    def _garbled(self, path: pathlib.Path, why: str) -> None:
        if str(path) not in self._warned:
            self._warned.add(str(path))
            self._warn(f"the process record {path} is garbled ({why}); it is skipped, and its process, if it "
                       "still runs, is found by the marker in its environment instead. fleetspec rewrites the "
                       "record the next time it starts that process.")
        return None

    def _record_by_id(self, container_id: str) -> ProcessRecord | None:
        return next((r for r in self._records() if r.id == container_id), None)

    def _record_by_name(self, name: str) -> ProcessRecord | None:
        return next((r for r in self._records() if r.name == name), None)

    def _fleet_mark(self) -> str:
        return self.fleet_file or str(self.run_dir.resolve())


def marked_processes(run_dir: pathlib.Path, fleet_file: str | None) -> list[ProcessRecord]:
    """Live session leaders whose environment marks them as started in `run_dir` for `fleet_file`
    (or, without one, for `run_dir`), as records rebuilt from the marker and /proc."""
    run_mark = f"{MARK_RUN_DIR}={pathlib.Path(run_dir).resolve()}".encode()
    found = []
    for entry in _PROC.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            environ = (entry / "environ").read_bytes()  # another user's process: PermissionError
        except OSError:
            continue
        if run_mark not in environ:
            continue
        record = _from_marker(int(entry.name), environ.split(b"\0"), run_mark,
                              fleet_file or str(pathlib.Path(run_dir).resolve()))
        if record is not None:
            found.append(record)
    return found


def _from_marker(pid: int, environ: list[bytes], run_mark: bytes, fleet_mark: str) -> ProcessRecord | None:
    variables = dict(item.decode("utf-8", "replace").partition("=")[::2] for item in environ if b"=" in item)
    if run_mark not in environ or variables.get(MARK_FLEET_FILE) != fleet_mark:
        return None  # another fleet file's process that happens to share the run dir
    fields = _stat_fields(pid)
    # Engine workers inherit the marker; only the session leader fleetspec spawned is the "container".
    if fields is None or fields[0] in ("Z", "X") or fields[3] != str(pid):
        return None
    try:
        identity = json.loads(variables.get(MARK_PROCESS, ""))
        return ProcessRecord(
            id=identity["id"], name=identity["name"], pid=pid, proc_start=int(fields[19]),
            argv=list(identity["argv"]), labels=dict(identity["labels"]), ports=list(identity["ports"]),
            gpu_ids=list(identity["gpu_ids"]), cwd=os.readlink(_PROC / str(pid) / "cwd"), log_offset=0,
            created_at=identity["created_at"], started_at=identity["created_at"],
        )
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _shown(path: pathlib.Path) -> str:
    """A path as short as it can be while still meaning the same file from the user's shell."""
    try:
        return str(path.resolve().relative_to(pathlib.Path.cwd()))
    except (ValueError, OSError):
        return str(path)


def _warn_on_stderr(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr)


def child_env(spec: desired.ContainerSpec) -> dict[str, str]:
    """A minimal environment: a few inherited basics, the spec's env (secrets expanded), the GPUs."""
    env = {key: os.environ[key] for key in _INHERITED_ENV if key in os.environ}
    # fleetspec's own interpreter first, so `python -m fleetspec.sim` finds fleetspec even when its
    # virtualenv is not activated (Debian has no `python` at all outside one).
    own_bin = os.path.dirname(sys.executable)
    path = env.get("PATH", os.defpath)
    if own_bin and own_bin not in path.split(os.pathsep):
        env["PATH"] = os.pathsep.join([own_bin, path])
    env["PYTHONUNBUFFERED"] = "1"  # the log file is the only window into a local engine; keep it current
    env.update(base.expand_secrets(spec.env_dict, spec.name))
    if spec.gpu_ids:
        env["CUDA_VISIBLE_DEVICES"] = ",".join(spec.gpu_ids)
    return env


def _check_spec(spec: desired.ContainerSpec) -> None:
    if spec.label_dict.get(labels.FLEET) is None:
        raise ValueError(f"ContainerSpec {spec.name!r} has no {labels.FLEET} label; observe() would lose it")
    if not _NAME.match(spec.name):
        raise errors.PermanentError(
            f"Could not start process {spec.name!r}: names may only hold letters, digits, '_', '.' and '-', "
            "and must start with a letter or digit. Rename the fleet or server."
        )
    if not spec.argv:
        raise ValueError(f"ContainerSpec {spec.name!r} has an empty argv")
    for mount in spec.volumes:
        if os.path.normpath(mount.source) != os.path.normpath(mount.target):
            raise errors.PermanentError(
                f"Process {spec.name} asks for {mount.source} at {mount.target}, but local processes see "
                "host paths as they are. Use the host path in the fleet file, or runtime target docker."
            )


def _ports(spec: desired.ContainerSpec) -> list[dict]:
    ports = []
    for port in spec.ports:
        if port.host_port not in (None, port.container_port):
            raise errors.PermanentError(
                f"Process {spec.name} asks for port {port.container_port} on host port {port.host_port}, but "
                "a local process listens on its own port directly. Give the server the port you want to use."
            )
        ports.append({"container_port": port.container_port, "host_ip": port.host_ip,
                      "host_port": port.container_port})
    return ports


def _check_program(spec: desired.ContainerSpec, env: dict[str, str]) -> None:
    program = spec.argv[0]
    if program in (launchers.PYTHON, launchers.VLLM):
        return  # resolved by launchers.command (which says what is missing)
    if os.sep in program:
        return  # a path: Popen reports a missing or non-executable file itself
    if shutil.which(program, path=env.get("PATH")) is None:
        raise errors.PermanentError(
            f"Could not start process {spec.name}: the program {program} is not on PATH ({env.get('PATH', '')}). "
            "Install it (for the real engine: `pip install vllm`) or use `runtime: {engine: sim}`."
        )


def _check_ports_free(name: str, ports: list[dict]) -> None:
    """Refuse a taken port up front, as Docker does, instead of starting an engine that dies on bind."""
    for port in ports:
        host = port["host_ip"] or "0.0.0.0"
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as servers do: TIME_WAIT is no owner
            try:
                probe.bind((host, port["host_port"]))
            except OSError as exc:
                if exc.errno != errno.EADDRINUSE:
                    continue  # an address this host lacks: the engine will say so in its log
                raise errors.PermanentError(
                    f"Could not start process {name}: port {port['host_port']} on {host} is already in use. "
                    f"Stop what listens there (`ss -ltnp 'sport = :{port['host_port']}'`) or give the server "
                    "another port."
                ) from None


def _stat_fields(pid: int) -> list[str] | None:
    return procs.stat_fields(pid)


def _start_time(pid: int) -> int | None:
    return procs.start_time(pid)


def _leader(record: ProcessRecord) -> str:
    """ALIVE: our process runs; DEAD: it is gone (or a zombie); REUSED: its pid is someone else's now."""
    return procs.leader(record.pid, record.proc_start)


def _group_alive(pgid: int) -> bool:
    """Whether any non-zombie process is left in the process group `pgid`."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return bool(_live_members(pgid))  # zombies still count for kill(0); they are dead for us


def _live_members(pgid: int) -> list[tuple[str, str]]:
    """(pid, kernel state) of every process of group `pgid` that is not a zombie."""
    members = []
    for entry in _PROC.iterdir():
        if entry.name.isdigit():
            fields = _stat_fields(int(entry.name))
            if fields and fields[2] == str(pgid) and fields[0] not in ("Z", "X"):
                members.append((entry.name, fields[0]))
    return members


def _stuck_members(pgid: int) -> str:
    """Which processes of the group are left and in what kernel state (D: uninterruptible), so
    the operator can look at them (`cat /proc/PID/stack`) instead of guessing."""
    left = [f"pid {pid} in state {state}" for pid, state in _live_members(pgid)[:5]]
    return f"left in its group: {', '.join(left)}; " if left else ""


def _signal(record: ProcessRecord, sig: signal.Signals) -> None:
    """The whole group (the engine's session), and the engine itself should it have left the group."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(record.pid, sig)
    # Only one signal per process: a second SIGTERM landing inside the first one's handler can
    # deadlock a Python engine (a handler that sets a threading.Event re-enters its lock).
    with contextlib.suppress(ProcessLookupError):
        if _leader(record) == ALIVE and os.getpgid(record.pid) != record.pid:
            os.kill(record.pid, sig)


def _tail(path: pathlib.Path, start: int, lines: int) -> str:
    """The last `lines` lines of `path` after byte `start`."""
    if lines <= 0:
        return ""
    try:
        with open(path, "rb") as handle:
            data = _read_back(handle, start, lines)
    except FileNotFoundError:
        return ""
    return "".join(data.decode("utf-8", errors="replace").splitlines(keepends=True)[-lines:])


def _read_back(handle, start: int, lines: int) -> bytes:
    """Blocks from the end back to `start`, until they hold more than `lines` newlines."""
    position = handle.seek(0, os.SEEK_END)
    start = start if start <= position else 0  # the file was truncated since: show what there is
    chunks: list[bytes] = []
    newlines = 0
    while position > start and newlines <= lines:
        step = min(65536, position - start)
        position -= step
        handle.seek(position)
        chunks.insert(0, handle.read(step))
        newlines += chunks[0].count(b"\n")
    return b"".join(chunks)


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="microseconds")
