"""The sim's HTTP front: vLLM's routes, status codes and bodies on the stdlib HTTP server.

Routing, auth and the engine's health live here; LoRA semantics live in `sim.engine` and response
bodies in `sim.generate`. HTTP/1.1 with keep-alive; an idle kept-alive connection is closed after
VLLM_HTTP_TIMEOUT_KEEP_ALIVE seconds (5), as uvicorn does; streams use chunked transfer encoding.
The port is bound at start but only listens once the model is "loaded" (cli.py), so a client sees
connection refused during the load, as with vLLM. Measured behaviour: docs/vllm-behaviour.md.
"""

from __future__ import annotations

import dataclasses
import hmac
import json
import logging
import socket
import sys
import threading
import time
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from fleetspec.sim import args as sim_args
from fleetspec.sim import engine, generate, metrics

log = logging.getLogger("fleetspec.sim")

VLLM_VERSION = sim_args.DEFAULT_VERSION  # the default; each server answers /version with the one it follows
NOT_FOUND = engine.Reply(404, {"detail": "Not Found"})  # FastAPI's reply for an unregistered route
METHOD_NOT_ALLOWED = engine.Reply(405, {"detail": "Method Not Allowed"})
UNAUTHORIZED = engine.Reply(401, {"error": "Unauthorized"})  # vLLM's AuthenticationMiddleware
DEFAULT_KEEP_ALIVE_SECONDS = 5.0  # vllm/envs.py VLLM_HTTP_TIMEOUT_KEEP_ALIVE
# What a request that meets a dead engine gets (EngineDeadError): 0.33 maps it to CLIENT_MESSAGE
# (exception_handling/error_response.py:68-72); 0.32 passes the exception text through.
ENGINE_DEAD_MESSAGES = {
    "0.32.0": "EngineCore encountered an issue. See stack trace (above) for the root cause.",
    "0.33.0": "The server had an error while processing your request.",
}


@dataclasses.dataclass
class App:
    args: sim_args.ServeArgs
    engine: engine.Engine
    max_model_len: int
    token_seconds: float = 0.0  # per generated token, so streams and in-flight requests are observable
    keep_alive_seconds: float = DEFAULT_KEEP_ALIVE_SECONDS  # idle time before a kept-alive connection closes
    ready: threading.Event = dataclasses.field(default_factory=threading.Event)
    dead: threading.Event = dataclasses.field(default_factory=threading.Event)  # the engine died (SIGUSR1)
    created: int = dataclasses.field(default_factory=lambda: int(time.time()))

    @property
    def version(self) -> str:
        return self.args.vllm_version


class SimHTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128  # the stdlib's 5 resets clients that connect together (a router under load)

    def __init__(self, address: tuple[str, int], app: App, listen: bool = True):
        """`listen=False` binds the port (so a taken port fails at once) without accepting
        connections; `server_activate()` starts listening, as vLLM does once its engine is up."""
        self.app = app
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        super().__init__(address, Handler, bind_and_activate=False)
        try:
            self.server_bind()
            if listen:
                self.server_activate()
        except BaseException:
            self.server_close()
            raise


# (method, path) → handler method name. Load/unload exist only with runtime updating enabled.
ROUTES = {
    ("GET", "/health"): "health",
    ("GET", "/ping"): "health",
    ("POST", "/ping"): "health",
    ("GET", "/version"): "version",
    ("GET", "/metrics"): "metrics",
    ("GET", "/v1/models"): "models",
    ("POST", "/v1/completions"): "completions",
    ("POST", "/v1/chat/completions"): "chat",
    ("POST", "/v1/load_lora_adapter"): "load",
    ("POST", "/v1/unload_lora_adapter"): "unload",
}
RUNTIME_LORA_ROUTES = {"/v1/load_lora_adapter", "/v1/unload_lora_adapter"}


