"""Benchmark: the router's routing decision and its proxy overhead.

1. Decision time. A table of 1,000 specialists with 20 keywords (plus 2 domains and 1 extension)
   each, routed by `specialist_signals`, on prompts of 1 KB and 32 KB made of ordinary words with a
   few keywords in them. fleetspec's `RoutingTable.decide` (one word split + set intersection, one
   extension pass) runs side by side with seed 001's dispatcher loop (`any(kw in task_lower for kw
   in kws)` for every specialist: a substring test per keyword, so it does less than whole-word
   matching and is the cheapest form of the naive loop). Interleaved per prompt; per-call times.

2. Proxy overhead. One sim engine (subprocess) and the router in front of it (subprocess). Clients
   (threads, one keep-alive connection each) send the same completion requests directly to the sim
   and through the router, interleaved in rounds; the overhead is the difference of medians at each
   concurrency. The sim answers in about a millisecond, so the router's share is visible.

3. Shared state in Redis (`--part redis`, needs redis-server on PATH). How long a cluster mapping
   written through one router's store takes to reach another's (two `RedisState`s in one process,
   each with its own connections, following one redis-server on loopback), how long the write
   itself takes, and the proxy overhead of a router following Redis next to one keeping mappings
   in memory (requests never wait on Redis, so the two should match).

4. Embedding tier (`--part embedding`, needs the `embedding` extra). Per-call decision time for
   prompts no rule matches (so the tier runs), rules only (`decide(..., embed=False)`) side by side
   with rules + embedding, on the 1,000-specialist table of part 1 and on a 3-specialist fleet with
   examples; prompts of English words from the repository's docs, 100 B, 1 KB and 32 KB.

Usage: .venv/bin/python bench/bench_router.py [--part decision|proxy|redis|embedding|all] [--specialists 1000]
       [--keywords 20] [--requests 400] [--concurrency 1,8,32]
Figures go to docs/benchmarks.md, section "Router".
"""

from __future__ import annotations

import argparse
import concurrent.futures
import http.client
import json
import os
import pathlib
import platform
import random
import socket
import statistics
import string
import subprocess
import sys
import tempfile
import time
import urllib.request

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from fleetspec.routing import config, table  # noqa: E402
from fleetspec.spec import models  # noqa: E402

BASE = "fleetspec/tiny-test-llama"


# -- inputs -----------------------------------------------------------------------------------------


def vocabulary(rng: random.Random, size: int, taken: set[str]) -> list[str]:
    words: list[str] = []
    while len(words) < size:
        word = "".join(rng.choice(string.ascii_lowercase) for _ in range(rng.randint(4, 10)))
        if word not in taken:
            taken.add(word)
            words.append(word)
    return words


def big_fleet(specialists: int, keywords: int, rng: random.Random) -> tuple[models.FleetSpec, list[list[str]]]:
    taken: set[str] = set()
    lists = [vocabulary(rng, keywords, taken) for _ in range(specialists)]
    data = {
        "name": "bench", "base_model": {"id": BASE}, "gpus": "1x H100-80GB",
        "servers": [{"name": "main", "lora": {"max_loras": 16, "max_lora_rank": 64}}],
        "specialists": [{
            "name": f"spec-{i:04d}", "version": "1.0.0", "path": f"/adapters/{i}", "keywords": words,
            "domains": [f"domain{i:04d}", f"area{i % 97}"], "extensions": [f".x{i:04d}"],
        } for i, words in enumerate(lists)],
        "routing": {"rules": [{"name": "signals", "specialist_signals": True}]},
    }
    return models.FleetSpec.model_validate(data), lists


def prompts(rng: random.Random, size: int, count: int, keyword_lists: list[list[str]]) -> list[str]:
    """Ordinary words (not keywords) with three keywords of random specialists mixed in."""
    filler = vocabulary(rng, 5_000, {w for words in keyword_lists for w in words})
    out = []
    for _ in range(count):
        words = [rng.choice(rng.choice(keyword_lists)) for _ in range(3)]
        while sum(len(w) + 1 for w in words) < size:
            words.append(rng.choice(filler))
        rng.shuffle(words)
        out.append(" ".join(words)[:size])
    return out


