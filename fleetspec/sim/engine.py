"""The sim's model of vLLM's LoRA bookkeeping (0.32 and 0.33 agree here), HTTP details left to `sim.server`.

Three layers, as in vLLM:
- the API server's registry of served names (`OpenAIServingModels.lora_requests`): what
  `/v1/models` lists; load adds a name, unload only forgets it (vllm-facts §2.3.2);
- the worker's CPU cache (`max_cpu_loras`, LRU) of adapter ids, re-read from disk after eviction;
- the GPU slots (`max_loras`, LRU) an adapter must occupy while one of its requests runs; requests
  for more distinct adapters than there are slots wait, as the V1 scheduler makes them wait.

Every method returns a `Reply` (status and body) so the server only has to write it out.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import re
import threading
import time
from collections.abc import Callable
from http import HTTPStatus

from fleetspec.sim import args as sim_args

log = logging.getLogger("fleetspec.sim")

NOT_ENABLED = "LoRA is not enabled. Use --enable-lora to enable LoRA."


@dataclasses.dataclass(frozen=True)
class Reply:
    status: int
    body: dict | str  # str: vLLM's plain-text success bodies


def error(status: HTTPStatus, err_type: str, message: str, param: str | None = None) -> Reply:
    """vLLM's ErrorResponse JSON (entrypoints/serve/engine/protocol.py), its message sanitised as vLLM does."""
    return Reply(int(status), {"error": {"message": sanitize_message(message), "type": err_type, "param": param,
                                         "code": int(status)}})


def sanitize_message(message: str) -> str:
    """vllm/entrypoints/serve/exception_handling/utils.py:7-15, identical in 0.32 and 0.33: every
    ErrorResponse message loses memory addresses, traceback lines and (some) file paths. Paths under
    /home, /usr, /opt, /var, /tmp, /root, /lib, /mnt, /srv become `<path>`; elsewhere only the part
    matching `(/word)+/word.ext` does (`/work/a/.cache/x/y/1.0.0` → `/work/a/.cache<path>.0`)."""
    message = re.sub(r" at 0x[0-9a-fA-F]+>", ">", message)
    message = re.sub(r'\n?\s*File "[^"]+", line \d+, in \S+(\n\s+.*)?', "", message)
    message = re.sub(r"/(?:home|usr|opt|var|tmp|root|lib|mnt|srv)(?:/[\w.\-]+)+", "<path>", message)
    message = re.sub(r"(?:/[\w\-]+)+/[\w\-]+\.\w+", "<path>", message)
    return message.strip()


def not_found_model(name: str, aliases: tuple[str, ...] | list[str] = ()) -> Reply:
    """vllm/entrypoints/serve/engine/serving.py:75-83: only base-model names are listed as aliases."""
    return error(HTTPStatus.NOT_FOUND, "NotFoundError",
                 f"The model `{name}` does not exist. Valid aliases: {', '.join(aliases)}.", "model")


@dataclasses.dataclass(frozen=True)
class LoraRequest:
    name: str
    int_id: int
    path: str
    base_model_name: str | None = None


class Rejected(Exception):
    """`add_lora` failed: the status, ErrorResponse type and message vLLM answers with."""

    def __init__(self, status: int, err_type: str, message: str):
        super().__init__(message)
        self.reply = error(HTTPStatus(status), err_type, message)


# (lora_name, lora_path) → None when vLLM would load the adapter, else (status, type, message).
AdapterCheck = Callable[[str, str], tuple[int, str, str] | None]


DEFAULT_LOAD_SECONDS = 0.03  # real 0.32 on CPU: 24-27 ms for a first tiny adapter, 5 ms later


