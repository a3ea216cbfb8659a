"""A blocking client for one vLLM engine, over `engine_api.contract`. Standard library only, so the
no-op fast path can use it without importing anything heavy; no proxies: engines are reached directly.

Loading and unloading are idempotent: an adapter already served under the same name and path is
"already loaded", and unloading a name the engine does not know is "already unloaded". Which case
applies is decided from `/v1/models` and the shape of the reply, never from the wording of a message.
"""

from __future__ import annotations

import dataclasses
import http.client
import time
import urllib.parse
from collections.abc import Callable
from typing import Protocol

from fleetspec.engine_api import contract

DEFAULT_TIMEOUT = 10.0
# vLLM reads the adapter from disk and copies it into its slots before it answers; on a busy CPU
# engine that takes seconds, and the request queue in front of it can add more.
LOAD_TIMEOUT = 120.0


class Clock(Protocol):
    def monotonic(self) -> float: ...

    def sleep(self, seconds: float) -> None: ...


class SystemClock:
    def monotonic(self) -> float:
        return time.monotonic()

    def sleep(self, seconds: float) -> None:
        time.sleep(seconds)


SYSTEM_CLOCK = SystemClock()


@dataclasses.dataclass(frozen=True)
class EngineClient:
    """One engine, addressed by its base URL (`http://host:port`), with the key it wants, if any.

    The key never appears in `repr` (it would end up in logs and tracebacks)."""

    base_url: str
    api_key: str | None = dataclasses.field(default=None, repr=False)

    # -- health ---------------------------------------------------------------------------------

    def healthy(self, timeout: float = 2.0) -> bool:
        """True when `/health` answers 200; False while loading (refused or 503), or anything else."""
        return self.health_problem(timeout) is None

    def health_problem(self, timeout: float = 2.0) -> str | None:
        """None when `/health` answers 200, else what happened instead, as a sentence for `status`
        (refused, timed out, 503 while loading, another status)."""
        try:
            status, _ = self._request("GET", contract.HEALTH, timeout=timeout)
        except contract.EngineUnavailable as exc:
            if exc.status is None:
                return str(exc)  # refused or timed out: the sentence says which
            status = exc.status  # 503: vLLM's answer while it loads, and once its engine core died
        return None if status == 200 else f"{self.base_url}{contract.HEALTH} answered HTTP {status}."

    def wait_healthy(self, deadline: float, clock: Clock = SYSTEM_CLOCK, interval: float = 0.25,
                     check: Callable[[], None] | None = None) -> None:
        """Poll `/health` until it answers 200 or `deadline` (on `clock.monotonic()`) passes.

        `check` runs between polls and may raise to give up early, e.g. when the process exited.
        """
        while True:
            remaining = deadline - clock.monotonic()
            if self.healthy(timeout=max(0.1, min(2.0, remaining))):
                return
            if check is not None:
                check()
            remaining = deadline - clock.monotonic()
            if remaining <= 0:
                raise contract.EngineUnavailable(
                    f"The engine at {self.base_url} did not become healthy in time; it may still be loading the "
                    "model (check its log, or allow a longer start-up).", self.base_url)
            clock.sleep(min(interval, remaining))

    # -- models and adapters ------------------------------------------------------------------

    def models(self, timeout: float = DEFAULT_TIMEOUT) -> contract.ModelsView:
        status, text = self._request("GET", contract.MODELS, timeout=timeout)
        return contract.models_view(self.base_url, status, text)

    def load_adapter(self, name: str, path: str, timeout: float = LOAD_TIMEOUT) -> bool:
        """Serve adapter `name` from `path`. True if loaded now, False if it was already served so.

        Raises AdapterNameTaken when `name` is served from another path (load new weights under a new
        name: vLLM keys its prefix cache on name and path), RuntimeLoraDisabled, or EngineError.
        """
        view = self.models()
        if view.serves(name, path):
            return False
        if view.serves(name):
            raise contract.name_taken(self.base_url, name, path, view.adapters[name])
        status, text = self._request("POST", contract.LOAD, contract.load_body(name, path), timeout)
        if status == 200:
            return True
        if status == 400 and self.models().serves(name, path):
            return False  # another client loaded it between our look and our load
        raise contract.refusal(self.base_url, contract.LOAD, status, text, f"load adapter {name} from {path}")

    def unload_adapter(self, name: str, timeout: float = DEFAULT_TIMEOUT) -> bool:
        """Stop serving adapter `name`. True if unloaded now, False if the engine did not serve it."""
        status, text = self._request("POST", contract.UNLOAD, contract.unload_body(name), timeout)
        return contract.unload_outcome(self.base_url, name, status, text)

    # -- facts ----------------------------------------------------------------------------------

    def version(self, timeout: float = DEFAULT_TIMEOUT) -> str:
        status, text = self._request("GET", contract.VERSION, timeout=timeout)
        return contract.version_of(self.base_url, status, text)

    def lora_requests_info(self, timeout: float = DEFAULT_TIMEOUT) -> contract.LoraRequestsInfo | None:
        status, text = self._request("GET", contract.METRICS, timeout=timeout)
        if status != 200:
            raise contract.refusal(self.base_url, contract.METRICS, status, text, "read metrics")
        return contract.lora_requests_info(text)

    # -- transport ------------------------------------------------------------------------------

    def _request(self, method: str, path: str, body: bytes | None = None,
                 timeout: float = DEFAULT_TIMEOUT) -> tuple[int, str]:
        """(status, body text) for any HTTP answer; EngineUnavailable when there is none."""
        parts = urllib.parse.urlsplit(self.base_url)
        connection = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port or 80, timeout=timeout)
        headers = dict(contract.auth_headers(self.api_key))
        if body is not None:
            headers.update([contract.JSON])
        try:
            connection.request(method, path, body=body, headers=headers)
            response = connection.getresponse()
            status, data = response.status, response.read()
        except (http.client.HTTPException, OSError) as exc:  # OSError covers refused and timeouts
            raise contract.unreachable(self.base_url + path, exc) from exc
        finally:
            connection.close()
        text = data.decode("utf-8", errors="replace")
        if status in contract.RETRYABLE_STATUSES:
            raise contract.unavailable(self.base_url, status, text)
        return status, text
