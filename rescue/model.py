"""Plain values that travel between the stages of a rescue (all frozen)."""

from __future__ import annotations

from dataclasses import dataclass, field

NULL_SENDER = ""


@dataclass(frozen=True, slots=True)
class Recipient:
    """One pending recipient of a queued message."""

    address: str
    delay_reason: str = ""
    # DSN (RFC 3461) parameters as Postfix stored them; None when absent.
    orig_rcpt: str | None = None  # ORCPT, "rfc822;user@example.com"
    notify: str | None = None  # NOTIFY, "SUCCESS,DELAY,FAILURE" or "NEVER"

    @property
    def domain(self) -> str:
        return self.address.rpartition("@")[2].lower()


@dataclass(frozen=True, slots=True)
class QueuedMessage:
    """A message as the queue listing shows it: only recipients still pending."""

    queue_id: str
    queue_name: str
    arrival_time: int
    size: int
    sender: str  # "" is the null sender
    recipients: tuple[Recipient, ...]
    forced_expire: bool = False

    @property
    def key(self) -> str:
        """Identifies this queue file: Postfix may reuse a queue id later."""
        return f"{self.queue_id}:{self.arrival_time}:{self.size}"


@dataclass(frozen=True, slots=True)
class Envelope:
    """Everything needed to send a held message on: envelope and content."""

    queue_id: str
    sender: str
    recipients: tuple[Recipient, ...]  # pending only, with their DSN parameters
    content: bytes  # header and body exactly as queued, lines ending in LF
    envid: str | None = None  # DSN ENVID
    ret: str | None = None  # DSN RET: "FULL" or "HDRS"
    # As the client declared them (the relay endpoint passes them on unchanged); a queued
    # message's are decided from its content and addresses instead.
    body: str | None = None  # BODY=8BITMIME or 7BIT
    smtputf8: bool = False


@dataclass(frozen=True, slots=True)
class Classification:
    """Which provider a recipient's destination belongs to, and how we know."""

    provider: str | None
    mx: str | None = None  # the MX host that decided it, when one did
    # reason-host | dns-mx | dns-mx-cname | dns-mx-ptr | dns-mx-ns | domains | reason-text
    classified_by: str | None = None
    reason_matched: str | None = None  # the provider reason pattern the delay reason matched
    note: str = ""  # e.g. a DNS error, or MX hosts of several providers


@dataclass(frozen=True, slots=True)
class Selected:
    """A message chosen for rerouting, with the recipients that made it so."""

    message: QueuedMessage
    provider: str
    reason_matched: str | None
    classifications: tuple[Classification, ...] = field(default=())


@dataclass(slots=True)
class WorkItem:
    """A selected message a run is working on; the flush and the export add their state."""

    selected: Selected

    @property
    def queue_id(self) -> str:
        return self.selected.message.queue_id

    @property
    def key(self) -> tuple[str, str]:
        """The journal's (key, queue id) of the message."""
        return (self.selected.message.key, self.selected.message.queue_id)
