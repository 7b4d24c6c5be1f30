"""What a lab SMTP server is told to do wrong, and what it received: the fault scripts."""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass
from typing import Literal, get_args

REPLY_LINE = re.compile(r"\d{3}([ -].*)?")

Stage = Literal["GREETING", "EHLO", "MAIL", "RCPT", "DATA", "BODY", "EOD"]
Action = Literal["reply", "disconnect", "hang"]
STAGES: tuple[str, ...] = get_args(Stage)
ACTIONS: tuple[str, ...] = get_args(Action)


@dataclass(frozen=True)
class Fault:
    """What a server does wrong, and how often.

    stage: where it strikes: GREETING, EHLO, MAIL, RCPT, DATA (the DATA command), BODY
        (while the message text arrives: "disconnect", or "hang": a slow reader) or EOD
        (after the final dot).
    action: "reply" answers `reply` instead of going on; "disconnect" drops the connection
        without a word; "hang" stays silent for `seconds` (None: until the client leaves)
        or until `gate` is set, then answers `reply`, or carries on normally when there is
        none. A hang at EOD with no reply records the message first: the server has it,
        only the answer is late. A hang at BODY stops reading the text after each part
        that arrives, for `seconds` or until `gate` is set: the client's writes back up.
    times: how many matching events it strikes (None: until cleared). Each connection meets
        GREETING and EHLO once, each transaction MAIL, DATA, BODY and EOD once.
    recipient: at RCPT, strike only this address; at EOD, only a transaction to it.
    A reply may span lines ("421-first\\r\\n421 second"). After a 421 reply the server closes
    the connection, as RFC 5321 section 3.8 says.
    """

    stage: Stage
    reply: str | None = None
    action: Action = "reply"
    seconds: float | None = None
    times: int | None = 1
    recipient: str | None = None
    gate: threading.Event | None = None  # "hang": until the test sets it

    def __post_init__(self) -> None:
        if self.stage not in STAGES:
            raise ValueError(f"stage must be one of {STAGES}, not {self.stage!r}")
        if self.action not in ACTIONS:
            raise ValueError(f"action must be one of {ACTIONS}, not {self.action!r}")
        if self.action == "reply" and self.reply is None:
            raise ValueError('action "reply" needs a reply')
        if self.action == "disconnect" and self.reply is not None:
            raise ValueError('action "disconnect" sends no reply')
        if self.stage == "BODY" and self.action not in ("disconnect", "hang"):
            raise ValueError('stage "BODY" only knows actions "disconnect" and "hang"')
        if self.stage == "BODY" and self.reply is not None:
            raise ValueError('stage "BODY" sends no reply')
        if self.recipient is not None and self.stage not in ("RCPT", "EOD"):
            raise ValueError('only stages "RCPT" and "EOD" can name a recipient')
        if self.times is not None and self.times < 1:
            raise ValueError("times must be at least 1, or None for always")
        if (self.seconds is not None or self.gate is not None) and self.action != "hang":
            raise ValueError('only action "hang" takes seconds or a gate')
        if self.reply is not None:
            lines = self.reply.replace("\r\n", "\n").split("\n")
            if not all(REPLY_LINE.fullmatch(line) for line in lines):
                raise ValueError(f"not an SMTP reply: {self.reply!r}")
            object.__setattr__(self, "reply", "\r\n".join(lines))

    @property
    def closes(self) -> bool:
        """Whether the server hangs up after this reply (a 421, or any greeting fault)."""
        return self.stage == "GREETING" or (self.reply or "").startswith("421")


@dataclass(frozen=True)
class Received:
    """One transaction a server accepted; `content` is the DATA bytes as sent, after
    dot-unstuffing, with CRLF line ends."""

    mail_from: str
    rcpt_tos: tuple[str, ...]
    mail_options: tuple[str, ...]
    rcpt_options: tuple[tuple[str, ...], ...]  # one tuple per recipient, as sent
    content: bytes
    connection: int = 0  # which connection (1, 2, ...) carried it
    helo: str = ""
    tls: bool = False
    auth_user: str | None = None
    at: float = 0.0  # when the server stored it (time.time())


@dataclass
class _Scripted:
    fault: Fault
    left: int | None


class FaultScript:
    """The faults a test has asked for, consumed by the server thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._entries: list[_Scripted] = []

    def add(self, faults: tuple[Fault, ...]) -> None:
        with self._lock:
            self._entries.extend(_Scripted(fault, fault.times) for fault in faults)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()

    def pending(self) -> list[Fault]:
        with self._lock:
            return [entry.fault for entry in self._entries]

    def take(self, stage: Stage, recipient: str | None = None) -> Fault | None:
        """The first fault due at `stage` (for `recipient`), counting it as used."""
        with self._lock:
            for entry in self._entries:
                wanted = entry.fault.recipient
                if entry.fault.stage != stage:
                    continue
                if wanted is not None and (recipient or "").lower() != wanted.lower():
                    continue
                if entry.left is not None:
                    entry.left -= 1
                    if entry.left == 0:
                        self._entries.remove(entry)
                return entry.fault
            return None


@dataclass(frozen=True)
class Options:
    hostname: str
    starttls: bool
    implicit_tls: bool
    require_auth: tuple[str, str] | None
    auth_require_tls: bool
    size_limit: int | None
    advertise_8bitmime: bool
    advertise_smtputf8: bool
    advertise_dsn: bool
    reply_delay: float  # seconds each reply waits (a slow server); at EOD, before it records
