"""Seed 001's routing-gap log: bounded files with rotation, each privacy setting, the queue that
keeps it off the hot path, the admin route, the CLI, seed 000's metric names, and a capped Redis
stream on a real redis-server."""

from __future__ import annotations

import asyncio
import json
import pathlib
import shutil
import subprocess
import textwrap
import time

import pytest
import require
import yaml
from netkit import free_port

from fleetspec.cli import app
from fleetspec.router import admin, gaplog, httpio, metrics, resp, server
from fleetspec.routing import config, redis_url
from fleetspec.spec import models

SECRET = "the launch codes are 0000-1111-2222 and nobody may read this sentence back"
PROMPT = f"{SECRET} while the weather is fine, see notes.txt"

FLEET = textwrap.dedent("""\
    name: gaps
    base_model: {id: fleetspec/tiny-test-llama, max_model_len: 2048}
    gpus: [{type: sim, count: 1}]
    servers:
      - {name: main, lora: {max_loras: 2, max_cpu_loras: 4, max_lora_rank: 8}}
    specialists:
      - {name: python, version: 1.0.0, path: /adapters/python/1.0.0, keywords: [pytest]}
    routing:
      rules: [{name: signals, specialist_signals: true}]
    runtime: {router: {admin_token: "${GAP_TOKEN}"}}
    """)


def _spec(gap_log: dict | None = None, redis: str | None = None) -> models.FleetSpec:
    doc = yaml.safe_load(FLEET)
    if gap_log is not None:
        doc["routing"]["gap_log"] = gap_log
    if redis is not None:
        doc["runtime"]["router"]["redis_url"] = redis
    return models.FleetSpec.model_validate(doc)


def _router(tmp_path: pathlib.Path, gap_log: dict | None = None, redis: str | None = None) -> server.Router:
    path = tmp_path / "router.json"
    doc = config.document(_spec(gap_log, redis), [config.Upstream("main", 0, "http://127.0.0.1:9")])
    path.write_text(config.dumps(doc))
    router = server.Router(path, env={"GAP_TOKEN": "tok"})
    router.load()
    return router


async def _route(router: server.Router, *prompts: str) -> gaplog.GapLog:
    for index, prompt in enumerate(prompts, 1):
        decision = router.config.table.decide(prompt, extensions=[".sql"], explain=False)
        gaplog.record(router, decision, prompt, [".sql"])
        if index % 500 == 0:  # stay under the queue's bound: this test is about what gets written
            await gaplog.for_router(router).flush()
    log = gaplog.for_router(router)
    await log.flush()
    return log


def _on_disk(folder: pathlib.Path) -> bytes:
    return b"".join(p.read_bytes() for p in sorted(folder.glob(gaplog.FILE_NAME + "*")))


def test_only_prompts_no_rule_matched_are_gaps(tmp_path):
    async def scenario():
        router = _router(tmp_path)
        await _route(router, "my pytest fixture fails", "what is the weather like")
        return gaplog.read_file(tmp_path / gaplog.FILE_NAME)

    entries = asyncio.run(scenario())
    assert [e["prompt_prefix"] for e in entries] == ["what is the weather like"]
    (only,) = entries
    assert (
        only["fallback_reason"] == "no-match"
        and only["rule"] == "fallback"
        and only["extensions"] == [".sql"]
    )
    assert only["fleet"] == "gaps" and only["time"].endswith("+00:00")


@pytest.mark.parametrize("store", ["hash", "prefix", "prompt"])
def test_privacy_setting_decides_what_of_the_prompt_reaches_disk(tmp_path, store):
    async def scenario():
        router = _router(tmp_path, {"store": store, "prefix_chars": 12})
        await _route(router, PROMPT)
        return gaplog.read_file(tmp_path)

    (entry,) = asyncio.run(scenario())
    disk = _on_disk(tmp_path)
    assert entry["prompt_chars"] == len(PROMPT) and len(entry["prompt_sha256"]) == 64
    assert entry["extensions"] == [".sql", ".txt"]  # .txt found in the prompt, .sql from the header
    if store == "prompt":
        assert entry["prompt"] == PROMPT and SECRET.encode() in disk
    else:
        assert "prompt" not in entry
        assert SECRET[:13].encode() not in disk  # not even a character past the prefix
    if store == "prefix":
        assert entry["prompt_prefix"] == PROMPT[:12] and PROMPT[:12].encode() in disk
    if store == "hash":
        assert "prompt_prefix" not in entry and b"launch" not in disk


