"""A real DNS server on loopback (UDP and TCP, one port) answering from records a test sets."""

from __future__ import annotations

import collections
import socket
import socketserver
import struct
import threading
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Literal, Self

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.resolver
import dns.rrset

from tests.lab import Running, recv_exactly

Failure = Literal["servfail", "nxdomain", "timeout"]
FAILURES: tuple[Failure, ...] = ("servfail", "nxdomain", "timeout")
# RFC 1035 section 4.2.1: a UDP answer without EDNS fits in 512 octets, or is truncated.
UDP_PLAIN_SIZE = 512
# How long a TCP connection for a "timeout" name is held open without an answer.
SILENT_HOLD = 30.0


@dataclass
class _Zone:
    """Records per (name, type), each a list of (ttl, rdata text)."""

    records: dict[tuple[str, str], list[tuple[int, str]]] = field(default_factory=dict)
    failures: dict[str, Failure] = field(default_factory=dict)


def _key(name: str) -> str:
    return name.lower().rstrip(".")


class DnsServer(Running):
    """Authoritative-looking answers for MX and A records; names can be made to fail.

    `queries` counts questions per (name, type), e.g. queries[("kunde1.test", "MX")].
    """

    def __init__(self, records: Iterable[tuple[str, str, str, int]] = ()) -> None:
        """`records`: (name, type, rdata text, ttl), e.g. ("a.test", "MX", "10 mx.a.test", 300)."""
        self.host = "127.0.0.1"
        self.port = 0
        self._lock = threading.Lock()
        self._zone = _Zone()
        self._queries: collections.Counter[tuple[str, str]] = collections.Counter()
        self._servers: list[socketserver.BaseServer] = []
        self._threads: list[threading.Thread] = []
        self._stopping = threading.Event()
        self._held: dict[str, threading.Event] = {}  # names whose answers wait for release()
        self._waiting: collections.Counter[str] = collections.Counter()
        for name, rdtype, text, ttl in records:
            self.add(name, rdtype, text, ttl)

    # -- records -----------------------------------------------------------------------

    def add(self, name: str, rdtype: str, text: str, ttl: int = 300) -> None:
        """Add one record; `text` is its presentation form ("10 mx.example.", "192.0.2.1")."""
        dns.rdatatype.from_text(rdtype)  # refuse an unknown type now, not at query time
        with self._lock:
            self._zone.records.setdefault((_key(name), rdtype.upper()), []).append((ttl, text))

    def add_mx(self, domain: str, hosts: Iterable[tuple[int, str]], ttl: int = 300) -> None:
        """MX records for `domain`: [(10, "mx00.kundenserver.de"), ...]."""
        for preference, host in hosts:
            self.add(domain, "MX", f"{preference} {host.rstrip('.')}.", ttl)

    def add_a(self, name: str, address: str, ttl: int = 300) -> None:
        self.add(name, "A", address, ttl)

    def set_failure(self, name: str, failure: Failure | None) -> None:
        """Make every question about `name` fail this way; None answers normally again."""
        if failure is not None and failure not in FAILURES:
            raise ValueError(f"failure must be one of {FAILURES}, not {failure!r}")
        with self._lock:
            if failure is None:
                self._zone.failures.pop(_key(name), None)
            else:
                self._zone.failures[_key(name)] = failure

    def hold(self, name: str) -> None:
        """Keep answers about `name` back until release() (or SILENT_HOLD seconds)."""
        with self._lock:
            self._held[_key(name)] = threading.Event()

    def release(self) -> None:
        """Let every answer held back go, and answer at once from now on."""
        with self._lock:
            held, self._held = self._held, {}
        for event in held.values():
            event.set()

    @property
    def waiting(self) -> set[str]:
        """Names that a question is being held back about right now."""
        with self._lock:
            return {name for name, count in self._waiting.items() if count}

    def clear(self) -> None:
        """Forget all records, failures and query counts."""
        with self._lock:
            self._zone = _Zone()
            self._queries.clear()

    @property
    def queries(self) -> collections.Counter[tuple[str, str]]:
        """A copy of the question counts per (name without final dot, type)."""
        with self._lock:
            return collections.Counter(self._queries)

    def resolver(self, lifetime: float = 2.0) -> dns.resolver.Resolver:
        """A dnspython resolver that asks only this server, with no cache."""
        resolver = dns.resolver.Resolver(configure=False)
        resolver.nameservers = [self.host]
        resolver.port = self.port
        resolver.lifetime = lifetime
        return resolver

    # -- answering ---------------------------------------------------------------------

    def answer(self, wire: bytes, max_size: int = 65535) -> bytes | None:
        """The reply to one query in wire form, or None to stay silent."""
        try:
            query = dns.message.from_wire(wire)
        except dns.exception.DNSException:
            return None
        response = dns.message.make_response(query)
        response.flags |= dns.flags.AA
        if not query.question:
            response.set_rcode(dns.rcode.FORMERR)
            return response.to_wire()
        question = query.question[0]
        name = _key(question.name.to_text())
        rdtype = dns.rdatatype.to_text(question.rdtype)
        with self._lock:
            self._queries[(name, rdtype)] += 1
            failure = self._zone.failures.get(name)
            found = list(self._zone.records.get((name, rdtype), []))
            known = any(key[0] == name for key in self._zone.records)
            glue = self._glue(found) if rdtype == "MX" else []
            held = self._held.get(name)
        if held is not None:
            with self._lock:
                self._waiting[name] += 1
            held.wait(SILENT_HOLD)
            with self._lock:
                self._waiting[name] -= 1
        if failure == "timeout":
            return None
        if failure == "servfail":
            response.set_rcode(dns.rcode.SERVFAIL)
        elif failure == "nxdomain" or not (found or known):
            response.set_rcode(dns.rcode.NXDOMAIN)
        else:
            for ttl, text in found:
                _add(response.answer, question.name, rdtype, ttl, text)
            for host, ttl, text in glue:
                _add(response.additional, dns.name.from_text(host), "A", ttl, text)
        try:
            return response.to_wire(max_size=max_size)
        except dns.exception.TooBig:
            truncated = dns.message.make_response(query)
            truncated.flags |= dns.flags.AA | dns.flags.TC
            return truncated.to_wire()

    def _glue(self, mx_records: list[tuple[int, str]]) -> list[tuple[str, int, str]]:
        glue = []
        for _, text in mx_records:
            host = _key(text.split()[-1])
            glue += [(host + ".", ttl, a) for ttl, a in self._zone.records.get((host, "A"), [])]
        return glue

    # -- life cycle --------------------------------------------------------------------

    def start(self) -> Self:
        """Serve UDP and TCP on one free port of 127.0.0.1."""
        if self._servers:
            return self
        udp, tcp = _bind_pair(self)
        self.port = udp.server_address[1]
        self._servers = [udp, tcp]
        for server in self._servers:
            thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def stop(self) -> None:
        self._stopping.set()
        self.release()
        for server in self._servers:
            server.shutdown()
            server.server_close()
        for thread in self._threads:
            thread.join(timeout=10)
        self._servers, self._threads = [], []
        self._stopping = threading.Event()


