"""Engine pods from DNS: a headless Service's name → one A record per ready pod → engine base URLs.

On Kubernetes the compiled `vllm-<server>-pods` Service is headless (clusterIP: None), so cluster
DNS answers its name with the address of every ready pod, and the router can reach, and read the
`/v1/models` of, each pod rather than one Service address that hides them.

The resolver is a setting (`host:port`), so the router can be pointed at a particular DNS server
(tests use dnsmasq on a loopback address and an unprivileged port); without one the system resolver
(`getaddrinfo`, i.e. /etc/resolv.conf: the cluster's DNS in a pod) is used. The client below speaks
RFC 1035 over UDP with an EDNS(0) buffer of 4096 bytes, and retries over TCP when the answer is
truncated, so a server with hundreds of pods is still seen whole. Standard library only.

A failed lookup keeps the last answer (`Discovery`): a DNS blip must not empty the router's
upstreams; an answer with no records (every pod gone or not ready) is an answer, and empties it.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import secrets
import socket
import struct
import threading
import time

TYPE_A, CLASS_IN, TYPE_OPT = 1, 1, 41
EDNS_PAYLOAD = 4096
NXDOMAIN = 3


class DiscoveryError(OSError):
    """The name could not be resolved; the message says why, for the router's log."""


@dataclasses.dataclass(frozen=True)
class Resolver:
    host: str
    port: int = 53
    timeout_s: float = 2.0


def parse_resolver(text: str) -> Resolver:
    """`127.0.0.1:5353`, `10.96.0.10` (port 53) or `[::1]:5353`."""
    value = text.strip()
    host, port = value, "53"
    if value.startswith("["):
        host, _, rest = value[1:].partition("]")
        port = rest.lstrip(":") or "53"
    elif value.count(":") == 1:
        host, port = value.split(":")
    try:
        ipaddress.ip_address(host)
        number = int(port)
    except ValueError:
        raise ValueError(
            f"the resolver {text!r} must be an IP address with an optional port, e.g. 127.0.0.1:5353"
        ) from None
    if not 0 < number < 65536:
        raise ValueError(f"the resolver port in {text!r} must be between 1 and 65535")
    return Resolver(host, number)


def resolve_a(name: str, resolver: Resolver | None = None) -> list[str]:
    """Every IPv4 address of `name`, sorted; [] when the name exists with none (or does not exist:
    a headless Service with no ready pod has no records)."""
    if resolver is None:
        return _system(name)
    query_id = secrets.randbits(16)
    query = _query(query_id, name)
    family = socket.AF_INET6 if ":" in resolver.host else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as udp:
        udp.settimeout(resolver.timeout_s)
        try:
            udp.sendto(query, (resolver.host, resolver.port))
            reply = _receive_matching(udp, query_id, resolver)
        except OSError as exc:
            raise DiscoveryError(
                f"the DNS server {resolver.host}:{resolver.port} did not answer for {name} "
                f"({exc.__class__.__name__}: {exc})"
            ) from exc
    if _truncated(reply):
        reply = _over_tcp(query, query_id, resolver, name)
    return _addresses(reply, name)


def engine_urls(service: str, port: int, resolver: Resolver | None = None, scheme: str = "http") -> list[str]:
    """The engine base URLs behind a headless Service, e.g. vllm-main-pods.ns.svc.cluster.local."""
    return [f"{scheme}://{address}:{port}" for address in resolve_a(service, resolver)]


class Discovery:
    """The current engine URLs of one headless Service; `current()` re-resolves at most every `ttl_s`."""

    def __init__(
        self,
        service: str,
        port: int,
        resolver: Resolver | None = None,
        ttl_s: float = 5.0,
        clock=time.monotonic,
    ):
        self.service, self.port, self.resolver, self.ttl_s = service, port, resolver, ttl_s
        self._clock = clock
        self._lock = threading.Lock()
        self._urls: list[str] | None = None
        self._at = float("-inf")
        self.last_error: str | None = None

    def current(self) -> list[str]:
        with self._lock:
            if self._clock() - self._at < self.ttl_s and self._urls is not None:
                return list(self._urls)
        return self.refresh()

    def refresh(self) -> list[str]:
        try:
            urls = engine_urls(self.service, self.port, self.resolver)
        except DiscoveryError as exc:
            with self._lock:
                self.last_error = str(exc)
                self._at = self._clock()  # do not hammer a DNS server that is down
                if self._urls is None:
                    raise
                return list(self._urls)  # keep the last answer through a blip
        with self._lock:
            self._urls, self._at, self.last_error = urls, self._clock(), None
            return list(urls)


