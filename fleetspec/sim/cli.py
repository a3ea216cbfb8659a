"""`vllm serve MODEL [flags]` for the sim: parse, start, load static adapters, serve until SIGTERM.

Exit statuses follow vLLM: 2 for an argparse error (after a usage line), 1 for an engine-config
error or a static `--lora-modules` entry that fails to load, 0 after SIGTERM/SIGINT.

Environment (sim only):
  FLEETSPEC_SIM_STARTUP_SECONDS  how long "loading the model" takes; /health answers 503 meanwhile
  FLEETSPEC_SIM_TOKEN_SECONDS    time per generated token, to make in-flight requests observable
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
from collections.abc import Mapping

from fleetspec.sim import args as sim_args

log = logging.getLogger("fleetspec.sim")

DEFAULT_STARTUP_SECONDS = 0.2
USAGE = "usage: vllm serve [model_tag] [options]"


def main(argv: list[str] | None = None, env: Mapping[str, str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    env = os.environ if env is None else env
    _setup_logging()
    if argv[:1] in (["--version"], ["-v"]):
        from fleetspec.sim import server

        print(server.VLLM_VERSION)
        return 0
    try:
        serve_args = sim_args.parse(argv, env)
        startup, token = _seconds(env, "FLEETSPEC_SIM_STARTUP_SECONDS", DEFAULT_STARTUP_SECONDS), \
            _seconds(env, "FLEETSPEC_SIM_TOKEN_SECONDS", 0.0)
        from fleetspec.sim import model_facts

        facts = model_facts.load(serve_args, env)
    except sim_args.UsageError as exc:
        sys.stderr.write(f"{USAGE}\n{sim_args.PROG}: error: {exc}\n")
        return exc.exit_code
    except sim_args.ConfigError as exc:
        sys.stderr.write(f"ValueError: {exc}\n")
        return exc.exit_code
    return _serve(serve_args, facts, startup, token, env)


def _seconds(env: Mapping[str, str], name: str, default: float) -> float:
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


def _serve(serve_args: sim_args.ServeArgs, facts, startup: float, token: float, env: Mapping[str, str]) -> int:
    from fleetspec.sim import engine, model_facts, server

    log.info("vLLM API server version %s (fleetspec sim)", server.VLLM_VERSION)
    if serve_args.ignored:
        log.warning("The sim ignores flags it does not model: %s", " ".join(serve_args.ignored))
    if serve_args.allow_runtime_lora_updating:
        log.warning("LoRA dynamic loading & unloading is enabled in the API server. "
                    "This should ONLY be used for local development!")
    the_engine = engine.Engine(serve_args, model_facts.adapter_check(serve_args, facts))
    app = server.App(serve_args, the_engine, facts.max_model_len, token_seconds=token)
    host = serve_args.host or "0.0.0.0"
    try:
        httpd = server.SimHTTPServer((host, serve_args.port), app)
    except OSError as exc:
        sys.stderr.write(f"OSError: {exc}\n")
        return 1
    stop = _Stop()
    threading.Thread(target=httpd.serve_forever, args=(0.1,), name="http", daemon=True).start()
    try:
        return _run(serve_args, the_engine, app, stop, startup, host)
    finally:
        httpd.shutdown()
        httpd.server_close()


def _run(serve_args, the_engine, app, stop: _Stop, startup: float, host: str) -> int:
    if stop.wait(startup):
        return 0
    for module in serve_args.lora_modules:
        reply = the_engine.load_adapter(module.name, module.path, base_model_name=module.base_model_name)
        if reply.status != 200:
            # vLLM's init_static_loras raises ValueError(message): the server never comes up.
            sys.stderr.write(f"ValueError: {reply.body['error']['message']}\n")
            return 1
    app.ready.set()
    log.info("Starting vLLM API server on http://%s:%d", host, serve_args.port)
    log.info("Application startup complete.")
    while not stop.wait(1.0):
        pass
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

    SIGNALS = {signal.SIGTERM, signal.SIGINT}

    def __init__(self):
        self.enabled = threading.current_thread() is threading.main_thread()
        if self.enabled:
            signal.pthread_sigmask(signal.SIG_BLOCK, self.SIGNALS)

    def wait(self, timeout: float) -> bool:
        """True when a stop signal arrived within `timeout` seconds."""
        if not self.enabled:
            threading.Event().wait(timeout)
            return False
        return signal.sigtimedwait(self.SIGNALS, max(0.0, timeout)) is not None


def _setup_logging() -> None:
    """vLLM's log line format, on stderr."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(levelname)s %(asctime)s [%(filename)s:%(lineno)d] %(message)s",
                                           datefmt="%m-%d %H:%M:%S"))
    log.handlers[:] = [handler]
    log.setLevel(logging.INFO)
    log.propagate = False