class Engine:
    def __init__(self, args: sim_args.ServeArgs, check_adapter: AdapterCheck, load_seconds: float = 0.0):
        self.args = args
        self._check_adapter = check_adapter
        self.load_seconds = load_seconds  # how long reading an adapter takes (FLEETSPEC_SIM_LOAD_SECONDS)
        self._loading: set[str] = set()  # names with a load in flight (vLLM locks per name)
        self._lock = threading.Condition()
        self.registry: dict[str, LoraRequest] = {}
        self._last_id = 0
        self.cpu_cache: collections.OrderedDict[int, LoraRequest] = collections.OrderedDict()
        self.gpu_slots: collections.OrderedDict[int, LoraRequest] = collections.OrderedDict()
        self.running: collections.Counter[str] = collections.Counter()  # lora name → running requests
        self.waiting: collections.Counter[str] = collections.Counter()
        self.stats = Stats()
        # Adapters with any waiting or running request, in the order they got one (vLLM's
        # LoRARequestStates.requests, v1/metrics/stats.py: an entry goes when its last request ends).
        self.active: dict[str, int] = {}
        # vllm:lora_requests_info keeps one series per (running, waiting) label set ever seen, each
        # holding the time it was last current (prometheus labels are never removed).
        self.lora_info_seen: dict[tuple[str, str], float] = {}

    # -- registry: /v1/load_lora_adapter, /v1/unload_lora_adapter, /v1/models ---------------------

    def load_adapter(self, name: str, path: str, load_inplace: bool = False,
                     base_model_name: str | None = None) -> Reply:
        with self._lock:
            self._lock.wait_for(lambda: name not in self._loading)
            problem = self._check_load_request(name, path, load_inplace)
            if problem:
                return problem
            self._loading.add(name)
        try:
            if self.load_seconds > 0:
                time.sleep(self.load_seconds)  # the engine reads the files; other requests carry on
            return self._register(name, path, load_inplace, base_model_name)
        finally:
            with self._lock:
                self._loading.discard(name)
                self._lock.notify_all()

    def _register(self, name: str, path: str, load_inplace: bool, base_model_name: str | None) -> Reply:
        with self._lock:
            existing = self.registry.get(name)
            if existing is None:
                self._last_id += 1
            request = LoraRequest(
                name=name, int_id=existing.int_id if existing else self._last_id, path=path,
                base_model_name=base_model_name if base_model_name in self.args.served_model_names else None,
            )
            try:
                self._add_lora(request, reload=load_inplace)
            except Rejected as exc:
                return exc.reply
            self.registry[name] = request
        if existing is not None and existing.path == path:
            log.warning("Reloaded LoRA adapter '%s' in place from the same path %s; prefix-cache entries "
                        "are not invalidated; load changed weights from a new path", name, path)
        log.info("Loaded new LoRA adapter: name '%s', path '%s'", name, path)
        return Reply(200, f"Success: LoRA adapter '{name}' added successfully.")

    def _check_load_request(self, name: str, path: str, load_inplace: bool) -> Reply | None:
        if not name or not path:
            return error(HTTPStatus.BAD_REQUEST, "InvalidUserInput", "Both 'lora_name' and 'lora_path' must be provided.")
        if name in self.args.served_model_names:
            return error(HTTPStatus.BAD_REQUEST, "InvalidUserInput",
                         f"The lora adapter '{name}' conflicts with a served base model.")
        if not load_inplace and name in self.registry:
            return error(HTTPStatus.BAD_REQUEST, "InvalidUserInput",
                         f"The lora adapter '{name}' has already been loaded. If you want to load the "
                         "adapter in place, set 'load_inplace' to True.")
        return None

    def unload_adapter(self, name: str) -> Reply:
        with self._lock:
            if not name:
                return error(HTTPStatus.BAD_REQUEST, "InvalidUserInput",
                             "'lora_name' needs to be provided to unload a LoRA adapter.")
            if name not in self.registry:
                return error(HTTPStatus.NOT_FOUND, "NotFoundError", f"The lora adapter '{name}' cannot be found.")
            # vLLM 0.33 only forgets the name: its CPU cache entry and GPU slot stay until evicted.
            del self.registry[name]
        log.info("Removed LoRA adapter: name '%s'", name)
        return Reply(200, f"Success: LoRA adapter '{name}' removed successfully.")

    def model_cards(self, max_model_len: int, created: int) -> list[dict]:
        base = [
            _card(name, self.args.model, None, max_model_len, created) for name in self.args.served_model_names
        ]
        with self._lock:
            loras = [
                _card(r.name, r.path, r.base_model_name or self.args.served_model_name, None, created)
                for r in self.registry.values()
            ]
        return base + loras

    def resolve(self, model: str | None) -> LoraRequest | None | Reply:
        """The adapter a request names; None for a base model name; a 404 Reply for anything else."""
        if not model or model in self.args.served_model_names:
            return None
        with self._lock:
            request = self.registry.get(model)
        return request if request is not None else not_found_model(model, self.args.served_model_names)

    # -- the engine: CPU cache and GPU slots -------------------------------------------------------

    def _add_lora(self, request: LoraRequest, reload: bool = False) -> None:
        """Worker `add_adapter`: read and check the files, cache on CPU, activate into a GPU slot."""
        if not self.args.enable_lora:
            raise Rejected(500, "InternalServerError", f"Call to add_lora method failed: {NOT_ENABLED}")
        if reload or request.int_id not in self.cpu_cache:
            rejection = self._check_adapter(request.name, request.path)
            if rejection is not None:
                raise Rejected(*rejection)
            self.cpu_cache.pop(request.int_id, None)
            self.gpu_slots.pop(request.int_id, None)
            if len(self.cpu_cache) >= self.args.max_cpu_loras:
                evicted = self.cpu_cache.popitem(last=False)[1]
                self.gpu_slots.pop(evicted.int_id, None)
                log.debug("Evicted LoRA %s (id %d) from the CPU cache", evicted.name, evicted.int_id)
            self.cpu_cache[request.int_id] = request
        self._activate(request)

    def _activate(self, request: LoraRequest) -> None:
        self.cpu_cache.move_to_end(request.int_id)
        if request.int_id in self.gpu_slots:
            self.gpu_slots.move_to_end(request.int_id)
            return
        if len(self.gpu_slots) >= self.args.max_loras:
            self.gpu_slots.popitem(last=False)
        self.gpu_slots[request.int_id] = request

    # -- requests ----------------------------------------------------------------------------------

    def begin_request(self, lora: LoraRequest | None) -> Reply | None:
        """Schedule a request: an adapter needs a GPU slot, so it may wait for one to free up."""
        if lora is None:
            return None
        with self._lock:
            self.waiting[lora.name] += 1
            self.active[lora.name] = self.active.get(lora.name, 0) + 1
            try:
                self._lock.wait_for(lambda: self._may_run(lora))
            finally:
                self._drop(self.waiting, lora.name)
            try:
                self._add_lora(lora)
            except Rejected as exc:
                # vLLM re-reads an evicted adapter inside the engine step; a vanished path fails there.
                self._drop(self.active, lora.name)
                return error(HTTPStatus.INTERNAL_SERVER_ERROR, "InternalServerError",
                             exc.reply.body["error"]["message"])
            self.running[lora.name] += 1
            self.stats.lora_requests[lora.name] += 1
            self._note_lora_info()
        return None

    def end_request(self, lora: LoraRequest | None, finish_reason: str, prompt_tokens: int,
                    generation_tokens: int) -> None:
        with self._lock:
            if lora is not None:
                self._note_lora_info()
                self._drop(self.running, lora.name)
                self._drop(self.active, lora.name)
                self._lock.notify_all()
            self.stats.finished[finish_reason] += 1
            self.stats.prompt_tokens += prompt_tokens
            self.stats.generation_tokens += generation_tokens

    def _may_run(self, lora: LoraRequest) -> bool:
        return lora.name in self.running or len(self.running) < self.args.max_loras

    @staticmethod
    def _drop(counter: dict[str, int], name: str) -> None:
        counter[name] -= 1
        if counter[name] <= 0:
            del counter[name]

    def _note_lora_info(self) -> None:
        # Both labels list every adapter with a waiting *or* running request, in arrival order: vLLM
        # fills running_lora_adapters and waiting_lora_adapters with the same keys, counts aside
        # (LoRARequestStates.update_scheduler_stats; loggers.py joins `.keys()`), in 0.32 and 0.33.
        names = ",".join(self.active)
        self.lora_info_seen[(names, names)] = time.time()

    def snapshot(self) -> Snapshot:
        with self._lock:
            self._note_lora_info()
            return Snapshot(
                lora_info=dict(self.lora_info_seen),
                running=sorted(self.running), waiting=sorted(self.waiting),
                running_requests=sum(self.running.values()), waiting_requests=sum(self.waiting.values()),
                cpu=list(self.cpu_cache.values()), gpu=list(self.gpu_slots.values()),
                stats=dataclasses.replace(self.stats, finished=collections.Counter(self.stats.finished),
                                          lora_requests=collections.Counter(self.stats.lora_requests)),
            )


