"""Seed 001's routing-gap log: every prompt that no routing rule matched, kept for training the
next specialist (seed 001 appends them to `system/routing-gaps` with the extracted domains and the
time; fleetspec keeps the same facts, bounded).

Where: a JSON-lines file beside the router's config (`routing-gaps.jsonl`, rotated to `.1`, `.2`
... at `routing.gap_log.max_bytes`, `keep_files` rotated files kept), or, when the fleet sets
runtime.router.redis_url, one Redis stream per fleet trimmed with `XADD ... MAXLEN ~ max_entries`
so every router replica writes to one place. What of the prompt is kept is `routing.gap_log.store`:
all of it, a prefix, or only its sha256 (the sha256 is in every entry, so recurring prompts can be
counted whatever the setting).

Never on the request's hot path: `record` puts the raw facts in a bounded in-memory queue and
returns; one background task builds the entries (hashing, extension scan) and writes them, to disk
in a worker thread. When the writer falls behind and the queue is full the entry is dropped and
counted (`fleetspec_router_routing_gaps_total{result="queue-full"}`): losing a training sample is
better than slowing a request.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime
import hashlib
import json
import logging
import os
import pathlib
import time
import weakref

from fleetspec.router import resp
from fleetspec.routing import matchers, table

log = logging.getLogger("fleetspec.router")

FILE_NAME = "routing-gaps.jsonl"
QUEUE_SIZE = 1024  # entries waiting for the writer; beyond it they are dropped and counted
BATCH = 256  # entries written per disk or Redis round trip
READ_LIMIT = 10_000  # most entries one read returns (CLI and admin API)


def stream_key(fleet: str) -> str:
    return f"fleetspec:{fleet}:router:gaps"


def is_gap(decision: table.Decision) -> bool:
    """No rule matched: the table fell back (an explicit request for the base model is no gap)."""
    return decision.rule.kind == table.FALLBACK.kind and decision.fallback_reason != table.UNKNOWN_MODEL


@dataclasses.dataclass(frozen=True)
class _Raw:
    """What the hot path hands over: references and a clock reading, nothing computed."""

    at: float
    fleet: str
    decision: table.Decision
    prompt: str
    extensions: tuple[str, ...]


def entry(raw: _Raw, settings, max_line: int | None = None) -> dict:
    """One log entry; the prompt kept as the fleet's privacy setting says."""
    prompt = raw.prompt
    decision = raw.decision
    folded = matchers.fold(matchers.window(prompt))
    extensions = matchers.find_extensions(folded) | {matchers.normalize_extension(e) for e in raw.extensions}
    out = {
        "time": datetime.datetime.fromtimestamp(raw.at, datetime.UTC).isoformat(timespec="milliseconds"),
        "fleet": raw.fleet,
        "rule": decision.rule.name,
        "fallback_reason": decision.fallback_reason,
        "rejected": decision.rejected,
        "served_name": decision.served_name,
        "extensions": sorted("." + e.lstrip(".") for e in extensions if e),
        "matched": list(decision.matched),
        "cluster": decision.cluster,
        "similarity": decision.similarity,
        "prompt_chars": len(prompt),
        "prompt_sha256": hashlib.sha256(prompt.encode("utf-8", "surrogatepass")).hexdigest(),
    }
    if settings.store == "prompt":
        out["prompt"] = prompt
    elif settings.store == "prefix":
        out["prompt_prefix"] = prompt[: settings.prefix_chars]
    if max_line is not None:
        _fit(out, max_line)
    return out