def test_file_is_capped_and_rotated_newest_first(tmp_path):
    async def scenario():
        router = _router(tmp_path, {"store": "prompt", "max_bytes": 4096, "keep_files": 2})
        await _route(router, *(f"prompt number {i:04d} " + "x" * 300 for i in range(100)))

    asyncio.run(scenario())
    files = sorted(p.name for p in tmp_path.glob(gaplog.FILE_NAME + "*"))
    assert files == [gaplog.FILE_NAME, gaplog.FILE_NAME + ".1", gaplog.FILE_NAME + ".2"]
    assert all(0 < (tmp_path / f).stat().st_size <= 4096 for f in files)
    numbers = [int(e["prompt"].split()[2]) for e in gaplog.read_file(tmp_path, limit=1000)]
    assert numbers == sorted(numbers, reverse=True) and numbers[0] == 99  # newest first, oldest rotated away
    assert len(numbers) < 100 and numbers == list(range(99, 99 - len(numbers), -1))


def test_one_huge_prompt_still_fits_the_cap(tmp_path):
    async def scenario():
        router = _router(tmp_path, {"store": "prompt", "max_bytes": 4096, "keep_files": 0})
        await _route(router, "é" * 50_000)

    asyncio.run(scenario())
    assert (tmp_path / gaplog.FILE_NAME).stat().st_size <= 4096
    (entry,) = gaplog.read_file(tmp_path)
    assert entry["truncated"] is True and entry["prompt_chars"] == 50_000


def test_a_full_queue_drops_and_counts_instead_of_waiting(tmp_path):
    async def scenario():
        router = _router(tmp_path)
        decision = router.config.table.decide("nothing matches this", explain=False)
        for _ in range(gaplog.QUEUE_SIZE + 7):  # no await in between: the writer cannot run yet
            gaplog.record(router, decision, "nothing matches this", [])
        await gaplog.for_router(router).flush()
        return router.metrics

    found = asyncio.run(scenario())
    assert found.gaps.values == {("queue-full",): 7.0, ("recorded",): float(gaplog.QUEUE_SIZE)}
    assert 'fleetspec_router_routing_gaps_total{result="queue-full"} 7' in found.render()


def test_disabled_log_writes_nothing(tmp_path):
    async def scenario():
        router = _router(tmp_path, {"enabled": False})
        gaplog.record(router, router.config.table.decide("weather", explain=False), "weather", [])
        return await admin.handle(router, _get("/admin/gaps"))

    status, body = asyncio.run(scenario())
    assert status == 409 and "routing.gap_log.enabled" in body["error"]["message"]
    assert not list(tmp_path.glob(gaplog.FILE_NAME + "*"))


def _get(target: str, token: str = "tok") -> httpio.Request:
    return httpio.Request("GET", target, {"authorization": f"Bearer {token}"}, b"", True)


def test_admin_route_lists_newest_first_with_a_limit(tmp_path):
    async def scenario():
        router = _router(tmp_path)
        await _route(router, "first gap", "second gap", "third gap")
        return (
            await admin.handle(router, _get("/admin/gaps?limit=2")),
            await admin.handle(router, _get("/admin/gaps?limit=0")),
            await admin.handle(router, _get("/admin/gaps", token="wrong")),
        )

    (status, body), (bad, _), (denied, _) = asyncio.run(scenario())
    assert status == 200 and body["count"] == 2 and body["store"] == "prefix"
    assert [g["prompt_prefix"] for g in body["gaps"]] == ["third gap", "second gap"]
    assert bad == 400 and denied == 401


