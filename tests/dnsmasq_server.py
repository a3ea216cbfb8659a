"""A real DNS server for pod-discovery tests: dnsmasq on 127.0.0.1 and an unprivileged port, serving
A records from a hosts file (several per name, as cluster DNS does for a headless Service), reloaded
on SIGHUP. Never /etc/resolv.conf, never port 53: the router is given this resolver by a setting."""

from __future__ import annotations

import contextlib
import getpass
import os
import pathlib
import shutil
import signal
import subprocess
import time

from netkit import free_port
from require import unavailable

from fleetspec.router import discovery

DEADLINE_S = 20.0


def require_dnsmasq() -> None:
    """Skip, saying why, where dnsmasq is not installed (fail under FLEETSPEC_REQUIRE_ORACLES=1)."""
    if shutil.which("dnsmasq") is None and not os.path.exists("/usr/sbin/dnsmasq"):
        unavailable("ORACLES", "dnsmasq is not installed (apt-get install dnsmasq-base)")


class Dnsmasq:
    def __init__(self, directory: pathlib.Path, name: str):
        self.name = name
        self.hosts = directory / "pods.hosts"
        self.port = free_port()
        self.log = directory / "dnsmasq.log"
        self.process: subprocess.Popen | None = None

    def serve(self, addresses: list[str]) -> None:
        self.hosts.write_text("".join(f"{a} {self.name}\n" for a in addresses))
        if self.process is None:
            binary = shutil.which("dnsmasq") or "/usr/sbin/dnsmasq"
            with open(self.log, "wb") as log:
                self.process = subprocess.Popen(
                    [
                        binary,
                        "--keep-in-foreground",
                        "--conf-file=/dev/null",
                        "--no-resolv",
                        "--no-hosts",
                        "--local=/cluster.local/",  # authoritative, as cluster DNS is: unknown names are NXDOMAIN
                        f"--addn-hosts={self.hosts}",
                        "--listen-address=127.0.0.1",
                        "--bind-interfaces",
                        f"--port={self.port}",
                        "--pid-file=",
                        f"--user={getpass.getuser()}",
                        "--log-facility=-",
                    ],
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
        else:
            self.process.send_signal(signal.SIGHUP)  # dnsmasq re-reads its hosts files on SIGHUP
        self.wait_for(len(addresses))

    def wait_for(self, count: int) -> None:
        resolver = discovery.Resolver("127.0.0.1", self.port, timeout_s=0.5)
        deadline = time.monotonic() + DEADLINE_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"dnsmasq exited: {self.log.read_text()}")
            try:
                if len(discovery.resolve_a(self.name, resolver)) == count:
                    return
            except discovery.DiscoveryError:
                pass
            time.sleep(0.05)
        raise AssertionError(f"dnsmasq never served {count} records: {self.log.read_text()}")

    def stop(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait(10)


@contextlib.contextmanager
def running(directory: pathlib.Path, name: str):
    """A Dnsmasq for `name` (not serving yet: call `serve`), stopped afterwards; skips without dnsmasq."""
    require_dnsmasq()
    server = Dnsmasq(directory, name)
    try:
        yield server
    finally:
        server.stop()