class Handler(BaseHTTPRequestHandler):
    # Headers and body go out in separate writes; without TCP_NODELAY, Nagle plus the client's
    # delayed ACK add ~40 ms to every answer, which vLLM's uvicorn does not.
    disable_nagle_algorithm = True
    protocol_version = "HTTP/1.1"
    server: SimHTTPServer

    _served = 0  # requests answered on this connection

    def handle_one_request(self) -> None:
        # uvicorn's timeout_keep_alive: after an answer, an idle connection is closed. Only the wait
        # for the next request line is bounded; a request being read or answered is not.
        if self._served and self.app.keep_alive_seconds > 0:
            self.connection.settimeout(self.app.keep_alive_seconds)
        super().handle_one_request()
        self._served += 1

    def parse_request(self) -> bool:
        self.connection.settimeout(None)
        return super().parse_request()

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_POST(self) -> None:
        self._dispatch("POST")

    # -- plumbing -----------------------------------------------------------------------------------

    @property
    def app(self) -> App:
        return self.server.app

    def _dispatch(self, method: str) -> None:
        path = self.path.split("?", 1)[0]
        length = self.headers.get("Content-Length") or "0"
        if not length.isdigit():
            self.close_connection = True
            return self._send(engine.error(HTTPStatus.BAD_REQUEST, "BadRequestError", "Invalid Content-Length header."))
        self._body = self.rfile.read(int(length))
        if self.app.args.api_keys and path.startswith(("/v1", "/v2", "/inference", "/cohere")) and not self._authorized():
            return self._send(UNAUTHORIZED)
        registered = self.app.args.allow_runtime_lora_updating or path not in RUNTIME_LORA_ROUTES
        name = ROUTES.get((method, path)) if registered else None
        if name is None:
            known = registered and any(p == path for _, p in ROUTES)
            return self._send(METHOD_NOT_ALLOWED if known else NOT_FOUND)
        if self.app.dead.is_set() and name in ("health", "completions", "chat"):
            # /health is 503 on EngineDeadError; generation fails with a 500 (docs/vllm-behaviour.md).
            return self._send(engine.Reply(503, "") if name == "health" else engine.error(
                HTTPStatus.INTERNAL_SERVER_ERROR, "InternalServerError", ENGINE_DEAD_MESSAGES[self.app.version]))
        try:
            getattr(self, f"route_{name}")()
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True  # the client went away mid-reply; nothing left to tell it
        except Exception as exc:  # noqa: BLE001 - one bad request must not take the server down
            log.exception("Error handling %s %s", method, path)
            self._send(engine.error(HTTPStatus.INTERNAL_SERVER_ERROR, "InternalServerError", str(exc)))

    def _authorized(self) -> bool:
        # vllm/entrypoints/serve/middleware/authenticate.py:30-45: `scheme, _, param = value.partition(" ")`
        # with a case-insensitive scheme; the token must then match exactly.
        scheme, _, token = (self.headers.get("Authorization") or "").partition(" ")
        if scheme.lower() != "bearer":
            return False
        matched = False
        for key in self.app.args.api_keys:
            matched |= hmac.compare_digest(token.encode(), key.encode())
        return matched

    def _json_body(self, model: str) -> dict | engine.Reply:
        """The JSON object body vLLM's pydantic models need; a 400 otherwise, as its handler gives."""
        if (self.headers.get("Content-Type") or "").split(";")[0].strip() != "application/json":
            return _validation_error(None, "Unsupported Media Type: Only 'application/json' is allowed")
        if not self._body.strip() or self._body.strip() == b"null":
            # FastAPI: no body at all is a missing required body.
            return _validation_error("body", {"type": "missing", "loc": "body", "msg": "Field required",
                                              "input": "None"})
        try:
            body = json.loads(self._body)
        except UnicodeDecodeError:
            # Not UTF-8 (nor -16/-32): FastAPI's HTTPException, which vLLM passes through unchanged.
            return engine.Reply(400, {"detail": "There was an error parsing the body"})
        except ValueError as exc:
            # FastAPI puts the decoder's position in the location: ("body", JSONDecodeError.pos).
            where = f"body.{getattr(exc, 'pos', 0)}"
            return _validation_error(where, {"type": "json_invalid", "loc": where, "msg": "JSON decode error",
                                             "input": "<dict of 0 items>",
                                             "ctx": {"error": getattr(exc, "msg", str(exc))}})
        if not isinstance(body, dict):
            return _validation_error("body", {"type": "model_attributes_type", "loc": "body",
                                              "msg": "Input should be a valid dictionary or object to extract fields "
                                                     "from", "input": _summary(body)})
        return body

    def _send(self, reply: engine.Reply) -> None:
        if isinstance(reply.body, str):
            # vLLM answers its plain-string successes (and /health) without a Content-Type header.
            data, content_type = reply.body.encode(), None
        else:
            data, content_type = json.dumps(reply.body).encode(), "application/json"
        self.send_response(reply.status)
        if data and content_type:
            self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if data:
            self.wfile.write(data)

    def log_message(self, format: str, *args) -> None:  # noqa: A002 - BaseHTTPRequestHandler's signature
        pass

    def log_request(self, code="-", size="-") -> None:
        if self.app.args.access_log:
            phrase = HTTPStatus(code).phrase if isinstance(code, int) else ""
            host, port = self.client_address[:2]
            sys.stderr.write(f'INFO:     {host}:{port} - "{self.requestline}" {int(code)} {phrase}\n')

    # -- routes -------------------------------------------------------------------------------------

    def route_health(self) -> None:
        self._send(engine.Reply(200, ""))

    def route_version(self) -> None:
        self._send(engine.Reply(200, {"version": self.app.version}))

    def route_metrics(self) -> None:
        text = metrics.render(self.app.engine.snapshot(), self.app.args.served_model_name,
                              self.app.args.max_loras, self.app.args.enable_lora)
        data = text.encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain; version=1.0.0; charset=utf-8")  # prometheus_client 0.26
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def route_models(self) -> None:
        cards = self.app.engine.model_cards(self.app.max_model_len, self.app.created)
        self._send(engine.Reply(200, {"object": "list", "data": cards}))

    def route_load(self) -> None:
        body = self._json_body("LoadLoRAAdapterRequest")
        if isinstance(body, engine.Reply):
            return self._send(body)
        invalid = _string_fields(body, ("lora_name", "lora_path"))
        if invalid:
            return self._send(invalid)
        self._send(self.app.engine.load_adapter(
            str(body["lora_name"]), str(body["lora_path"]), load_inplace=bool(body.get("load_inplace"))))

    def route_unload(self) -> None:
        body = self._json_body("UnloadLoRAAdapterRequest")
        if isinstance(body, engine.Reply):
            return self._send(body)
        invalid = _string_fields(body, ("lora_name",))
        if invalid:
            return self._send(invalid)
        self._send(self.app.engine.unload_adapter(str(body["lora_name"])))

    def route_completions(self) -> None:
        self._generate(chat=False)

    def route_chat(self) -> None:
        self._generate(chat=True)

    def _generate(self, chat: bool) -> None:
        body = self._json_body("ChatCompletionRequest" if chat else "CompletionRequest")
        ask = body if isinstance(body, engine.Reply) else generate.parse(body, chat, self.app.max_model_len)
        if isinstance(ask, engine.Reply):
            return self._send(ask)
        lora = self.app.engine.resolve(ask.model)
        if isinstance(lora, engine.Reply):
            return self._send(lora)
        refused = self.app.engine.begin_request(lora)
        if refused is not None:
            return self._send(refused)
        gen = generate.generate(ask, self.app.args.served_model_name, self.app.args.model, lora)
        ended = False

        def finish() -> None:
            # The engine finishes a request (metrics, lora_requests_info) before its last bytes reach
            # the client, as in vLLM; so a client that got its answer never sees it still running.
            nonlocal ended
            if not ended:
                ended = True
                self.app.engine.end_request(lora, gen.finish_reason, gen.prompt_tokens, len(gen.tokens) * ask.n)

        try:
            if ask.stream:
                self._stream(ask, gen, finish)
            else:
                self._sleep_tokens(len(gen.tokens))
                finish()
                self._send(engine.Reply(200, generate.response(ask, gen)))
        finally:
            finish()  # the client went away mid-stream

    def _sleep_tokens(self, count: int) -> None:
        if self.app.token_seconds > 0:
            time.sleep(self.app.token_seconds * count)

    def _stream(self, ask: generate.Ask, gen: generate.Generation, finish=lambda: None) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream; charset=utf-8")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        for event in generate.stream_events(ask, gen):
            self._sleep_tokens(1)
            self._chunk(f"data: {json.dumps(event)}\n\n".encode())
        finish()
        self._chunk(b"data: [DONE]\n\n")
        self._chunk(b"")

    def _chunk(self, data: bytes) -> None:
        self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
        self.wfile.flush()