# -- the wire format (RFC 1035 §4, RFC 6891 for the OPT record) -------------------------------------


def _query(query_id: int, name: str) -> bytes:
    header = struct.pack("!HHHHHH", query_id, 0x0100, 1, 0, 0, 1)  # RD set; one question, one OPT record
    question = _encode_name(name) + struct.pack("!HH", TYPE_A, CLASS_IN)
    opt = b"\x00" + struct.pack("!HHIH", TYPE_OPT, EDNS_PAYLOAD, 0, 0)
    return header + question + opt


def _encode_name(name: str) -> bytes:
    out = b""
    for label in name.rstrip(".").split("."):
        raw = label.encode("idna") if label else b""
        if not 0 < len(raw) < 64:
            raise DiscoveryError(
                f"{name!r} is not a DNS name (each dot-separated part needs 1 to 63 characters)"
            )
        out += bytes([len(raw)]) + raw
    return out + b"\x00"


def _receive_matching(udp: socket.socket, query_id: int, resolver: Resolver) -> bytes:
    deadline = time.monotonic() + resolver.timeout_s
    while True:
        udp.settimeout(max(0.01, deadline - time.monotonic()))
        reply, sender = udp.recvfrom(65535)
        # Anything not from the server, or not our id, is ignored (a late or spoofed answer).
        if sender[1] == resolver.port and len(reply) >= 12 and struct.unpack("!H", reply[:2])[0] == query_id:
            return reply


def _truncated(reply: bytes) -> bool:
    return bool(struct.unpack("!H", reply[2:4])[0] & 0x0200)


def _over_tcp(query: bytes, query_id: int, resolver: Resolver, name: str) -> bytes:
    try:
        with socket.create_connection((resolver.host, resolver.port), timeout=resolver.timeout_s) as tcp:
            tcp.sendall(struct.pack("!H", len(query)) + query)
            size = struct.unpack("!H", _read_exactly(tcp, 2))[0]
            reply = _read_exactly(tcp, size)
    except OSError as exc:
        raise DiscoveryError(
            f"the DNS server {resolver.host}:{resolver.port} truncated its answer for {name} and "
            f"did not answer over TCP ({exc.__class__.__name__}: {exc})"
        ) from exc
    if struct.unpack("!H", reply[:2])[0] != query_id:
        raise DiscoveryError(
            f"the DNS server {resolver.host}:{resolver.port} answered another query over TCP"
        )
    return reply


def _read_exactly(connection: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = connection.recv(size - len(data))
        if not chunk:
            raise ConnectionError("the DNS server closed the connection mid-answer")
        data += chunk
    return data


def _addresses(reply: bytes, name: str) -> list[str]:
    try:
        _, flags, questions, answers, _, _ = struct.unpack("!HHHHHH", reply[:12])
        code = flags & 0x000F
        if code == NXDOMAIN:
            return []
        if code != 0:
            raise DiscoveryError(f"the DNS server refused to resolve {name} (response code {code})")
        offset = 12
        for _ in range(questions):
            offset = _skip_name(reply, offset) + 4
        found = set()
        for _ in range(answers):
            offset = _skip_name(reply, offset)
            kind, klass, _, length = struct.unpack("!HHIH", reply[offset : offset + 10])
            offset += 10
            if kind == TYPE_A and klass == CLASS_IN and length == 4:
                found.add(socket.inet_ntoa(reply[offset : offset + 4]))
            offset += length
    except (struct.error, IndexError) as exc:
        raise DiscoveryError(f"the DNS answer for {name} is malformed ({exc})") from exc
    return sorted(found, key=ipaddress.IPv4Address)


def _skip_name(message: bytes, offset: int) -> int:
    while True:
        length = message[offset]
        if length == 0:
            return offset + 1
        if length & 0xC0 == 0xC0:  # a compression pointer ends the name
            return offset + 2
        offset += 1 + length


def _system(name: str) -> list[str]:
    try:
        infos = socket.getaddrinfo(name, None, socket.AF_INET, socket.SOCK_STREAM)
    except socket.gaierror as exc:
        if exc.errno in (socket.EAI_NONAME, getattr(socket, "EAI_NODATA", socket.EAI_NONAME)):
            return []
        raise DiscoveryError(f"the system resolver could not resolve {name} ({exc})") from exc
    return sorted({info[4][0] for info in infos}, key=ipaddress.IPv4Address)
