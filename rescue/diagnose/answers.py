"""DNS answers as plain values, and the one question the checks may ask.

The checks are pure over these: the DNS edge (lookup.py) answers them from the
network, unit tests from made-up answers.
"""

from __future__ import annotations

import enum
import ipaddress
from dataclasses import dataclass
from typing import Protocol


class Outcome(enum.StrEnum):
    ANSWER = "answer"
    NODATA = "nodata"  # the name exists, without records of this type
    NXDOMAIN = "nxdomain"
    ERROR = "error"  # SERVFAIL, REFUSED, a timeout, the time budget used up


@dataclass(frozen=True, slots=True)
class Answer:
    """The records of one (name, type), each as text.

    Names have no final dot and are lower case; an MX is "10 mx.example.com" ("0 ." for
    a null MX); a TXT record is its strings joined; CNAMEs are followed by the resolver.
    """

    name: str
    rdtype: str
    outcome: Outcome
    records: tuple[str, ...] = ()
    error: str = ""
    # Not asked at all: the run's time budget was used up. Nothing is known.
    unasked: bool = False

    @property
    def found(self) -> bool:
        return self.outcome is Outcome.ANSWER and bool(self.records)

    @property
    def failed(self) -> bool:
        return self.outcome is Outcome.ERROR

    def describe(self) -> str:
        """The answer as evidence: "A 192.0.2.1, 192.0.2.2", "no AAAA record", "NXDOMAIN"."""
        if self.outcome is Outcome.ANSWER and self.records:
            return f"{self.rdtype} {', '.join(self.records)}"
        if self.outcome is Outcome.NXDOMAIN:
            return "NXDOMAIN (no such name)"
        if self.outcome is Outcome.ERROR:
            return f"no answer ({self.error})"
        return f"no {self.rdtype} record"


class Lookup(Protocol):
    """Where checks get their answers: one question per (name, type) and run."""

    def get(self, name: str, rdtype: str) -> Answer:
        """The answer of the configured resolver ([dns])."""
        ...

    def ask_server(self, address: str, name: str, rdtype: str) -> Answer:
        """The answer of one name server asked directly (its authoritative data)."""
        ...


def normal_name(name: str) -> str:
    return name.strip().lower().rstrip(".")


def mx_hosts(answer: Answer) -> list[tuple[int, str]]:
    """(preference, host) of each MX record, most preferred first; host "." is a null MX."""
    hosts = []
    for record in answer.records:
        preference, _, host = record.partition(" ")
        hosts.append((int(preference) if preference.isdigit() else 0, host.strip() or "."))
    return sorted(hosts)


def reverse_name(ip: str) -> str:
    """The PTR name of an address: "1.2.0.192.in-addr.arpa" for 192.0.2.1."""
    return ipaddress.ip_address(ip).reverse_pointer


def dnsbl_name(ip: str, zone: str) -> str:
    """The name a DNS block list is asked for an address (RFC 5782 section 2.1 and 2.4)."""
    address = ipaddress.ip_address(ip)
    if address.version == 4:
        labels = reversed(str(address).split("."))
    else:
        labels = reversed(address.exploded.replace(":", ""))
    return ".".join(labels) + "." + normal_name(zone)


def address_type(ip: str) -> str:
    return "A" if ipaddress.ip_address(ip).version == 4 else "AAAA"


def same_address(a: str, b: str) -> bool:
    try:
        return ipaddress.ip_address(a) == ipaddress.ip_address(b)
    except ValueError:
        return False
