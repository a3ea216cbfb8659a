"""Every bound the router's HTTP front enforces, in one place: how long a client may take to send a
request or sit idle, how much it may send, how many connections and how many body bytes the
router holds at once, and how long an engine may stay silent.

The defaults suit a router in front of vLLM: engines may take minutes to finish a long answer that
is not streamed (`upstream_first_byte_s`), but once tokens flow a minute without one means the
engine is stuck (`upstream_idle_s`). Each field is also a `serve` option (`--header-timeout-s 5`).
"""

from __future__ import annotations

import argparse
import dataclasses

MIB = 1024 * 1024


def _limit(default, help_text: str):
    return dataclasses.field(default=default, metadata={"help": help_text})


@dataclasses.dataclass(frozen=True)
class Limits:
    header_timeout_s: float = _limit(
        10.0, "seconds a client has to send a whole request head, from its first byte"
    )
    idle_timeout_s: float = _limit(15.0, "seconds a keep-alive connection may wait for its next request")
    body_timeout_s: float = _limit(60.0, "seconds a client has to send a whole request body")
    write_timeout_s: float = _limit(60.0, "seconds a client may take to accept the next piece of an answer")
    max_head_bytes: int = _limit(64 * 1024, "bytes of request line and headers")
    max_body_bytes: int = _limit(64 * MIB, "bytes of one request body, chunked or not")
    max_inflight_body_bytes: int = _limit(
        256 * MIB,
        "request-body bytes held by all requests at once; beyond it new requests get 503 with Retry-After",
    )
    max_connections: int = _limit(
        1024, "client connections at once; beyond it new ones get 503 and are closed"
    )
    max_json_depth: int = _limit(64, "nesting depth of a JSON request body")
    upstream_connect_s: float = _limit(2.0, "seconds to open a connection to an engine")
    upstream_first_byte_s: float = _limit(600.0, "seconds an engine may take to start answering")
    upstream_idle_s: float = _limit(60.0, "seconds an engine may stay silent in the middle of an answer")
    retry_after_s: int = _limit(1, "the Retry-After a client gets with a 503 for a full router")

    def __post_init__(self) -> None:
        for field in dataclasses.fields(self):
            if getattr(self, field.name) <= 0:
                raise ValueError(
                    f"router limit {field.name} must be positive, not {getattr(self, field.name)}"
                )

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        for field in dataclasses.fields(cls):
            kind = int if isinstance(field.default, int) else float
            parser.add_argument(
                "--" + field.name.replace("_", "-"),
                type=kind,
                default=field.default,
                help=f"{field.metadata['help']} (default {field.default})",
            )

    @classmethod
    def from_arguments(cls, args: argparse.Namespace) -> Limits:
        return cls(**{field.name: getattr(args, field.name) for field in dataclasses.fields(cls)})

    def arguments(self) -> list[str]:
        """These limits as `serve` options (what a coordinator passes to its serving processes)."""
        return [part for field in dataclasses.fields(self)
                for part in ("--" + field.name.replace("_", "-"), repr(getattr(self, field.name)))]

    def per_process(self, processes: int) -> Limits:
        """The share of one of `processes` serving processes: the totals the operator set (connections,
        in-flight body bytes) stay totals across them; every per-request bound stays as it is."""
        # A share below one whole body would refuse, as "router full", a request one process takes
        # alone; so each process may hold at least one largest body, and the total is then that many.
        body_share = max(-(-self.max_inflight_body_bytes // processes), self.max_body_bytes)
        return dataclasses.replace(self, max_connections=-(-self.max_connections // processes),
                                   max_inflight_body_bytes=min(body_share, self.max_inflight_body_bytes))


class BodyBudget:
    """Request-body bytes held across all connections. A request reserves its declared length
    before reading it (a chunked one, each chunk as it is announced) and gives it all back when it
    is answered, so that many large uploads at once cannot take the router's memory."""

    def __init__(self, capacity: int):
        self.capacity = capacity
        self.held = 0

    def reserve(self, size: int) -> bool:
        if self.held + size > self.capacity:
            return False
        self.held += size
        return True

    def release(self, size: int) -> None:
        self.held -= size
