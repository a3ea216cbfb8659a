"""`vllm serve MODEL [flags]` for the sim: parse, start, load static adapters, serve until SIGTERM.

Exit statuses follow vLLM: 2 for an argparse error (after a usage line), 1 for an engine-config
error or a static `--lora-modules` entry that fails to load, 0 after SIGTERM/SIGINT.

Environment (sim only):
  FLEETSPEC_SIM_VLLM_VERSION     the vLLM release to imitate (0.32 or 0.33; default 0.33.0): its flag
                                 set, /version and the messages where the two differ
  FLEETSPEC_SIM_STARTUP_SECONDS  how long "loading the model" takes; the port is bound but refuses
                                 connections meanwhile, as vLLM's does
  FLEETSPEC_SIM_LOAD_SECONDS     how long one adapter load takes (default 0.03)
  FLEETSPEC_SIM_TOKEN_SECONDS    time per generated token, to make in-flight requests observable
Read as vLLM reads them: VLLM_API_KEY, VLLM_ALLOW_RUNTIME_LORA_UPDATING, VLLM_HTTP_TIMEOUT_KEEP_ALIVE
(idle keep-alive, 5 s), VLLM_KEEP_ALIVE_ON_ENGINE_DEATH.

SIGUSR1 kills the sim's "engine" while the process stays up, as a crashed EngineCore does: /health
answers 503, generation 500, and the process exits (status 0) 5 s later unless
VLLM_KEEP_ALIVE_ON_ENGINE_DEATH=1 (vLLM's watchdog, entrypoints/launchers/launcher.py:313-337).
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Mapping

from fleetspec.sim import args as sim_args

log = logging.getLogger("fleetspec.sim")

DEFAULT_STARTUP_SECONDS = 0.2
WATCHDOG_SECONDS = 5.0  # vLLM's VLLM_WATCHDOG_TIME_S: how soon a dead engine takes the API server down
USAGE = "usage: vllm serve [model_tag] [options]"


def main(argv: list[str] | None = None, env: Mapping[str, str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    env = os.environ if env is None else env
    _setup_logging()
    if argv[:1] in (["--version"], ["-v"]):
        try:
            print(sim_args.vllm_version(env))
        except sim_args.ConfigError as exc:
            sys.stderr.write(f"ValueError: {exc}\n")
            return exc.exit_code
        return 0
    try:
        serve_args = sim_args.parse(argv, env)
        startup, token = _seconds(env, "FLEETSPEC_SIM_STARTUP_SECONDS", DEFAULT_STARTUP_SECONDS), \
            _seconds(env, "FLEETSPEC_SIM_TOKEN_SECONDS", 0.0)
        timing = {"load": _seconds(env, "FLEETSPEC_SIM_LOAD_SECONDS", None),
                  "keep_alive": _seconds(env, "VLLM_HTTP_TIMEOUT_KEEP_ALIVE", None)}
        from fleetspec.sim import model_facts

        facts = model_facts.load(serve_args, env)
    except sim_args.UsageError as exc:
        sys.stderr.write(f"{USAGE}\n{sim_args.PROG}: error: {exc}\n")
        return exc.exit_code
    except sim_args.ConfigError as exc:
        sys.stderr.write(f"ValueError: {exc}\n")
        return exc.exit_code
    return _serve(serve_args, facts, startup, token, env, timing)


def _seconds(env: Mapping[str, str], name: str, default: float | None) -> float | None:
    raw = env.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise sim_args.ConfigError(f"{name} must be a number of seconds, got {raw!r}.") from None
    if value < 0:
        raise sim_args.ConfigError(f"{name} must not be negative, got {raw!r}.")
    return value


def _serve(serve_args: sim_args.ServeArgs, facts, startup: float, token: float, env: Mapping[str, str],
           timing: dict[str, float | None] | None = None) -> int:
    from fleetspec.sim import engine, model_facts, server

    timing = timing or {}
    load = timing.get("load")
    keep_alive = timing.get("keep_alive")
    log.info("vLLM API server version %s (fleetspec sim)", serve_args.vllm_version)
    if serve_args.ignored:
        log.warning("The sim ignores flags it does not model: %s", " ".join(serve_args.ignored))
    if serve_args.allow_runtime_lora_updating:
        log.warning("LoRA dynamic loading & unloading is enabled in the API server. "
                    "This should ONLY be used for local development!")
    the_engine = engine.Engine(serve_args, model_facts.adapter_check(serve_args, facts),
                               load_seconds=engine.DEFAULT_LOAD_SECONDS if load is None else load)
    app = server.App(serve_args, the_engine, facts.max_model_len, token_seconds=token,
                     keep_alive_seconds=server.DEFAULT_KEEP_ALIVE_SECONDS if keep_alive is None else keep_alive)
    host = serve_args.host or "0.0.0.0"
    try:
        # Bound now (a taken port fails at once, as in vLLM's setup_server), listening only once loaded.
        httpd = server.SimHTTPServer((host, serve_args.port), app, listen=False)
    except OSError as exc:
        sys.stderr.write(f"OSError: {exc}\n")
        return 1
    stop = _Stop()
    keep_alive_on_death = env.get("VLLM_KEEP_ALIVE_ON_ENGINE_DEATH", "0").strip() not in ("", "0")
    serving = False
    try:
        if stop.wait(startup):
            return 0
        for module in serve_args.lora_modules:  # vLLM loads these before uvicorn listens
            reply = the_engine.load_adapter(module.name, module.path, base_model_name=module.base_model_name)
            if reply.status != 200:
                # vLLM's init_static_loras raises ValueError(message): the server never comes up.
                sys.stderr.write(f"ValueError: {reply.body['error']['message']}\n")
                return 1
        httpd.server_activate()
        app.ready.set()
        threading.Thread(target=httpd.serve_forever, args=(0.1,), name="http", daemon=True).start()
        serving = True
        return _run(serve_args, app, stop, host, keep_alive_on_death)
    finally:
        if serving:
            httpd.shutdown()
        httpd.server_close()


def _run(serve_args, app, stop: _Stop, host: str, keep_alive_on_death: bool = False) -> int:
    log.info("Starting vLLM API server on http://%s:%d", host, serve_args.port)
    log.info("Application startup complete.")
    deadline = None
    while True:
        got = stop.wait(1.0 if deadline is None else max(0.0, deadline - time.monotonic()))
        if got == _Stop.DEATH:
            if not app.dead.is_set():
                app.dead.set()
                log.error("EngineCore encountered an issue. See stack trace (above) for the root cause.")
                if not keep_alive_on_death:
                    deadline = time.monotonic() + WATCHDOG_SECONDS
            continue
        if got:
            break
        if deadline is not None and time.monotonic() >= deadline:
            break
    log.info("Shutting down FastAPI HTTP server.")
    return 0


class _Stop:
    """Waits for SIGTERM/SIGINT without a Python signal handler.

    A handler that sets a threading.Event can deadlock: it runs on the main thread, possibly while
    that thread holds the Event's own lock inside `wait()`. Blocking the signals and collecting them
    with sigtimedwait takes no lock at all. The mask is set before any thread starts, so the HTTP
    thread inherits it and the signals are always delivered here. Off the main thread (tests that
    run the sim in-process) signals are left alone and the engine runs until the process ends.
    """

    SIGNALS = {signal.SIGTERM, signal.SIGINT, signal.SIGUSR1}
    DEATH = signal.SIGUSR1  # not a stop: the engine dies, the API server lives on for a while

    def __init__(self):
        self.enabled = threading.current_thread() is threading.main_thread()
        if self.enabled:
            signal.pthread_sigmask(signal.SIG_BLOCK, self.SIGNALS)

    def wait(self, timeout: float) -> int | None:
        """The signal that arrived within `timeout` seconds (SIGUSR1 included), else None.
        During start-up a SIGUSR1 counts as a stop: there is no engine to kill yet."""
        if not self.enabled:
            threading.Event().wait(timeout)
            return None
        info = signal.sigtimedwait(self.SIGNALS, max(0.0, timeout))
        return None if info is None else info.si_signo


def _setup_logging() -> None:
    """vLLM's log line format, on stderr."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(levelname)s %(asctime)s [%(filename)s:%(lineno)d] %(message)s",
                                           datefmt="%m-%d %H:%M:%S"))
    log.handlers[:] = [handler]
    log.setLevel(logging.INFO)
    log.propagate = False