def _validation_error(param: str | None, *errors_: dict | str) -> engine.Reply:
    """What vLLM's RequestValidationError handler makes of a pydantic failure: type "Bad Request",
    "N validation error(s):" then one line per error, `param` = the first error's location
    (vllm/entrypoints/serve/exception_handling/handlers/validation.py:149-195)."""
    count = len(errors_)
    lines = "\n".join(f"  {e}" for e in errors_)
    message = f"{count} validation error{'s' if count != 1 else ''}:\n{lines}"
    return engine.error(HTTPStatus.BAD_REQUEST, "Bad Request", message, param)


def _string_fields(body: dict, fields: tuple[str, ...]) -> engine.Reply | None:
    """pydantic's verdict on required `str` fields: missing, or not a string (lax mode coerces
    nothing to str), one error per field in field order; None when all are fine."""
    problems = []
    for f in fields:
        if f not in body:
            problems.append({"type": "missing", "loc": f"body.{f}", "msg": "Field required", "input": _summary(body)})
        elif not isinstance(body[f], str):
            problems.append({"type": "string_type", "loc": f"body.{f}", "msg": "Input should be a valid string",
                             "input": _summary(body[f])})
    return _validation_error(problems[0]["loc"], *problems) if problems else None


def _summary(value) -> str:
    """How vLLM's handler abbreviates a validation error's input."""
    if isinstance(value, dict):
        return f"<dict of {len(value)} items>"
    if isinstance(value, list):
        return f"<list of {len(value)} items>"
    return repr(value)