@dataclasses.dataclass
class Stats:
    finished: collections.Counter[str] = dataclasses.field(default_factory=collections.Counter)
    lora_requests: collections.Counter[str] = dataclasses.field(default_factory=collections.Counter)
    prompt_tokens: int = 0
    generation_tokens: int = 0


@dataclasses.dataclass(frozen=True)
class Snapshot:
    lora_info: dict[tuple[str, str], float]  # (running, waiting) names → when that label set was last current
    running: list[str]
    waiting: list[str]
    running_requests: int
    waiting_requests: int
    cpu: list[LoraRequest]
    gpu: list[LoraRequest]
    stats: Stats


def _card(model_id: str, root: str, parent: str | None, max_model_len: int | None, created: int) -> dict:
    """vLLM's ModelCard, field for field."""
    return {
        "id": model_id, "object": "model", "created": created, "owned_by": "vllm", "root": root,
        "parent": parent, "max_model_len": max_model_len,
        "permission": [{
            "id": f"modelperm-{model_id}", "object": "model_permission", "created": created,
            "allow_create_engine": False, "allow_sampling": True, "allow_logprobs": True,
            "allow_search_indices": False, "allow_view": True, "allow_fine_tuning": False,
            "organization": "*", "group": None, "is_blocking": False,
        }],
    }
