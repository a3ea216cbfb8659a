"""Where the router's shared runtime state lives: a Redis address, parsed from
`runtime.router.redis_url` (pure; the RESP client is `fleetspec.router.resp`).

URLs: `redis://[[user]:password@]host[:port][/db]` and `rediss://` for TLS, as redis-cli and the
`redis` package read them.
"""

from __future__ import annotations

import dataclasses
import urllib.parse

DEFAULT_PORT = 6379


@dataclasses.dataclass(frozen=True)
class Address:
    host: str
    port: int = DEFAULT_PORT
    db: int = 0
    username: str | None = None
    password: str | None = dataclasses.field(default=None, repr=False)
    tls: bool = False

    def display(self) -> str:
        """Where it points, without credentials: safe for logs, /health and error messages."""
        scheme = "rediss" if self.tls else "redis"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{scheme}://{host}:{self.port}/{self.db}"


def parse_url(url: str) -> Address:
    """Raises ValueError with a sentence that says what is wrong."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("redis", "rediss"):
        raise ValueError("a Redis URL starts with redis:// (or rediss:// for TLS)")
    if not parts.hostname:
        raise ValueError("the Redis URL names no host")
    try:
        port = parts.port or DEFAULT_PORT
    except ValueError:
        raise ValueError("the port of the Redis URL is not a number from 1 to 65535") from None
    path = parts.path.strip("/")
    if path and not path.isdigit():
        raise ValueError(f"the Redis URL's path must be a database number (like /0), not /{path}")
    unquote = urllib.parse.unquote
    return Address(parts.hostname, port, int(path or 0), unquote(parts.username) if parts.username else None,
                   unquote(parts.password) if parts.password is not None else None, parts.scheme == "rediss")
