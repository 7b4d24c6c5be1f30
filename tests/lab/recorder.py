"""What a lab SMTP server saw: transactions, commands and connections, waited on by tests."""

from __future__ import annotations

import threading
import time
from typing import TYPE_CHECKING, Any

from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session

from tests.lab.faults import FaultScript, Options, Received

if TYPE_CHECKING:
    from tests.lab.protocol import LabSMTP


class LabEnvelope(Envelope):
    def __init__(self) -> None:
        super().__init__()
        self.rcpt_params: list[tuple[str, ...]] = []


class Recorder:
    """The state one server shares across connections: faults, counters, what it got.

    It is also the aiosmtpd handler (aiosmtpd calls its handle_DATA).
    """

    def __dir__(self) -> list[str]:
        # aiosmtpd looks through dir() of its handler on every connection for handle_* and
        # auth_* methods; listing only those keeps a connection cheap.
        return [name for name in dir(type(self)) if name.startswith(("handle_", "auth_"))]

    def __init__(self, options: Options) -> None:
        self.options = options
        self.faults = FaultScript()
        self._changed = threading.Condition()
        self.received: list[Received] = []
        self.commands: list[str] = []  # the verbs of MAIL, RCPT, DATA, RSET, QUIT seen
        self.connections = 0
        self.transactions = 0
        self.auth_attempts = 0  # AUTH commands that carried credentials
        self.closed = 0  # connections that have ended

    def connection_opened(self) -> int:
        with self._changed:
            self.connections += 1
            return self.connections

    def saw(self, verb: str) -> None:
        with self._changed:
            self.commands.append(verb)

    def connection_closed(self) -> None:
        with self._changed:
            self.closed += 1

    def transaction_started(self) -> None:
        with self._changed:
            self.transactions += 1

    def reset(self) -> None:
        self.faults.clear()
        with self._changed:
            self.received.clear()
            self.commands.clear()
            self.connections = 0
            self.transactions = 0
            self.auth_attempts = 0
            self.closed = 0

    def wait_for_count(self, n: int, timeout: float) -> list[Received]:
        with self._changed:
            if not self._changed.wait_for(lambda: len(self.received) >= n, timeout):
                raise TimeoutError(
                    f"timed out after {timeout:g}s waiting for {n} messages; "
                    f"got {len(self.received)} over {self.connections} connections"
                )
            return list(self.received)

    def authenticate(
        self, server: SMTP, session: Session, envelope: Envelope, mechanism: str, data: Any
    ) -> AuthResult:
        with self._changed:
            self.auth_attempts += 1
        expected = self.options.require_auth
        given = (data.login, data.password) if isinstance(data, LoginPassword) else None
        wanted = tuple(part.encode() for part in expected) if expected else None
        # handled=False: aiosmtpd then answers 535 itself (its default assumes we did).
        ok = given is not None and given == wanted
        return AuthResult(success=ok, handled=False, auth_data=data)

    async def handle_DATA(self, server: LabSMTP, session: Session, envelope: Envelope) -> str:
        fault = self.faults.take("EOD", envelope.rcpt_tos[0] if envelope.rcpt_tos else None)
        if fault is None or (fault.action == "hang" and fault.reply is None):
            # A slow server thinks before it stores the message, then answers at once:
            # the time it has the message and the client does not know is only the wire's.
            await server.think()
            number = self._record(server, session, envelope)
            server.answer_now = True
            await server.act_out(fault)  # at most a pause before the late answer
            return f"250 2.0.0 Ok: queued as {number}"
        reply = await server.act_out(fault)
        assert reply is not None
        return reply

    def _record(self, server: LabSMTP, session: Session, envelope: Envelope) -> int:
        assert isinstance(envelope, LabEnvelope)
        login = getattr(session.auth_data, "login", None)
        received = Received(
            mail_from=envelope.mail_from or "",
            rcpt_tos=tuple(envelope.rcpt_tos),
            mail_options=tuple(envelope.mail_options),
            rcpt_options=tuple(envelope.rcpt_params),
            content=envelope.original_content or b"",
            connection=server.connection_number,
            helo=session.host_name or "",
            tls=server.tls_active,
            auth_user=login.decode(errors="replace") if isinstance(login, bytes) else None,
            at=time.time(),
        )
        with self._changed:
            self.received.append(received)
            self._changed.notify_all()
            return len(self.received)