def test_cli_reads_the_file_as_text_and_json(tmp_path, capsys):
    async def scenario():
        await _route(_router(tmp_path, {"store": "hash"}), "alpha gap", "beta gap")

    asyncio.run(scenario())
    assert app.main(["gaps", str(tmp_path / gaplog.FILE_NAME), "--format", "json", "--limit", "1"]) == 0
    (latest,) = json.loads(capsys.readouterr().out)
    assert latest["prompt_chars"] == len("beta gap") and "prompt" not in latest
    assert app.main(["gaps", str(tmp_path)]) == 0
    text = capsys.readouterr().out
    assert text.count("no-match") == 2 and "prompt not kept" in text and "beta" not in text
    assert app.main(["gaps", str(tmp_path / "nowhere.jsonl")]) == 1
    assert "there is no routing-gap log" in capsys.readouterr().err


def test_seed_000_metric_names_follow_fleetspecs_own():
    found = metrics.RouterMetrics()
    assert "\nensemble_miss_rate " not in found.render()  # no rate before the first request
    for code in ("200", "200", "200", "400"):
        found.requests.inc("_base", "", code)
    found.fallbacks.inc("no-match")
    text = found.render()
    assert "\nensemble_miss_total 1\n" in text and "\nswarm_router_requests_total 4\n" in text
    assert "# TYPE ensemble_miss_rate gauge" in text and "\nensemble_miss_rate 0.25\n" in text


# -- Redis -----------------------------------------------------------------------------------------


@pytest.fixture
def redis_port(tmp_path):
    binary = shutil.which("redis-server")
    if binary is None:
        require.unavailable(
            "REDIS", "redis-server is not installed (Debian package redis-server; .ci/run installs it)"
        )
    port = free_port()
    with (tmp_path / "redis.log").open("wb") as log:
        proc = subprocess.Popen(
            [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 15
        while not _pong(port):
            assert proc.poll() is None and time.monotonic() < deadline, "redis-server did not answer PING"
            time.sleep(0.05)
        yield port
    finally:
        proc.kill()
        proc.wait(timeout=10)


def _pong(port: int) -> bool:
    async def ping():
        conn = await resp.Connection.open(redis_url.parse_url(f"redis://127.0.0.1:{port}"))
        try:
            return await conn.call("PING")
        finally:
            conn.close()

    try:
        return asyncio.run(ping()) == "PONG"
    except resp.Unavailable:
        return False


def test_redis_stream_is_capped_and_read_newest_first(tmp_path, redis_port):
    async def scenario():
        router = _router(
            tmp_path, {"store": "hash", "max_entries": 100}, redis=f"redis://127.0.0.1:{redis_port}/0"
        )
        log = await _route(router, *(f"{SECRET} {i}" for i in range(2000)))
        conn = await resp.Connection.open(redis_url.parse_url(f"redis://127.0.0.1:{redis_port}"))
        try:
            length = await conn.call("XLEN", gaplog.stream_key("gaps"))
            raw = await conn.call("XRANGE", gaplog.stream_key("gaps"), "-", "+")
        finally:
            conn.close()
        return length, raw, await admin.handle(router, _get("/admin/gaps?limit=3")), log

    length, raw, (status, body), log = asyncio.run(scenario())
    assert 100 <= length < 2000  # MAXLEN ~ trims whole macro nodes: about the cap, never unbounded
    assert not list(tmp_path.glob(gaplog.FILE_NAME + "*"))  # Redis replaces the file
    assert SECRET.encode() not in b"".join(v for _id, fields in raw for v in fields)
    assert (
        status == 200 and body["count"] == 3 and body["where"].endswith("stream fleetspec:gaps:router:gaps")
    )
    ids = [tuple(int(part) for part in g["id"].split("-")) for g in body["gaps"]]
    assert body["gaps"][0]["prompt_chars"] == len(f"{SECRET} 1999") and ids == sorted(ids, reverse=True)
    assert log.written == 2000