def _fit(out: dict, max_line: int) -> None:
    """Shorten the kept prompt text so one line never exceeds the file's size cap."""
    field = "prompt" if "prompt" in out else "prompt_prefix" if "prompt_prefix" in out else None
    if field is None:
        return
    overflow = len(_line(out)) - max_line
    if overflow > 0:
        text = out[field]
        out[field] = text[: max(0, len(text) - overflow - 64)]  # 64: room for the flag and escaping slack
        out["truncated"] = True
        while len(_line(out)) > max_line and out[field]:
            out[field] = out[field][: len(out[field]) // 2]


def _line(out: dict) -> bytes:
    return (json.dumps(out, ensure_ascii=False, separators=(",", ":")) + "\n").encode(
        "utf-8", "surrogatepass"
    )


# -- the file --------------------------------------------------------------------------------------


class FileSink:
    """Append-only JSON lines with size-capped rotation. Called from a worker thread only."""

    def __init__(self, path: pathlib.Path, max_bytes: int, keep_files: int):
        self.path, self.max_bytes, self.keep_files = path, max_bytes, keep_files
        self.where = str(path)

    def write(self, lines: list[bytes]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        size = self.path.stat().st_size if self.path.exists() else 0
        pending: list[bytes] = []
        for line in lines:
            if size and size + len(line) > self.max_bytes:
                self._append(pending)
                pending, size = [], 0
                self._rotate()
            pending.append(line)
            size += len(line)
        self._append(pending)

    def _append(self, lines: list[bytes]) -> None:
        if lines:
            with open(self.path, "ab") as handle:
                handle.write(b"".join(lines))

    def _rotate(self) -> None:
        if self.keep_files == 0:
            self.path.unlink(missing_ok=True)
            return
        for index in range(self.keep_files - 1, 0, -1):
            older = rotated(self.path, index)
            if older.exists():
                os.replace(older, rotated(self.path, index + 1))
        os.replace(self.path, rotated(self.path, 1))


def rotated(path: pathlib.Path, index: int) -> pathlib.Path:
    return path.with_name(f"{path.name}.{index}")


def read_file(path: str | pathlib.Path, limit: int = READ_LIMIT) -> list[dict]:
    """Entries of a gap-log file and its rotations, newest first. A torn last line (the router
    stopped mid-write) is skipped."""
    path = pathlib.Path(path)
    if path.is_dir():
        path = path / FILE_NAME
    found: list[dict] = []
    index = 0
    candidate = path
    while len(found) < limit and (candidate.exists() or index == 0):
        if candidate.exists():
            for raw in reversed(candidate.read_bytes().splitlines()):
                try:
                    item = json.loads(raw)
                except ValueError:
                    continue
                if isinstance(item, dict):
                    found.append(item)
                    if len(found) >= limit:
                        break
        index += 1
        candidate = rotated(path, index)
    return found


# -- Redis -----------------------------------------------------------------------------------------


class RedisSink:
    """One capped stream per fleet; the connection is opened on first use and after any failure."""

    def __init__(self, address, fleet: str, max_entries: int):
        self.address, self.key, self.max_entries = address, stream_key(fleet), max_entries
        self.where = f"{address.display()} stream {self.key}"
        self._conn: resp.Connection | None = None

    async def _connection(self) -> resp.Connection:
        if self._conn is None or self._conn.closed:
            self._conn = await resp.Connection.open(self.address)
        return self._conn

    async def write(self, lines: list[bytes]) -> None:
        conn = await self._connection()
        commands = [
            ("XADD", self.key, "MAXLEN", "~", self.max_entries, "*", "entry", line.rstrip(b"\n"))
            for line in lines
        ]
        for reply in await conn.pipeline(commands):
            if isinstance(reply, resp.RedisError):
                raise reply

    async def read(self, limit: int) -> list[dict]:
        conn = await self._connection()
        found = []
        for _id, fields in await conn.call("XREVRANGE", self.key, "+", "-", "COUNT", limit) or []:
            values = dict(zip(fields[::2], fields[1::2], strict=True))
            try:
                item = json.loads(values.get(b"entry", b""))
            except ValueError:
                continue
            if isinstance(item, dict):
                item["id"] = _id.decode() if isinstance(_id, bytes) else str(_id)
                found.append(item)
        return found

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()


class ForwardSink:
    """A serving process of a multi-process router: its entries go to the coordinator, which owns
    the one file (rotation by several writers would lose lines)."""

    def __init__(self, send, where: str, max_bytes: int):
        self.send, self.where, self.max_bytes = send, where, max_bytes

    async def write(self, lines: list[bytes]) -> None:
        await self.send(lines)


# -- the log ---------------------------------------------------------------------------------------


class GapLog:
    def __init__(self, settings, sink, counter=None):
        self.settings, self.sink, self.counter = settings, sink, counter
        self.queue: asyncio.Queue[_Raw | None] = asyncio.Queue(QUEUE_SIZE)
        self.task: asyncio.Task | None = None
        self.written = 0
        self._warned_at = 0.0

    def record(self, raw: _Raw | bytes) -> None:
        """Queue one gap: the raw facts, or an entry line a serving process built (multi-process)."""
        if self.task is None:
            self.task = asyncio.get_running_loop().create_task(self._drain(), name="gap-log writer")
        try:
            self.queue.put_nowait(raw)
        except asyncio.QueueFull:
            self._count("queue-full")

    def close(self) -> None:
        """Stop after writing what is queued (a config reload replaced this log)."""
        if self.task is None:
            return
        try:
            self.queue.put_nowait(None)
        except asyncio.QueueFull:
            self.task.cancel()

    async def flush(self, timeout: float = 10.0) -> None:
        """Wait until everything queued so far is written (tests, shutdown)."""
        async with asyncio.timeout(timeout):
            await self.queue.join()

    async def read(self, limit: int) -> list[dict]:
        if isinstance(self.sink, RedisSink):
            return await self.sink.read(limit)
        return await asyncio.to_thread(read_file, self.sink.path, limit)

    async def _drain(self) -> None:
        stop = False
        while not stop:
            batch = [await self.queue.get()]
            while len(batch) < BATCH and not self.queue.empty():
                batch.append(self.queue.get_nowait())
            stop = None in batch
            raws = [r for r in batch if r is not None]
            try:
                await self._write(raws)
            except Exception as exc:  # noqa: BLE001 - the writer must outlive any one failure
                self._count("write-failed", len(raws))
                self._warn(exc)
            finally:
                for _ in batch:
                    self.queue.task_done()
        if isinstance(self.sink, RedisSink):
            self.sink.close()

    async def _write(self, raws: list[_Raw]) -> None:
        if not raws:
            return
        max_line = getattr(self.sink, "max_bytes", None)
        if isinstance(self.sink, RedisSink | ForwardSink):
            await self.sink.write([r if isinstance(r, bytes) else _line(entry(r, self.settings, max_line)) for r in raws])
        else:
            lines = await asyncio.to_thread(
                lambda: [r if isinstance(r, bytes) else _line(entry(r, self.settings, max_line)) for r in raws]
            )
            await asyncio.to_thread(self.sink.write, lines)
        self.written += len(raws)
        if not isinstance(self.sink, ForwardSink):  # the coordinator counts the lines when it writes them
            self._count("recorded", len(raws))

    def _count(self, result: str, amount: int = 1) -> None:
        if self.counter is not None:
            self.counter.inc(result, amount=amount)

    def _warn(self, exc: Exception) -> None:
        now = time.monotonic()
        if now - self._warned_at > 60:  # one line a minute, not one per prompt, while the sink is down
            self._warned_at = now
            log.warning(
                "the routing-gap log cannot write to %s (%s: %s); entries are dropped and counted in "
                'fleetspec_router_routing_gaps_total{result="write-failed"} until it can',
                self.sink.where,
                exc.__class__.__name__,
                exc,
            )


# -- attached to a router --------------------------------------------------------------------------

_logs: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # router → (key, GapLog | None)


def for_router(router) -> GapLog | None:
    """The router's gap log for its current config (rebuilt after a reload changes where or how it
    writes); None when routing.gap_log.enabled is false."""
    config = router.config
    settings = config.spec.routing.gap_log
    key = (settings, config.redis, config.spec.name, str(router.config_path))
    held = _logs.get(router)
    if held is not None and held[0] == key:
        return held[1]
    if held is not None and held[1] is not None:
        held[1].close()
    gap_log = None
    if settings.enabled:
        path = pathlib.Path(router.config_path).parent / FILE_NAME
        forward = getattr(router, "forward_gaps", None)
        if config.redis is not None:
            sink = RedisSink(config.redis, config.spec.name, settings.max_entries)
        elif forward is not None:
            sink = ForwardSink(forward, str(path), settings.max_bytes)
        else:
            sink = FileSink(path, settings.max_bytes, settings.keep_files)
        gap_log = GapLog(settings, sink, router.metrics.gaps)
    _logs[router] = (key, gap_log)
    return gap_log


def record(router, decision: table.Decision, prompt: str, extensions) -> None:
    """The proxy's one call, right after the routing decision: queue the prompt if it is a gap."""
    if not is_gap(decision):
        return
    gap_log = for_router(router)
    if gap_log is not None:
        gap_log.record(_Raw(time.time(), router.config.spec.name, decision, prompt, tuple(extensions)))
