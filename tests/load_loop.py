"""The load loop: clients sending requests through the router while the fleet changes.

Issue 12's yardstick for "no request fails while fleetspec changes the fleet": at least four
concurrent clients, a quarter of them streaming, running from before a change starts until two
seconds after `apply` returns. Every answer that is not 2xx and every connection error counts, with
what the client saw, so a failing test says which request failed and how.
"""

from __future__ import annotations

import dataclasses
import http.client
import json
import threading
import time
import urllib.parse

AFTER_APPLY_S = 2.0
# After a failure a client waits this long before its next request, as real clients back off: without
# it a refused connection loops in microseconds, starves the engine of CPU and counts millions.
ERROR_PAUSE_S = 0.1


@dataclasses.dataclass(frozen=True)
class Failure:
    client: int
    model: str
    streaming: bool
    what: str  # "HTTP 404: ...", "ConnectionResetError: ..."
    at: float  # seconds since the loop started


@dataclasses.dataclass
class Tally:
    ok: int = 0
    failures: list[Failure] = dataclasses.field(default_factory=list)
    models_answered: dict[str, int] = dataclasses.field(default_factory=dict)  # `model` in the answers
    latencies: list[float] = dataclasses.field(default_factory=list)  # seconds, each successful request

    def summary(self) -> str:
        shown = "\n".join(f"  client {f.client} ({'stream' if f.streaming else 'json'}, {f.model}) at "
                          f"{f.at:.1f} s: {f.what}" for f in self.failures[:20])
        return f"{self.ok} ok, {len(self.failures)} failed" + (f":\n{shown}" if shown else "")


class LoadLoop:
    """`with LoadLoop(url, models) as loop: ...apply...; loop.stop_after_apply()` then read loop.tally."""

    def __init__(self, router_url: str, models: list[str], clients: int = 4, headers: dict | None = None,
                 max_tokens: int = 4, timeout_s: float = 60.0, pace_s: float = 0.0):
        """`pace_s`: each client starts a request at most that often (0: back to back). Back to back,
        four clients keep a CPU engine and its API server busy on both cores of a small machine, and
        an engine starting beside them takes minutes instead of seconds; a paced loop still sends
        every few hundred milliseconds per client, which is what the yardstick needs."""
        if clients < 4:
            raise ValueError("the load loop runs at least 4 clients")
        self._pace_s = pace_s
        self._url = urllib.parse.urlsplit(router_url)
        self._models, self._clients, self._headers = models, clients, dict(headers or {})
        self._max_tokens, self._timeout_s = max_tokens, timeout_s
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self._started = 0.0
        self.tally = Tally()

    def __enter__(self) -> LoadLoop:
        self._started = time.monotonic()
        for index in range(self._clients):
            streaming = index % 4 == 3  # a quarter of the clients stream
            thread = threading.Thread(target=self._client, args=(index, streaming), daemon=True,
                                      name=f"load-loop-{index}")
            thread.start()
            self._threads.append(thread)
        self.wait_for_answers(self._clients, 120)
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(self._timeout_s + 5)

    def wait_for_answers(self, count: int, timeout_s: float) -> None:
        """Block until `count` more requests succeeded (so the loop is really running)."""
        with self._lock:
            target = self.tally.ok + count
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            with self._lock:
                if self.tally.ok >= target or self.tally.failures:
                    return
            time.sleep(0.02)
        raise AssertionError(f"the load loop got no answers within {timeout_s} s: {self.tally.summary()}")

    def stop_after_apply(self) -> Tally:
        """Keep going for AFTER_APPLY_S more seconds, then stop every client and return the tally."""
        time.sleep(AFTER_APPLY_S)  # part of the yardstick: the window after apply returns, not a wait for state
        self.__exit__()
        return self.tally

    # -- one client ------------------------------------------------------------------------------

    def _client(self, index: int, streaming: bool) -> None:
        turn = 0
        while not self._stop.is_set():
            model = self._models[(index + turn) % len(self._models)]
            turn += 1
            sent = time.monotonic()
            try:
                status, answered, detail = self._request(model, streaming)
            except (OSError, ValueError, http.client.HTTPException) as exc:
                self._record(index, model, streaming, None, f"{type(exc).__name__}: {exc}")
                self._stop.wait(ERROR_PAUSE_S)
                continue
            ok = 200 <= status < 300
            self._record(index, model, streaming, answered if ok else None,
                         None if ok else f"HTTP {status}: {detail[:200]}", time.monotonic() - sent)
            if not ok:
                self._stop.wait(ERROR_PAUSE_S)
            elif self._pace_s:
                self._stop.wait(max(0.0, sent + self._pace_s - time.monotonic()))

    def _request(self, model: str, streaming: bool) -> tuple[int, str | None, str]:
        body = {"model": model, "messages": [{"role": "user", "content": f"hello {model}"}],
                "max_tokens": self._max_tokens, "stream": streaming}
        connection = http.client.HTTPConnection(self._url.hostname, self._url.port, timeout=self._timeout_s)
        try:
            connection.request("POST", "/v1/chat/completions", json.dumps(body),
                               {"Content-Type": "application/json", **self._headers})
            response = connection.getresponse()
            raw = response.read()
        finally:
            connection.close()
        text = raw.decode("utf-8", "replace")
        if response.status != 200:
            return response.status, None, text
        return 200, _answered_model(text, streaming), text


    def _record(self, index: int, model: str, streaming: bool, answered: str | None, failure: str | None,
                seconds: float = 0.0) -> None:
        with self._lock:
            if failure is not None:
                at = time.monotonic() - self._started
                self.tally.failures.append(Failure(index, model, streaming, failure, at))
                return
            self.tally.ok += 1
            self.tally.latencies.append(seconds)  # the whole exchange: connect, send, last byte read
            if answered:
                self.tally.models_answered[answered] = self.tally.models_answered.get(answered, 0) + 1


def _answered_model(text: str, streaming: bool) -> str | None:
    """The `model` the engine put in its answer: which served adapter really answered."""
    if not streaming:
        return json.loads(text).get("model")
    events = [line[6:] for line in text.splitlines() if line.startswith("data: ") and line[6:] != "[DONE]"]
    if not text.rstrip().endswith("data: [DONE]"):
        raise http.client.IncompleteRead(text.encode()[-200:])  # a stream cut short is a failure
    return json.loads(events[0]).get("model") if events else None