def _add(
    section: list[dns.rrset.RRset], name: dns.name.Name, rdtype: str, ttl: int, text: str
) -> None:
    for rrset in section:
        if rrset.name == name and dns.rdatatype.to_text(rrset.rdtype) == rdtype:
            rrset.add(dns.rrset.from_text(name, ttl, "IN", rdtype, text)[0], ttl)
            return
    section.append(dns.rrset.from_text(name, ttl, "IN", rdtype, text))


class _UdpHandler(socketserver.BaseRequestHandler):
    server: _UdpServer

    def handle(self) -> None:
        data, sock = self.request
        query_size = UDP_PLAIN_SIZE
        try:
            query = dns.message.from_wire(data)
            if query.edns >= 0:
                query_size = max(UDP_PLAIN_SIZE, query.payload)
        except dns.exception.DNSException:
            pass
        reply = self.server.dns.answer(data, max_size=query_size)
        if reply is not None:
            sock.sendto(reply, self.client_address)


class _TcpHandler(socketserver.BaseRequestHandler):
    server: _TcpServer

    def handle(self) -> None:
        sock: socket.socket = self.request
        sock.settimeout(SILENT_HOLD)
        try:
            while True:
                length = recv_exactly(sock, 2)
                if length is None:
                    return
                data = recv_exactly(sock, struct.unpack("!H", length)[0])
                if data is None:
                    return
                reply = self.server.dns.answer(data)
                if reply is None:
                    # Hold the connection silently, as a dead server would.
                    self.server.dns._stopping.wait(SILENT_HOLD)
                    return
                sock.sendall(struct.pack("!H", len(reply)) + reply)
        except OSError:
            return


class _UdpServer(socketserver.ThreadingUDPServer):
    daemon_threads = True

    def __init__(self, dns_server: DnsServer, port: int) -> None:
        self.dns = dns_server
        super().__init__(("127.0.0.1", port), _UdpHandler)


class _TcpServer(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, dns_server: DnsServer, port: int) -> None:
        self.dns = dns_server
        super().__init__(("127.0.0.1", port), _TcpHandler)


def _bind_pair(dns_server: DnsServer, attempts: int = 20) -> tuple[_UdpServer, _TcpServer]:
    """A UDP and a TCP server on the same free port (a free UDP port may be taken for TCP)."""
    for _ in range(attempts):
        udp = _UdpServer(dns_server, 0)
        try:
            return udp, _TcpServer(dns_server, udp.server_address[1])
        except OSError:
            udp.server_close()
    raise OSError("no port free for both UDP and TCP on 127.0.0.1")
