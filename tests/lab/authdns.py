"""A real authoritative DNS server (Knot DNS) on a loopback address, serving test zones.

Knot answers like the name servers of real domains do: authoritative answers with the
AA flag, NXDOMAIN and NODATA from the zone, CNAME chains within a zone, REFUSED for
names outside its zones. Several servers can share one port on different loopback
addresses (127.0.0.2, ...), so that a test domain can have a second name server with
another serial, and a silent one (SilentDns).
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Self

import dns.exception
import dns.flags
import dns.message
import dns.query
import dns.rcode
import dns.resolver

from tests.lab import Running, wait_for

KNOTD = "knotd"
START_TIMEOUT = 30.0


def knot_unavailable() -> str | None:
    """Why this machine cannot run Knot DNS, or None when it can."""
    if shutil.which(KNOTD) is None and not Path("/usr/sbin/knotd").exists():
        return "Knot DNS is not installed (scripts/setup installs the knot package)"
    return None


def _knotd() -> str:
    return shutil.which(KNOTD) or "/usr/sbin/knotd"


@dataclass(frozen=True)
class Zone:
    """One zone: its origin, serial, name servers and records in zone file syntax.

    `records` may use names relative to the origin ("mail CNAME host", "@ MX 10 mail").
    """

    origin: str
    records: str = ""
    serial: int = 1
    ns: tuple[str, ...] = ("ns1.lab.test",)

    def text(self) -> str:
        origin = self.origin.rstrip(".")
        lines = [
            f"$ORIGIN {origin}.",
            "$TTL 300",
            f"@ SOA {self.ns[0]}. hostmaster.{origin}. {self.serial} 3600 600 86400 300",
            *(f"@ NS {name}." for name in self.ns),
            self.records,
        ]
        return "\n".join(lines) + "\n"


def free_port(addresses: Sequence[str], attempts: int = 50) -> int:
    """A port free for UDP and TCP on every one of `addresses`."""
    for _ in range(attempts):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as first:
            first.bind((addresses[0], 0))
            port: int = first.getsockname()[1]
        if all(_free(address, port) for address in addresses):
            return port
    raise OSError(f"no port free for UDP and TCP on {', '.join(addresses)}")


def _free(address: str, port: int) -> bool:
    for kind in (socket.SOCK_DGRAM, socket.SOCK_STREAM):
        with socket.socket(socket.AF_INET, kind) as sock:
            try:
                sock.bind((address, port))
            except OSError:
                return False
    return True


class AuthoritativeDns(Running):
    """knotd serving `zones` on `address`:`port` (port None: a free one)."""

    def __init__(
        self, zones: Iterable[Zone], *, address: str = "127.0.0.1", port: int | None = None
    ) -> None:
        self.zones = list(zones)
        self.address = address
        self.port = port or 0
        self._root: Path | None = None
        self._proc: subprocess.Popen[bytes] | None = None

    def _write(self, root: Path) -> Path:
        zones = root / "zones"
        zones.mkdir()
        for zone in self.zones:
            (zones / f"{zone.origin.rstrip('.')}.zone").write_text(zone.text())
        listed = "\n".join(f"  - domain: {zone.origin.rstrip('.')}" for zone in self.zones)
        config = root / "knot.conf"
        config.write_text(
            f"""server:
    rundir: "{root}"
    listen: [ "{self.address}@{self.port}" ]
    udp-workers: 1
    tcp-workers: 1
    background-workers: 1
log:
  - target: stderr
    any: warning
database:
    storage: "{root}"
template:
  - id: default
    storage: "{zones}"
    file: "%s.zone"
    semantic-checks: off
    zonefile-sync: -1
    journal-content: none
zone:
{listed}
"""
        )
        return config

    def start(self) -> Self:
        if self._proc is not None:
            return self
        if not self.port:
            self.port = free_port([self.address])
        self._root = Path(tempfile.mkdtemp(prefix="queue-rescue-knot-"))
        config = self._write(self._root)
        self._proc = subprocess.Popen(
            [_knotd(), "-c", str(config), "-s", str(self._root / "knot.sock")],
            stdout=subprocess.DEVNULL,
            stderr=(self._root / "knotd.log").open("wb"),
        )
        try:
            wait_for(self._ready, START_TIMEOUT, f"knotd on {self.address}:{self.port}", self._log)
        except BaseException:
            self.stop()
            raise
        return self

    def _ready(self) -> bool:
        if self._proc is not None and self._proc.poll() is not None:
            raise RuntimeError(f"knotd exited with {self._proc.returncode}: {self._log()}")
        return all(self._serves(zone.origin) for zone in self.zones)

    def _serves(self, origin: str) -> bool:
        query = dns.message.make_query(origin, "SOA")
        try:
            reply = dns.query.udp(query, self.address, timeout=0.5, port=self.port)
        except (OSError, dns.exception.DNSException):
            return False
        return reply.rcode() == dns.rcode.NOERROR and bool(reply.flags & dns.flags.AA)

    def _log(self) -> str:
        log = self._root / "knotd.log" if self._root else None
        return log.read_text(errors="replace")[-2000:] if log and log.exists() else "(no log)"

    def stop(self) -> None:
        if self._proc is not None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
            self._proc = None
        if self._root is not None:
            shutil.rmtree(self._root, ignore_errors=True)
            self._root = None

    def resolver(self, lifetime: float = 2.0) -> dns.resolver.Resolver:
        """A dnspython resolver that asks only this server."""
        resolver = dns.resolver.Resolver(configure=False)
        resolver.nameservers = [self.address]
        resolver.port = self.port
        resolver.lifetime = lifetime
        return resolver

    def dns_config(self, timeout: str = "1s") -> str:
        """A [dns] table for queue-rescue's configuration that asks this server."""
        return (
            f'[dns]\nnameservers = ["{self.address}"]\nport = {self.port}\ntimeout = "{timeout}"\n'
        )


class SilentDns(Running):
    """A name server that never answers: UDP and TCP sockets bound, nothing read."""

    def __init__(self, address: str, port: int) -> None:
        self.address = address
        self.port = port
        self._sockets: list[socket.socket] = []

    def start(self) -> Self:
        if not self._sockets:
            udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            udp.bind((self.address, self.port))
            tcp.bind((self.address, self.port))
            tcp.listen()
            self._sockets = [udp, tcp]
        return self

    def stop(self) -> None:
        for sock in self._sockets:
            sock.close()
        self._sockets = []
