"""One check's result: what was checked, on what, how it came out, the evidence, the fix."""

from __future__ import annotations

import enum
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass


class Status(enum.StrEnum):
    OK = "ok"
    WARN = "warn"
    FAIL = "fail"
    ERROR = "error"  # DNS (or the provider) could not answer: nothing is known


# Every check's name, in the order a report lists them; the catalog names them too.
CHECKS = (
    "sender-domain",
    "null-mx",
    "mx-cname",
    "mx-address",
    "ns",
    "spf",
    "spf-ip",
    "dmarc",
    "ptr",
    "fcrdns",
    "helo",
    "dnsbl",
    "srs-spf",
    "srs-mx",
    "probe",
)

# Checks about the outbound identity (the sending IP and the HELO name): they hold for
# all mail this host sends, whatever its sender domain.
IDENTITY_CHECKS = frozenset({"ptr", "fcrdns", "helo", "dnsbl"})

# Findings first: what failed, what could not be checked, what is doubtful, then what is ok.
_ORDER = {Status.FAIL: 0, Status.ERROR: 1, Status.WARN: 2, Status.OK: 3}


@dataclass(frozen=True, slots=True)
class Result:
    check: str
    subject: str
    status: Status
    detail: str  # the evidence: the records seen
    fix: str = ""  # the concrete change, naming the record; empty when ok

    @property
    def finding(self) -> bool:
        return self.status is not Status.OK

    @property
    def rank(self) -> int:
        return _ORDER[self.status]


def ok(check: str, subject: str, detail: str) -> Result:
    return Result(check, subject, Status.OK, detail)


def warn(check: str, subject: str, detail: str, fix: str) -> Result:
    return Result(check, subject, Status.WARN, detail, fix)


def fail(check: str, subject: str, detail: str, fix: str) -> Result:
    return Result(check, subject, Status.FAIL, detail, fix)


def error(check: str, subject: str, detail: str, fix: str = "") -> Result:
    return Result(check, subject, Status.ERROR, detail, fix)


def summary(results: Iterable[Result]) -> dict[str, int]:
    """How many results of each status: {"ok": n, "warn": n, "fail": n, "error": n}."""
    counts = Counter(r.status for r in results)
    return {status.value: counts.get(status, 0) for status in Status}
