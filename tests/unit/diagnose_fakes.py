"""Made-up DNS answers for the diagnose checks: a Lookup over a dict, no network."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping

from rescue.diagnose.answers import Answer, Outcome, normal_name

# A value: the records (a tuple of texts), or an Outcome for NXDOMAIN/NODATA/ERROR.
Value = tuple[str, ...] | Outcome


class FakeDns:
    """answers.Lookup from `records[(name, type)]`; an unknown name is NXDOMAIN, a known
    name without the type NODATA. `servers[(address, name, type)]` answers ask_server."""

    def __init__(
        self,
        records: Mapping[tuple[str, str], Value],
        servers: Mapping[tuple[str, str, str], Value] | None = None,
    ) -> None:
        self.records = {(normal_name(n), t): v for (n, t), v in records.items()}
        self.servers = dict(servers or {})
        self.asked: Counter[tuple[str, str]] = Counter()

    def get(self, name: str, rdtype: str) -> Answer:
        name = normal_name(name)
        self.asked[(name, rdtype)] += 1
        value = self.records.get((name, rdtype))
        if value is None:
            known = any(n == name for n, _ in self.records)
            return Answer(name, rdtype, Outcome.NODATA if known else Outcome.NXDOMAIN)
        return _answer(name, rdtype, value)

    def ask_server(self, address: str, name: str, rdtype: str) -> Answer:
        value = self.servers.get((address, normal_name(name), rdtype), Outcome.ERROR)
        return _answer(normal_name(name), rdtype, value)


def _answer(name: str, rdtype: str, value: Value) -> Answer:
    if isinstance(value, Outcome):
        error = "SERVFAIL" if value is Outcome.ERROR else ""
        return Answer(name, rdtype, value, error=error)
    return Answer(name, rdtype, Outcome.ANSWER, value)


def soa(serial: int) -> tuple[str, ...]:
    return (f"ns1.example.net. hostmaster.example.com. {serial} 3600 600 86400 300",)