def seed_001_dispatch(domain_keywords: dict[str, list[str]], task: str) -> list[str]:
    """Seed 001's `extract_keywords`, verbatim in spirit: lower-case, substring test per keyword."""
    task_lower = task.lower()
    return [domain for domain, kws in domain_keywords.items() if any(kw in task_lower for kw in kws)]


# -- measuring --------------------------------------------------------------------------------------


DECISION_P99_TARGET_US = 50.0  # issue 17: a routing decision at 1 KB, p99


def percentiles(values: list[float]) -> dict:
    ordered = sorted(values)

    def at(q: float) -> float:
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]

    return {"p50": statistics.median(ordered), "p25": at(0.25), "p75": at(0.75), "p99": at(0.99),
            "min": ordered[0], "max": ordered[-1], "n": len(ordered)}


def bench_decision(specialists: int, keywords: int, runs: int) -> list[dict]:
    rng = random.Random(8)
    started = time.perf_counter()
    spec, lists = big_fleet(specialists, keywords, rng)
    built = time.perf_counter()
    routing = table.RoutingTable.from_spec(spec)
    compiled = time.perf_counter()
    print(f"fleet of {specialists} specialists x {keywords} keywords: spec {built - started:.2f} s, "
          f"table compile {(compiled - built) * 1000:.0f} ms", file=sys.stderr)
    domain_keywords = {s.name: [*s.keywords, *s.domains] for s in spec.specialists}
    rows = []
    for size, count in ((1024, runs), (32 * 1024, max(20, runs // 10))):
        batch = prompts(rng, size, count, lists)
        # The interpreter warmed first (one untimed pass), then every decision back to back, as a
        # busy router makes them. The seed loop is timed in its own pass afterwards: interleaved,
        # its 10 ms calls evicted the table from the CPU caches and the p99 measured that instead.
        for prompt in batch:
            routing.decide(prompt, explain=False)
        ours = []
        for prompt in batch:
            t0 = time.perf_counter_ns()
            routing.decide(prompt, explain=False)
            ours.append((time.perf_counter_ns() - t0) / 1000)
        naive = []
        for prompt in batch:
            t0 = time.perf_counter_ns()
            seed_001_dispatch(domain_keywords, prompt)
            naive.append((time.perf_counter_ns() - t0) / 1000)
        rows.append({"prompt": f"{size // 1024} KB", "fleetspec": percentiles(ours), "seed_001": percentiles(naive)})
    return rows


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(url: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=1) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.05)
    raise RuntimeError(f"{url} did not answer within {timeout}s")


def client_round(port: int, model: str, requests: int, concurrency: int) -> list[float]:
    """Latencies (ms) of `requests` completions spread over `concurrency` keep-alive clients."""
    body = json.dumps({"model": model, "prompt": "a pytest question", "max_tokens": 4}).encode()
    headers = {"Content-Type": "application/json"}

    def worker(count: int) -> list[float]:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        out = []
        for _ in range(count):
            t0 = time.perf_counter()
            conn.request("POST", "/v1/completions", body, headers)
            response = conn.getresponse()
            response.read()
            out.append((time.perf_counter() - t0) * 1000)
            if response.status != 200:
                raise RuntimeError(f"status {response.status} on port {port}: {response.read()[:200]!r}")
        conn.close()
        return out

    share = [max(1, requests // concurrency)] * concurrency
    with concurrent.futures.ThreadPoolExecutor(concurrency) as pool:
        return [x for part in pool.map(worker, share) for x in part]


def stub_engine(port: int) -> None:
    """A minimal engine for isolating the router's own cost: answers in one write, no work."""
    import asyncio

    models_body = json.dumps({"object": "list", "data": [{"id": BASE}, {"id": "python--1.0.0", "parent": BASE}]})
    answer = json.dumps({"id": "cmpl-1", "object": "text_completion", "model": "python--1.0.0",
                         "choices": [{"index": 0, "text": " a b c d", "finish_reason": "length"}]})

    def reply(body: str) -> bytes:
        data = body.encode()
        return b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (len(data), data)

    async def handle(reader, writer):
        while True:
            try:
                head = await reader.readuntil(b"\r\n\r\n")
            except (asyncio.IncompleteReadError, ConnectionError):
                break
            length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                           if line.lower().startswith(b"content-length:")), 0)
            await reader.readexactly(length)
            path = head.split(b" ")[1]
            writer.write(reply(models_body if path == b"/v1/models" else "" if path == b"/health" else answer))
            await writer.drain()
        writer.close()

    async def serve():
        server = await asyncio.start_server(handle, "127.0.0.1", port, backlog=1024)
        async with server:
            await server.serve_forever()

    asyncio.run(serve())


def start_engine(engine: str, port: int, env: dict) -> subprocess.Popen:
    if engine == "stub":
        argv = [sys.executable, __file__, "--stub-engine", str(port)]
    else:
        adapter = ROOT / "adapters/python/1.0.0"
        argv = [sys.executable, "-m", "fleetspec.sim", "serve", BASE, "--port", str(port), "--enable-lora",
                "--max-lora-rank", "8", "--lora-modules", f"python--1.0.0={adapter}"]
    return subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def bench_proxy(engine: str, requests: int, levels: list[int], redis_url: str | None = None) -> list[dict]:
    work = pathlib.Path(tempfile.mkdtemp(prefix="bench-router-"))
    sim_port, router_port = free_port(), free_port()
    env = {**os.environ, "FLEETSPEC_SIM_STARTUP_SECONDS": "0"}
    adapter = ROOT / "adapters/python/1.0.0"
    sim = start_engine(engine, sim_port, env)
    router = None
    try:
        wait_ready(f"http://127.0.0.1:{sim_port}/health")
        spec = models.FleetSpec.model_validate({
            "name": "bench", "base_model": {"id": BASE}, "gpus": [{"type": "sim", "count": 1}],
            "servers": [{"name": "main", "lora": {"max_loras": 2, "max_lora_rank": 8}}],
            "specialists": [{"name": "python", "version": "1.0.0", "path": str(adapter), "keywords": ["pytest"]}],
            "runtime": {"router": {"redis_url": redis_url}},
        })
        path = work / "router.json"
        path.write_text(config.dumps(config.document(spec, [config.Upstream("main", 0, f"http://127.0.0.1:{sim_port}")])))
        router = subprocess.Popen([sys.executable, "-m", "fleetspec.router", "serve", "--config", str(path),
                                   "--port", str(router_port), "--log-level", "warning"], env=env)
        wait_ready(f"http://127.0.0.1:{router_port}/health")
        rows = []
        for level in levels:
            client_round(sim_port, "python--1.0.0", 2 * level, level)  # warm-up, untimed
            client_round(router_port, "auto", 2 * level, level)
            direct, proxied = [], []
            for _ in range(4):  # A B B A ... rounds
                direct += client_round(sim_port, "python--1.0.0", requests // 8, level)
                proxied += client_round(router_port, "auto", requests // 8, level)
                proxied += client_round(router_port, "auto", requests // 8, level)
                direct += client_round(sim_port, "python--1.0.0", requests // 8, level)
            rows.append({"engine": engine + (" (router on Redis)" if redis_url else ""), "concurrency": level,
                         "direct": percentiles(direct),
                         "router": percentiles(proxied)})
        return rows
    finally:
        for proc in (router, sim):
            if proc is not None:
                proc.terminate()
                proc.wait(timeout=10)


# -- shared state in Redis ---------------------------------------------------------------------------


def start_redis(port: int) -> subprocess.Popen:
    argv = ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
                sock.sendall(b"PING\r\n")
                if sock.recv(16).startswith(b"+PONG"):
                    return proc
        except OSError:
            time.sleep(0.02)
    proc.kill()
    raise RuntimeError("redis-server did not answer PING within 15 s")


async def propagation(port: int, rounds: int) -> dict:
    """Per round: write one mapping through store A; time until store B has re-read the map."""
    import asyncio

    from fleetspec.router import runtime_state
    from fleetspec.routing import redis_url

    address = redis_url.Address("127.0.0.1", port)
    changed = asyncio.Event()
    # Re-reading only every 60 s: what arrives sooner came by PUBLISH.
    writer = runtime_state.RedisState(address, "bench-spread", resync_seconds=60)
    reader = runtime_state.RedisState(address, "bench-spread", resync_seconds=60)
    await writer.start(lambda: None)
    await reader.start(changed.set)
    writes, arrivals = [], []
    try:
        for n in range(rounds):
            changed.clear()
            override = runtime_state.ClusterOverride(0, "ensemble", f"c{n % 1000}", f"spec-{n}", time.time())
            t0 = time.perf_counter()
            await writer.set_overrides([override])
            t1 = time.perf_counter()
            async with asyncio.timeout(5):
                await changed.wait()
            t2 = time.perf_counter()
            writes.append((t1 - t0) * 1000)
            arrivals.append((t2 - t0) * 1000)
    finally:
        await writer.stop()
        await reader.stop()
    return {"write": percentiles(writes), "arrival": percentiles(arrivals), "mappings": len(reader.overrides)}


def bench_redis(rounds: int, requests: int, levels: list[int]) -> tuple[dict, list[dict]]:
    import asyncio

    port = free_port()
    redis = start_redis(port)
    try:
        spread = asyncio.run(propagation(port, rounds))
        proxy = []
        for level in levels:
            proxy += bench_proxy("stub", requests, [level])
            proxy += bench_proxy("stub", requests, [level], redis_url=f"redis://127.0.0.1:{port}/0")
        return spread, proxy
    finally:
        redis.kill()
        redis.wait(timeout=10)


def redis_table(spread: dict) -> str:
    lines = [f"Mappings in the hash by the end: {spread['mappings']}.", "",
             "| step | p50 ms | p25–p75 ms | p99 ms | min–max ms | rounds |", "|---|---:|---:|---:|---:|---:|"]
    for name, key in (("write through store A (MULTI, HSET, PUBLISH, EXEC)", "write"),
                      ("write until store B has the new map", "arrival")):
        p = spread[key]
        lines.append(f"| {name} | {p['p50']:.3f} | {p['p25']:.3f}–{p['p75']:.3f} | {p['p99']:.3f} | "
                     f"{p['min']:.3f}–{p['max']:.3f} | {p['n']} |")
    return "\n".join(lines)


# -- embedding tier ---------------------------------------------------------------------------------

SMALL_FLEET = {
    "name": "bench-small", "base_model": {"id": BASE}, "gpus": "1x H100-80GB",
    "servers": [{"name": "main", "lora": {"max_loras": 4, "max_lora_rank": 64}}],
    "specialists": [
        {"name": "python", "version": "1.0.0", "path": "/a/p", "domains": ["python", "debugging", "testing"],
         "keywords": ["pytest", "pip", "django"],
         "examples": ["Why does my list comprehension raise a TypeError?", "How do I mock a function in my unit tests?"]},
        {"name": "sql", "version": "1.0.0", "path": "/a/s", "domains": ["databases"], "keywords": ["sql", "postgres"],
         "examples": ["Why is my JOIN returning duplicate rows?", "How do I add an index to speed up this lookup?"]},
        {"name": "k8s", "version": "1.0.0", "path": "/a/k", "domains": ["kubernetes", "deployment"],
         "keywords": ["kubectl", "helm", "pod"],
         "examples": ["My container keeps restarting with CrashLoopBackOff", "How do I roll back a deployment?"]},
    ],
    "routing": {"rules": [{"name": "signals", "specialist_signals": True}]},
}


def english_words(specs) -> list[str]:
    """Words of the repository's docs that are no keyword or domain of these fleets."""
    import re

    text = " ".join(p.read_text(encoding="utf-8") for p in (ROOT / "README.md", ROOT / "docs/spec.md") if p.exists())
    taken = {t.lower() for spec in specs for s in spec.specialists for t in (*s.keywords, *s.domains)}
    return sorted(set(re.findall(r"\b[a-z]{3,12}\b", text.lower())) - taken)


def silent_prompts(rng: random.Random, words: list[str], size: int, count: int, routing) -> list[str]:
    """Prompts of `size` bytes on which no rule of `routing` fires, so the embedding tier runs."""
    out = []
    while len(out) < count:
        picked = []
        while sum(len(w) + 1 for w in picked) < size:
            picked.append(rng.choice(words))
        prompt = " ".join(picked)[:size]
        if routing.decide(prompt, explain=False, embed=False).rule is table.FALLBACK:
            out.append(prompt)
    return out


def bench_embedding(specialists: int, keywords: int, runs: int) -> list[dict]:
    from fleetspec.routing import embedding

    started = time.perf_counter()
    embedding.encoder()
    loaded = time.perf_counter()
    print(f"model load {loaded - started:.2f} s", file=sys.stderr)
    rng = random.Random(9)
    big, _ = big_fleet(specialists, keywords, rng)
    fleets, specs = {}, (big, models.FleetSpec.model_validate(SMALL_FLEET))
    for label, spec in zip((f"{specialists} specialists", "3 specialists with examples"), specs, strict=True):
        spec = spec.model_copy(update={"routing": spec.routing.model_copy(update={
            "embedding": models.EmbeddingTier(enabled=True)})})
        t0 = time.perf_counter()
        fleets[label] = config.routing_table(spec)
        print(f"{label}: index of {fleets[label].embedding.vectors.shape[0]} texts built in "
              f"{time.perf_counter() - t0:.2f} s", file=sys.stderr)
    words, rows = english_words(specs), []
    for label, routing in fleets.items():
        for size in (100, 1024, 32 * 1024):
            rules, tiered = [], []
            for prompt in silent_prompts(rng, words, size, runs, routing):
                t0 = time.perf_counter_ns()
                routing.decide(prompt, explain=False, embed=False)
                t1 = time.perf_counter_ns()
                routing.decide(prompt, explain=False)
                t2 = time.perf_counter_ns()
                rules.append((t1 - t0) / 1000)
                tiered.append((t2 - t1) / 1000)
            rows.append({"fleet": label, "prompt": f"{size} B" if size < 1024 else f"{size // 1024} KB",
                         "rules": percentiles(rules), "embedding": percentiles(tiered)})
    return rows


def embedding_table(rows: list[dict]) -> str:
    lines = ["| fleet | prompt | rules only p50 µs | p99 µs | rules + embedding p50 ms | p99 ms | added at p50 ms | runs |",
             "|---|---|---:|---:|---:|---:|---:|---:|"]
    for row in rows:
        rules, tiered = row["rules"], row["embedding"]
        lines.append(f"| {row['fleet']} | {row['prompt']} | {rules['p50']:.1f} | {rules['p99']:.1f} | "
                     f"{tiered['p50'] / 1000:.2f} | {tiered['p99'] / 1000:.2f} | "
                     f"**{(tiered['p50'] - rules['p50']) / 1000:.2f}** | {tiered['n']} |")
    return "\n".join(lines)


# -- report -----------------------------------------------------------------------------------------


def decision_table(rows: list[dict], specialists: int, keywords: int) -> str:
    lines = [f"Table: {specialists} specialists x {keywords} keywords (+2 domains, 1 extension each), "
             "`specialist_signals`.", "",
             "| prompt | approach | p50 µs | p25–p75 µs | p99 µs | min–max µs | seed loop / fleetspec (p50) |",
             "|---|---|---:|---:|---:|---:|---:|"]
    for row in rows:
        ours, naive = row["fleetspec"], row["seed_001"]
        for name, p in (("fleetspec `decide`", ours), ("seed 001 loop", naive)):
            ratio = f"**{naive['p50'] / ours['p50']:.0f}×**" if p is ours else ""
            lines.append(f"| {row['prompt']} | {name} | {p['p50']:.1f} | {p['p25']:.1f}–{p['p75']:.1f} | "
                         f"{p['p99']:.1f} | {p['min']:.1f}–{p['max']:.1f} | {ratio} |")
    return "\n".join(lines)


def proxy_table(rows: list[dict]) -> str:
    lines = ["| engine | concurrency | path | p50 ms | p25–p75 ms | p99 ms | requests | added at p50 ms |",
             "|---|---:|---|---:|---:|---:|---:|---:|"]
    for row in rows:
        direct, routed = row["direct"], row["router"]
        for name, p in (("engine directly", direct), ("through router", routed)):
            added = f"**{routed['p50'] - direct['p50']:.2f}**" if p is routed else ""
            lines.append(f"| {row['engine']} | {row['concurrency']} | {name} | {p['p50']:.2f} | "
                         f"{p['p25']:.2f}–{p['p75']:.2f} | {p['p99']:.2f} | {p['n']} | {added} |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--part", choices=["decision", "proxy", "redis", "embedding", "all"], default="all")
    parser.add_argument("--embedding-runs", type=int, default=300, help="prompts per size for --part embedding")
    parser.add_argument("--rounds", type=int, default=500, help="mapping writes timed by --part redis")
    parser.add_argument("--specialists", type=int, default=1000)
    parser.add_argument("--keywords", type=int, default=20)
    parser.add_argument("--runs", type=int, default=2000, help="1 KB prompts (32 KB: a tenth)")
    parser.add_argument("--requests", type=int, default=800, help="per path and concurrency level")
    parser.add_argument("--concurrency", default="1,8,32")
    parser.add_argument("--engines", default="stub,sim", help="stub: a no-work engine that isolates the router")
    parser.add_argument("--sim-concurrency", default="1,8",
                        help="the sim's stdlib server listens with a backlog of 5: more connects at once get resets")
    parser.add_argument("--stub-engine", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.stub_engine:
        return stub_engine(args.stub_engine)
    print(f"# {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}")
    missed = False
    if args.part in ("decision", "all"):
        rows = bench_decision(args.specialists, args.keywords, args.runs)
        print(decision_table(rows, args.specialists, args.keywords))
        p99 = rows[0]["fleetspec"]["p99"]  # 1 KB prompts
        missed = p99 > DECISION_P99_TARGET_US
        print(f"\nTarget (1 KB decision p99 at most {DECISION_P99_TARGET_US:.0f} µs): "
              f"{'MISSED' if missed else 'met'}, p99 {p99:.1f} µs")
        print()
    if args.part in ("proxy", "all"):
        levels = {"stub": args.concurrency, "sim": args.sim_concurrency}
        print(proxy_table([row for engine in args.engines.split(",")
                           for row in bench_proxy(engine, args.requests, [int(c) for c in levels[engine].split(",")])]))
        print()
    if args.part in ("redis", "all"):
        spread, proxy = bench_redis(args.rounds, args.requests, [int(c) for c in args.concurrency.split(",")])
        print(redis_table(spread))
        print()
        print(proxy_table(proxy))
        print()
    if args.part in ("embedding", "all"):
        print(embedding_table(bench_embedding(args.specialists, args.keywords, args.embedding_runs)))
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
