"""Routing's record in the journal's file: provider states, the domains listed, relayed mail.

Kept in the journal's SQLite file, beside the messages, through its own connection (WAL
lets the service and `route set` write at once). After a crash the table is rebuilt from
here; relays that never got their answer are counted as possibly delivered twice.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Callable, Iterable, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rescue.errors import JournalError
from rescue.journal.rows import transaction
from rescue.route.breaker import ProviderRoute

RELAYING = "relaying"
RELAYED = "accepted"  # the word the message journal uses, so quotas read alike
REFUSED = "refused"
UNCERTAIN = "uncertain"  # was relaying when the service died: may be delivered twice

_SCHEMA = """
CREATE TABLE IF NOT EXISTS route_state (
    provider   TEXT PRIMARY KEY,
    state      TEXT NOT NULL,
    reason     TEXT NOT NULL,
    changed_at REAL NOT NULL,
    override   TEXT,
    probes_ok  INTEGER NOT NULL DEFAULT 0,
    target     TEXT
);
CREATE TABLE IF NOT EXISTS route_domains (
    provider   TEXT NOT NULL,
    domain     TEXT NOT NULL,
    why        TEXT NOT NULL,
    seen       REAL NOT NULL,
    PRIMARY KEY (provider, domain)
);
CREATE TABLE IF NOT EXISTS relayed (
    id         INTEGER PRIMARY KEY,
    queue_id   TEXT NOT NULL,
    provider   TEXT,
    sender     TEXT NOT NULL,
    recipients TEXT NOT NULL,
    state      TEXT NOT NULL,
    smarthost  TEXT,
    reply      TEXT,
    started    REAL NOT NULL,
    updated    REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS relayed_updated ON relayed(updated);
"""


_RELAYED_COLUMNS = "queue_id, provider, sender, recipients, state, smarthost, reply, updated"


@dataclass(frozen=True, slots=True)
class Relayed:
    queue_id: str
    provider: str | None
    sender: str
    recipients: tuple[str, ...]
    state: str
    smarthost: str | None
    reply: str | None
    updated: float


class RouteStore:
    """Provider states, listed domains and relayed mail in the journal's file."""

    def __init__(self, path: Path, *, clock: Callable[[], float] = time.time) -> None:
        self.path = path
        self._clock = clock
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(str(path), isolation_level=None, timeout=30)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.executescript(_SCHEMA)
        except (OSError, sqlite3.Error) as exc:
            raise JournalError(f"cannot open journal {path}: {exc}") from exc

    def close(self) -> None:
        self._db.close()

    def _transaction(self) -> AbstractContextManager[sqlite3.Connection]:
        return transaction(self._db, self.path)

    def _write(self, sql: str, args: tuple[object, ...]) -> sqlite3.Cursor:
        """One statement, its own transaction (autocommit: isolation_level None): for
        each relayed message, spares the BEGIN and COMMIT round of `_transaction`."""
        try:
            return self._db.execute(sql, args)
        except sqlite3.Error as exc:
            raise JournalError(f"journal {self.path}: {exc}") from exc

    def _query(self, sql: str, args: tuple[object, ...] = ()) -> list[tuple[Any, ...]]:
        try:
            return self._db.execute(sql, args).fetchall()
        except sqlite3.Error as exc:
            raise JournalError(f"journal {self.path}: {exc}") from exc

    # --- provider states ----------------------------------------------------------------

    def routes(self) -> dict[str, ProviderRoute]:
        rows = self._query(
            "SELECT provider, state, reason, changed_at, override, probes_ok FROM route_state"
        )
        return {
            str(p): ProviderRoute(
                str(p), str(s), str(r), float(c), None if o is None else str(o), int(n)
            )
            for p, s, r, c, o, n in rows
        }

    def save(self, route: ProviderRoute) -> None:
        with self._transaction() as db:
            db.execute(
                "INSERT INTO route_state(provider, state, reason, changed_at, override, probes_ok)"
                " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT(provider) DO UPDATE SET"
                " state=excluded.state, reason=excluded.reason, changed_at=excluded.changed_at,"
                " override=excluded.override, probes_ok=excluded.probes_ok",
                (
                    route.provider,
                    route.state,
                    route.reason,
                    route.changed_at,
                    route.override,
                    route.probes_ok,
                ),
            )

    def target(self, provider: str) -> dict[str, str] | None:
        """The probe's target last seen for the provider (see control.probe_targets)."""
        rows = self._query("SELECT target FROM route_state WHERE provider = ?", (provider,))
        if not rows or rows[0][0] is None:
            return None
        value = json.loads(str(rows[0][0]))
        return {str(k): str(v) for k, v in value.items()} if isinstance(value, dict) else None

    def save_target(self, provider: str, target: Mapping[str, str]) -> None:
        with self._transaction() as db:
            db.execute(
                "UPDATE route_state SET target = ? WHERE provider = ?",
                (json.dumps(dict(target), sort_keys=True), provider),
            )

    # --- listed domains -----------------------------------------------------------------

    def domains(self) -> dict[str, dict[str, str]]:
        """provider -> {domain: why}."""
        out: dict[str, dict[str, str]] = {}
        for provider, domain, why in self._query(
            "SELECT provider, domain, why FROM route_domains ORDER BY domain"
        ):
            out.setdefault(str(provider), {})[str(domain)] = str(why)
        return out

    def add_domains(self, provider: str, domains: Mapping[str, str]) -> None:
        if not domains:
            return
        now = self._clock()
        with self._transaction() as db:
            db.executemany(
                "INSERT INTO route_domains(provider, domain, why, seen) VALUES (?, ?, ?, ?)"
                " ON CONFLICT(provider, domain) DO UPDATE SET seen=excluded.seen",
                [(provider, d, why, now) for d, why in domains.items()],
            )

    def forget_domains(self, provider: str) -> None:
        with self._transaction() as db:
            db.execute("DELETE FROM route_domains WHERE provider = ?", (provider,))

    # --- relayed mail ---------------------------------------------------------------------

    def relay_started(
        self, queue_id: str, provider: str | None, sender: str, recipients: Iterable[str]
    ) -> int:
        now = self._clock()
        cur = self._write(
            "INSERT INTO relayed(queue_id, provider, sender, recipients, state, started,"
            " updated) VALUES (?, ?, ?, ?, ?, ?, ?)",
            (queue_id, provider, sender, json.dumps(list(recipients)), RELAYING, now, now),
        )
        return int(cur.lastrowid or 0)

    def relay_ended(self, row: int, state: str, smarthost: str | None, reply: str) -> None:
        self._write(
            "UPDATE relayed SET state = ?, smarthost = ?, reply = ?, updated = ? WHERE id = ?",
            (state, smarthost, reply, self._clock(), row),
        )

    def unanswered(self) -> list[Relayed]:
        """Relays left open by a crash, now marked uncertain: each may be delivered twice."""
        rows = self._relayed("WHERE state = ?", (RELAYING,))
        if rows:
            with self._transaction() as db:
                db.execute(
                    "UPDATE relayed SET state = ?, updated = ? WHERE state = ?",
                    (UNCERTAIN, self._clock(), RELAYING),
                )
        return rows

    def relayed_since(self, since: float) -> dict[str, int]:
        """Messages each smarthost accepted through the relay from `since` on."""
        rows = self._query(
            "SELECT smarthost, count(*) FROM relayed WHERE updated >= ? AND state = ?"
            " GROUP BY smarthost",
            (since, RELAYED),
        )
        return {str(host): int(n) for host, n in rows if host is not None}

    def recent_relays(self, since: float) -> list[Relayed]:
        return self._relayed("WHERE updated >= ? ORDER BY updated", (since,))

    def _relayed(self, where: str, args: tuple[object, ...]) -> list[Relayed]:
        # `where` is one of this module's fixed clauses, never outside text.
        sql = f"SELECT {_RELAYED_COLUMNS} FROM relayed {where}"  # noqa: S608
        rows = self._query(sql, args)
        return [
            Relayed(
                str(q),
                None if p is None else str(p),
                str(s),
                tuple(json.loads(str(r))),
                str(st),
                None if h is None else str(h),
                None if y is None else str(y),
                float(u),
            )
            for q, p, s, r, st, h, y, u in rows
        ]

    def prune(self, before: float) -> None:
        """Forget relayed mail older than `before` (the journal's keep)."""
        with self._transaction() as db:
            db.execute("DELETE FROM relayed WHERE updated < ? AND state != ?", (before, RELAYING))
