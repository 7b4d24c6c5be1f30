"""What the relay endpoint does with a transaction: SRS, the smarthost pool, the answer.

Postfix keeps the message until it hears 250, so the relay holds nothing: it answers
only after a smarthost answered, 250 when one accepted, 451 otherwise. Never a 5xx: a
refusal on the relay path must not bounce mail the provider might still take; Postfix
keeps it and tries again (through the provider once its entries leave the table).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from rescue.config import SmarthostConfig
from rescue.errors import DeliveryError, JournalError, SrsError
from rescue.model import Envelope, Recipient
from rescue.route.relayserver import Answer, Transaction
from rescue.route.store import REFUSED, RELAYED, UNCERTAIN, RouteStore
from rescue.smarthost.pool import Dispatcher
from rescue.smarthost.session import AcceptedWhileCancelled
from rescue.srs.rewriter import SrsRewriter

log = logging.getLogger(__name__)

# Postfix's smtpd names its queue id in the Received header it adds: "... id 4Bx2...;".
_QUEUE_ID = re.compile(rb"^Received:[^\r\n]*(?:\r\n[ \t][^\r\n]*)*?\bid ([0-9A-Za-z]{5,32})\b")
UNKNOWN_ID = "relay"


@dataclass(frozen=True, slots=True)
class RelayOutcome:
    """One relayed transaction, for the log, the metrics and the quotas."""

    queue_id: str
    provider: str | None
    recipients: tuple[str, ...]
    accepted: bool
    smarthost: str | None
    reply: str
    uncertain: bool = False


def queue_id_of(data: bytes) -> str:
    """Postfix's queue id from the message's first Received header, for the log."""
    match = _QUEUE_ID.search(data[:8192])
    return match.group(1).decode("ascii") if match else UNKNOWN_ID


def envelope_of(tx: Transaction, queue_id: str) -> Envelope:
    """The transaction as the smarthost session sends it (content with LF line ends)."""
    return Envelope(
        queue_id=queue_id,
        sender=tx.sender,
        recipients=tuple(
            Recipient(address, orig_rcpt=params.get("ORCPT"), notify=params.get("NOTIFY"))
            for address, params in tx.recipients
        ),
        # The session turns LF back into CRLF; Postfix's client sends no bare LF.
        content=tx.data.replace(b"\r\n", b"\n"),
        envid=tx.params.get("ENVID"),
        ret=tx.params.get("RET"),
        body=tx.params.get("BODY"),
        smtputf8=tx.smtputf8,
    )


class Relay:
    """The relay endpoint's `deliver`: one transaction through the smarthost pool."""

    def __init__(
        self,
        *,
        srs: SrsRewriter,
        store: RouteStore,
        smarthosts: Callable[[], tuple[Sequence[SmarthostConfig], str | None]],
        dispatcher: Callable[[Sequence[SmarthostConfig]], Dispatcher],
        provider_of: Callable[[str], str | None],
        report: Callable[[RelayOutcome], None],
    ) -> None:
        """`smarthosts()` gives those with room in their quotas and, when none has, why."""
        self._srs = srs
        self._store = store
        self._smarthosts = smarthosts
        self._dispatcher = dispatcher
        self._provider_of = provider_of
        self._report = report

    async def __call__(self, tx: Transaction) -> Answer:
        queue_id = queue_id_of(tx.data)
        recipients = tuple(address for address, _ in tx.recipients)
        provider = self._provider_of(recipients[0].rpartition("@")[2].lower())

        def refuse(text: str, smarthost: str | None = None, uncertain: bool = False) -> Answer:
            self._report(
                RelayOutcome(queue_id, provider, recipients, False, smarthost, text, uncertain)
            )
            return Answer(451, f"4.4.0 queue-rescue relay: {text}")

        hosts, full = self._smarthosts()
        if not hosts:
            return refuse(f"smarthost quota reached: {full}")
        try:
            sender = self._srs.forward(tx.sender)
        except SrsError as exc:
            return refuse(f"sender cannot be rewritten with SRS: {exc}")
        envelope = envelope_of(tx, queue_id)
        try:
            row = self._store.relay_started(queue_id, provider, sender, recipients)
        except JournalError as exc:
            log.error("%s: relay: %s", queue_id, exc)
            return refuse("journal not writable")
        try:
            accepted = await self._dispatcher(hosts).deliver(envelope, sender, _no_op)
        except AcceptedWhileCancelled as exc:
            # Stopping: the smarthost has it, but Postfix will not hear so. Recorded, so
            # that the second copy Postfix may send is explained.
            self._ended(row, UNCERTAIN, exc.accepted.smarthost, exc.accepted.reply)
            raise
        except DeliveryError as exc:
            state = UNCERTAIN if exc.uncertain else REFUSED
            self._ended(row, state, exc.smarthost, str(exc))
            return refuse(str(exc), exc.smarthost, exc.uncertain)
        self._ended(row, RELAYED, accepted.smarthost, accepted.reply)
        self._report(
            RelayOutcome(queue_id, provider, recipients, True, accepted.smarthost, accepted.reply)
        )
        return Answer(250, f"2.0.0 Ok: relayed via {accepted.smarthost}: {accepted.reply}")

    def _ended(self, row: int, state: str, smarthost: str | None, reply: str) -> None:
        """Record how a relayed transaction ended. A journal that fails here must not
        change Postfix's answer: one the smarthost accepted still gets its 250 (else
        Postfix would send it again), one it refused still gets its 4xx."""
        try:
            self._store.relay_ended(row, state, smarthost, reply)
        except JournalError as exc:
            log.error("relay: journal: %s; the answer to Postfix stands", exc)


def _no_op(_smarthost: str) -> None:
    pass
