"""The router side by side with the proxies a user would pick instead, on one trivial upstream,
measured with wrk (a C load generator), so that the client does not compete for the router's core.

    .venv/bin/python bench/bench_router_wrk.py [--concurrency 1,8,32,128] [--stream-concurrency 32,128]
        [--seconds 4] [--rounds 3]
        [--peers fleetspec,fleetspec-coroutines,fleetspec-asyncio,fleetspec-processes-N,vllm-router,nginx,litellm]
        [--vllm-router PATH] [--litellm PATH] [--router-core 1] [--load-core 0]

Fair by construction:
- every router under test is pinned to one core (`taskset -c ROUTER_CORE`; threads inherit it, so
  vllm-router's tokio workers and nginx's worker stay there too); wrk and the upstream share the other;
- the upstream is nginx answering from memory (a chat completion, or an SSE stream of 50 chunks),
  so no router waits on a slow engine; every peer talks to the same one over keep-alive;
- the same request for everyone: a chat completion with `model: "auto"` (fleetspec reads the prompt
  and routes it by content to a specialist; the others forward it);
- each round runs every peer once, in a rotating order; the figures are medians over rounds;
- CPU per request is the router process tree's own user+system time (/proc) over the requests wrk
  completed in that run.

Needs Debian's `wrk` and `nginx` (the upstream, and the nginx peer) with libnginx-mod-http-echo for
the SSE upstream. vllm-router (PyPI `vllm-router`) and LiteLLM (PyPI `litellm[proxy]`) are found on
PATH or given by path; a peer that is missing is reported and left out. Figures go to
docs/benchmarks.md, section "Router HTTP front: side by side".
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import pathlib
import re
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from netkit import free_port  # noqa: E402

from fleetspec.routing import config  # noqa: E402
from fleetspec.spec import models  # noqa: E402

# Every peer gets the same request, with LiteLLM's key: LiteLLM refuses to start without one, and the
# others ignore it (fleetspec never forwards a client's credentials).
LUA = ('wrk.method = "POST"\nwrk.headers["Content-Type"] = "application/json"\n'
       'wrk.headers["Authorization"] = "Bearer " .. os.getenv("WRK_KEY")\nwrk.body = os.getenv("WRK_BODY")\n')
KEY = "sk-" + secrets.token_hex(32)
MESSAGES = [{"role": "user", "content": "why does my pytest fixture fail?"}]
BASE = "fleetspec/tiny-test-llama"
SERVED = "python--1.0.0"
SSE_CHUNKS = 50
CLK_TCK = os.sysconf("SC_CLK_TCK")
ECHO_MODULE = pathlib.Path("/usr/lib/nginx/modules/ngx_http_echo_module.so")


# -- the upstream ----------------------------------------------------------------------------------


def _nginx_common(work: pathlib.Path, name: str) -> str:
    return (f"daemon off; master_process off; worker_processes 1;\n"
            f"error_log {work}/{name}.error.log warn; pid {work}/{name}.pid;\n"
            "events { worker_connections 8192; }\n")


def _temp_paths(work: pathlib.Path) -> str:
    return " ".join(f"{kind}_temp_path {work}/{kind};" for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))


def upstream_conf(work: pathlib.Path, port: int, stream: bool) -> str:
    models_json = json.dumps({"object": "list", "data": [
        {"id": BASE, "object": "model", "root": BASE, "parent": None},
        {"id": SERVED, "object": "model", "root": "/adapters/python", "parent": BASE}]})
    completion = json.dumps({"id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": SERVED,
                             "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"},
                                          "finish_reason": "stop"}],
                             "usage": {"prompt_tokens": 8, "completion_tokens": 1, "total_tokens": 9}})
    if stream:
        chunk = json.dumps({"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": SERVED,
                            "choices": [{"index": 0, "delta": {"content": "x"}, "finish_reason": None}]})
        event = "echo " + _nginx_quote("data: " + chunk) + "; echo; echo_flush;"
        body = ("default_type text/event-stream; echo_read_request_body; " + event * SSE_CHUNKS
                + "echo " + _nginx_quote("data: [DONE]") + "; echo;")
        prelude = f"load_module {ECHO_MODULE};\n"
    else:
        body = "default_type application/json; return 200 " + _nginx_quote(completion) + ";"
        prelude = ""
    return (prelude + _nginx_common(work, f"upstream-{port}") +
            "http { access_log off; keepalive_requests 100000000; keepalive_timeout 75s; " + _temp_paths(work) +
            f" server {{ listen 127.0.0.1:{port} backlog=4096;"
            " location = /health { return 200 ''; }"
            " location = /v1/models { default_type application/json; return 200 " + _nginx_quote(models_json) + "; }"
            " location / { " + body + " } } }\n")


def _nginx_quote(text: str) -> str:
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


# -- the peers -------------------------------------------------------------------------------------


class Peer:
    def __init__(self, name: str, version: str, argv: list[str], port: int, ready_path: str,
                 env: dict[str, str] | None = None):
        self.name, self.version, self.argv, self.port, self.ready_path = name, version, argv, port, ready_path
        self.env = env or {}
        self.proc: subprocess.Popen | None = None

    def start(self, core: str, log: pathlib.Path) -> None:
        self.proc = subprocess.Popen(["taskset", "-c", str(core), *self.argv], stdout=log.open("wb"),
                                     stderr=subprocess.STDOUT, start_new_session=True,
                                     env={**os.environ, **self.env})

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def cpu_seconds(self) -> float:
        """User + system time of the process and its descendants, now."""
        return sum(_cpu(pid) for pid in _tree(self.proc.pid))


def _tree(root: int) -> list[int]:
    parents: dict[int, int] = {}
    for entry in pathlib.Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError):
                stat = (entry / "stat").read_text()
                parents[int(entry.name)] = int(stat[stat.rindex(")") + 2:].split()[1])
    found, frontier = [root], [root]
    while frontier:
        frontier = [pid for pid, parent in parents.items() if parent in frontier]
        found += frontier
    return found


def _cpu(pid: int) -> float:
    try:
        stat = pathlib.Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    fields = stat[stat.rindex(")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def fleetspec_peer(work: pathlib.Path, upstream: int, event_loop: str = "uvloop", processes: int = 1,
                   fast_path: bool = True) -> Peer:
    spec = models.FleetSpec.model_validate({
        "name": "bench", "base_model": {"id": BASE}, "gpus": [{"type": "sim", "count": 1}],
        "servers": [{"name": "main", "lora": {"max_loras": 2, "max_lora_rank": 8}}],
        "specialists": [{"name": "python", "version": "1.0.0", "path": "/adapters/python", "keywords": ["pytest"]}],
        "routing": {"fallback": "base", "rules": [{"specialist_signals": True}]},
    })
    path = work / f"fleetspec-{upstream}.json"
    path.write_text(config.dumps(config.document(spec, [config.Upstream("main", 0, f"http://127.0.0.1:{upstream}")])))
    port = free_port()
    version = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                             text=True).stdout.strip()
    name = "fleetspec router" if event_loop == "uvloop" else f"fleetspec router ({event_loop} loop)"
    if processes > 1:
        name += f", {processes} processes"
    if not fast_path:
        name += " (coroutine path only)"
    return Peer(name, f"this tree ({version}, Python {sys.version.split()[0]}, {event_loop} event loop)",
                [sys.executable, "-m", "fleetspec.router", "serve", "--config", str(path), "--port", str(port),
                 "--log-level", "warning", "--processes", str(processes)], port, "/health",
                env={"FLEETSPEC_ROUTER_EVENT_LOOP": event_loop, "FLEETSPEC_ROUTER_FAST_PATH": "on" if fast_path else "off"})


def vllm_router_peer(binary: str, upstream: int) -> Peer:
    port = free_port()
    return Peer("vllm-router", _pip_version(binary, "vllm-router"),
                [binary, "--host", "127.0.0.1", "--port", str(port), "--worker-urls", f"http://127.0.0.1:{upstream}",
                 "--policy", "round_robin", "--log-level", "warning"], port, "/health")


def nginx_peer(work: pathlib.Path, upstream: int) -> Peer:
    port = free_port()
    conf = work / f"nginx-proxy-{upstream}.conf"
    conf.write_text(_nginx_common(work, f"proxy-{port}") +
                    "http { access_log off; keepalive_requests 100000000; keepalive_timeout 75s; " + _temp_paths(work) +
                    f" upstream engine {{ server 127.0.0.1:{upstream}; keepalive 512; }}"
                    f" server {{ listen 127.0.0.1:{port} backlog=4096;"
                    " location / { proxy_pass http://engine; proxy_http_version 1.1;"
                    " proxy_set_header Connection ''; proxy_buffering off; } } }\n")
    version = subprocess.run(["nginx", "-v"], capture_output=True, text=True).stderr.strip().split("/")[-1]
    return Peer("nginx (floor)", version, ["nginx", "-c", str(conf), "-p", str(work)], port, "/health")


def litellm_peer(work: pathlib.Path, binary: str, upstream: int) -> Peer:
    port = free_port()
    conf = work / f"litellm-{upstream}.yaml"
    conf.write_text(json.dumps({"model_list": [{"model_name": "auto", "litellm_params": {
        "model": f"openai/{SERVED}", "api_base": f"http://127.0.0.1:{upstream}/v1", "api_key": "none"}}],
        "litellm_settings": {"drop_params": True, "telemetry": False}, "general_settings": {"master_key": KEY}}))
    # Offline: LiteLLM would otherwise fetch its model price list from the internet at start.
    return Peer("LiteLLM proxy", _pip_version(binary, "litellm"),
                [binary, "--config", str(conf), "--port", str(port), "--host", "127.0.0.1", "--num_workers", "1"],
                port, "/health/liveliness", env={"LITELLM_LOCAL_MODEL_COST_MAP": "True", "LITELLM_LOG": "ERROR"})


def _pip_version(binary: str, distribution: str) -> str:
    python = pathlib.Path(binary).resolve().parent / "python"
    out = subprocess.run([str(python), "-c", f"import importlib.metadata as m; print(m.version({distribution!r}))"],
                         capture_output=True, text=True)
    return out.stdout.strip() or "unknown"


def _installed(program: str) -> str | None:
    """A peer on PATH, else in its own virtual environment under .cache/ (`python3 -m venv
    .cache/vllm-router-venv && .cache/vllm-router-venv/bin/pip install vllm-router`; the same for
    `litellm[proxy]` in .cache/litellm-venv), so that no peer's dependencies touch fleetspec's."""
    local = ROOT / ".cache" / f"{program}-venv" / "bin" / program
    return shutil.which(program) or (str(local) if local.exists() else None)


def wait_ready(url: str, deadline_s: float = 90.0, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"exited with {proc.returncode} before {url} answered")
        try:
            with urllib.request.urlopen(url, timeout=1):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"{url} did not answer within {deadline_s} s")


# -- one measurement -------------------------------------------------------------------------------


def wrk(port: int, connections: int, seconds: int, script: pathlib.Path, core: str, body: dict) -> dict:
    out = subprocess.run(
        ["taskset", "-c", str(core), "wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--latency", "-s", str(script),
         f"http://127.0.0.1:{port}/v1/chat/completions"],
        env={**os.environ, "WRK_BODY": json.dumps(body), "WRK_KEY": KEY}, capture_output=True, text=True, check=True).stdout
    value, unit = re.search(r"50%\s+([\d.]+)(us|ms|s)\b", out).groups()
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    socket_errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    return {"rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),
            "requests": int(re.search(r"(\d+) requests in", out).group(1)),
            "p50_ms": float(value) * {"us": 1e-3, "ms": 1.0, "s": 1e3}[unit],
            "errors": (int(errors.group(1)) if errors else 0) + (sum(map(int, socket_errors.groups()))
                                                                 if socket_errors else 0)}


def measure(peer: Peer, connections: int, seconds: int, script: pathlib.Path, core: str, body: dict) -> dict:
    before = peer.cpu_seconds()
    result = wrk(peer.port, connections, seconds, script, core, body)
    result["cpu_us"] = (peer.cpu_seconds() - before) / max(result["requests"], 1) * 1e6
    return result


def run_workload(peers: list[Peer], levels: list[int], args, script: pathlib.Path, body: dict) -> dict:
    results: dict[tuple[str, int], list[dict]] = {}
    for level in levels:
        for peer in peers:  # warm-up, untimed
            wrk(peer.port, level, 1, script, args.load_core, body)
        for round_ in range(args.rounds):
            order = peers[round_ % len(peers):] + peers[:round_ % len(peers)]
            for peer in order:
                results.setdefault((peer.name, level), []).append(
                    measure(peer, level, args.seconds, script, args.load_core, body))
    return results


def table(title: str, peers: list[Peer], levels: list[int], results: dict) -> str:
    def med(name: str, level: int, key: str) -> float:
        return statistics.median(r[key] for r in results[(name, level)])

    lines = [f"| {title} | " + " | ".join(f"{c} conn" for c in levels) + " |",
             "|---|" + "---:|" * len(levels)]
    for peer in peers:
        lines.append(f"| {peer.name}, req/s | " + " | ".join(f"{med(peer.name, c, 'rps'):,.0f}" for c in levels) + " |")
    for peer in peers:
        lines.append(f"| {peer.name}, CPU µs/request | "
                     + " | ".join(f"{med(peer.name, c, 'cpu_us'):.0f}" for c in levels) + " |")
    for peer in peers:
        lines.append(f"| {peer.name}, p50 ms | " + " | ".join(f"{med(peer.name, c, 'p50_ms'):.2f}" for c in levels) + " |")
    names = [p.name for p in peers]
    if "fleetspec router" in names and "vllm-router" in names:
        lines.append("| fleetspec / vllm-router, req/s | " + " | ".join(
            f"{med('fleetspec router', c, 'rps') / med('vllm-router', c, 'rps'):.2f}×" for c in levels) + " |")
        lines.append("| fleetspec / vllm-router, CPU per request | " + " | ".join(
            f"{med('fleetspec router', c, 'cpu_us') / med('vllm-router', c, 'cpu_us'):.2f}×" for c in levels) + " |")
    failed = {f"{name} at {c}": sum(r["errors"] for r in rs) for (name, c), rs in results.items() if any(r["errors"] for r in rs)}
    if failed:
        lines.append("")
        lines.append("Non-2xx answers or socket errors: " + ", ".join(f"{k}: {v}" for k, v in failed.items()))
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--concurrency", default="1,8,32,128")
    parser.add_argument("--stream-concurrency", default="32,128")
    parser.add_argument("--seconds", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--peers", default="fleetspec,vllm-router,nginx,litellm")
    parser.add_argument("--vllm-router", default=_installed("vllm-router"))
    parser.add_argument("--litellm", default=_installed("litellm"))
    # taskset's CPU lists: "1", or "1-3" for a router of several processes (or vllm-router's threads)
    parser.add_argument("--router-core", default="1")
    parser.add_argument("--load-core", default="0")
    args = parser.parse_args()
    for tool in ("wrk", "nginx", "taskset"):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} is not installed (Debian: apt-get install wrk nginx-light libnginx-mod-http-echo)")
    wanted = args.peers.split(",")
    work = pathlib.Path(tempfile.mkdtemp(prefix="bench-router-wrk-"))
    script = work / "post.lua"
    script.write_text(LUA)
    started: list[Peer] = []
    workloads = [("JSON chat completion", False, [int(c) for c in args.concurrency.split(",") if c]),
                 (f"SSE stream, {SSE_CHUNKS} chunks", True, [int(c) for c in args.stream_concurrency.split(",") if c])]
    try:
        for title, stream, levels in workloads:
            if not levels:
                continue
            upstream_port = free_port()
            conf = work / f"upstream-{upstream_port}.conf"
            conf.write_text(upstream_conf(work, upstream_port, stream))
            upstream = Peer("upstream", "", ["nginx", "-c", str(conf), "-p", str(work)], upstream_port, "/health")
            upstream.start(args.load_core, work / f"upstream-{upstream_port}.log")
            started.append(upstream)
            wait_ready(f"http://127.0.0.1:{upstream_port}/health", 10, upstream.proc)
            peers = []
            for name in wanted:
                if name == "fleetspec":
                    peer = fleetspec_peer(work, upstream_port)
                elif name.startswith("fleetspec-processes-"):
                    peer = fleetspec_peer(work, upstream_port, processes=int(name.rsplit("-", 1)[1]))
                elif name == "fleetspec-asyncio":
                    peer = fleetspec_peer(work, upstream_port, "asyncio")
                elif name == "fleetspec-coroutines":
                    peer = fleetspec_peer(work, upstream_port, fast_path=False)
                elif name == "vllm-router" and args.vllm_router:
                    peer = vllm_router_peer(args.vllm_router, upstream_port)
                elif name == "nginx":
                    peer = nginx_peer(work, upstream_port)
                elif name == "litellm" and args.litellm:
                    peer = litellm_peer(work, args.litellm, upstream_port)
                else:
                    print(f"peer {name}: not installed, left out", file=sys.stderr)
                    continue
                peer.start(args.router_core, work / f"{name}-{upstream_port}.log")
                started.append(peer)
                try:
                    wait_ready(f"http://127.0.0.1:{peer.port}{peer.ready_path}", proc=peer.proc)
                except RuntimeError as exc:
                    print(f"peer {name}: {exc}; left out (log: {work}/{name}-{upstream_port}.log)", file=sys.stderr)
                    continue
                peers.append(peer)
            time.sleep(2)  # let every peer finish its first health checks before anything is timed
            body = {"model": "auto", "messages": MESSAGES, "max_tokens": 4, **({"stream": True} if stream else {})}
            results = run_workload(peers, levels, args, script, body)
            print(f"\n{title}: router pinned to core {args.router_core}, wrk and upstream to core {args.load_core}, "
                  f"{args.rounds} rounds of {args.seconds} s, medians\n")
            print(table(title, peers, levels, results))
            print("\nVersions: " + ", ".join(f"{p.name} {p.version}" for p in peers))
            for peer in peers:
                peer.stop()
            upstream.stop()
    finally:
        for peer in started:
            peer.stop()


if __name__ == "__main__":
    main()
