"""Fake SMTP servers in threads: a recording smarthost with scripted faults, a fake provider.

Built on aiosmtpd's SMTP protocol class. MAIL and RCPT are parsed here rather than by
aiosmtpd, because aiosmtpd refuses the null sender, upper-cases parameter values (ENVID and
ORCPT are case-sensitive) and knows no DSN parameters.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
import threading
import weakref
from collections.abc import Callable
from typing import Any, Self

from tests.lab import Running, wait_for
from tests.lab.certs import LabCerts, default_certs
from tests.lab.faults import Fault, Options, Received, Stage
from tests.lab.protocol import LabSMTP
from tests.lab.recorder import Recorder


class _ServerThread:
    """An asyncio loop in a daemon thread, serving one listening socket on 127.0.0.1."""

    def __init__(
        self,
        protocol: Callable[[asyncio.AbstractEventLoop], asyncio.Protocol],
        ssl_context: ssl.SSLContext | None,
        receive_buffer: int | None = None,
    ) -> None:
        self._protocol = protocol
        self._ssl_context = ssl_context
        self._receive_buffer = receive_buffer
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: asyncio.Server | None = None
        self._live: weakref.WeakSet[asyncio.Protocol] = weakref.WeakSet()

    def start(self) -> int:
        """Listen on a free port; return it."""
        loop = asyncio.new_event_loop()
        self._loop = loop
        self._thread = threading.Thread(target=loop.run_forever, name="lab-smtpd", daemon=True)
        self._thread.start()
        self._server = asyncio.run_coroutine_threadsafe(self._listen(), loop).result(timeout=30)
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    async def _listen(self) -> asyncio.Server:
        loop = asyncio.get_running_loop()

        def connection() -> asyncio.Protocol:
            protocol = self._protocol(loop)
            self._live.add(protocol)
            return protocol

        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if self._receive_buffer is not None:  # before listen(): accepted sockets inherit it
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, self._receive_buffer)
        sock.bind(("127.0.0.1", 0))
        return await loop.create_server(connection, sock=sock, ssl=self._ssl_context)

    def stop(self) -> None:
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        asyncio.run_coroutine_threadsafe(self._shutdown(), loop).result(timeout=30)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=30)
        loop.close()
        self._loop = self._thread = self._server = None

    async def _shutdown(self) -> None:
        assert self._server is not None
        self._server.close()
        for protocol in list(self._live):
            transport = getattr(protocol, "transport", None)
            if transport is not None:
                transport.abort()
        others = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
        for task in others:
            task.cancel()
        await asyncio.gather(*others, return_exceptions=True)
        await self._server.wait_closed()


class RecordingSmarthost(Running):
    """An SMTP server on 127.0.0.1 that records what it accepts and fails as scripted.

    TLS: `starttls` offers STARTTLS, `implicit_tls` speaks TLS from the first byte, both
    with the certificate of `certs` (default: tests.lab.certs.default_certs()).
    `require_auth=(user, password)` demands AUTH PLAIN/LOGIN before MAIL; with
    `auth_require_tls` AUTH is offered and accepted only under TLS. `reply_delay` makes
    it slow (seconds before each reply); `receive_buffer` fixes its sockets' SO_RCVBUF
    (bytes), so that a server that stops reading backs the client up soon, as over a
    network, instead of taking megabytes into loopback's buffers.
    """

    def __init__(
        self,
        *,
        starttls: bool = False,
        implicit_tls: bool = False,
        require_auth: tuple[str, str] | None = None,
        auth_require_tls: bool = False,
        size_limit: int | None = None,
        advertise_8bitmime: bool = True,
        advertise_smtputf8: bool = True,
        advertise_dsn: bool = True,
        certs: LabCerts | None = None,
        hostname: str = "smarthost.test",
        reply_delay: float = 0.0,
        receive_buffer: int | None = None,
    ) -> None:
        if starttls and implicit_tls:
            raise ValueError("choose starttls or implicit_tls, not both")
        self.host = "127.0.0.1"
        self._port: int | None = None
        options = Options(
            hostname=hostname,
            starttls=starttls,
            implicit_tls=implicit_tls,
            require_auth=require_auth,
            auth_require_tls=auth_require_tls,
            size_limit=size_limit,
            advertise_8bitmime=advertise_8bitmime,
            advertise_smtputf8=advertise_smtputf8,
            advertise_dsn=advertise_dsn,
            reply_delay=reply_delay,
        )
        self._recorder = Recorder(options)
        tls = (certs or default_certs()).server_context() if starttls or implicit_tls else None
        self._thread = _ServerThread(
            lambda loop: self._new_protocol(loop, tls if starttls else None),
            tls if implicit_tls else None,
            receive_buffer,
        )

    def _new_protocol(
        self, loop: asyncio.AbstractEventLoop, starttls: ssl.SSLContext | None
    ) -> LabSMTP:
        options = self._recorder.options
        return LabSMTP(
            self._recorder,
            loop=loop,
            hostname=options.hostname,
            data_size_limit=options.size_limit,
            enable_SMTPUTF8=options.advertise_smtputf8,
            tls_context=starttls,
            # Under implicit TLS aiosmtpd sees no STARTTLS and would refuse AUTH.
            auth_require_tls=options.auth_require_tls and not options.implicit_tls,
            authenticator=self._recorder.authenticate,
        )

    # -- life cycle --------------------------------------------------------------------

    def start(self) -> Self:
        if self._port is None:
            self._port = self._thread.start()
        return self

    def stop(self) -> None:
        self._thread.stop()
        self._port = None

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError("the server is not running: call start() first")
        return self._port

    @property
    def next_hop(self) -> str:
        """This server as a Postfix next hop: "smtp:[127.0.0.1]:PORT"."""
        return f"smtp:[{self.host}]:{self.port}"

    # -- scripting and watching --------------------------------------------------------

    def script(self, *faults: Fault) -> None:
        """Add faults; they strike in the order given, each for its `times`."""
        self._recorder.faults.add(faults)

    def clear_faults(self) -> None:
        self._recorder.faults.clear()

    def pending_faults(self) -> list[Fault]:
        """Faults that have not struck all their times yet."""
        return self._recorder.faults.pending()

    def reset(self) -> None:
        """Forget faults, received mail and counters (for a server shared between tests)."""
        self._recorder.reset()

    @property
    def received(self) -> list[Received]:
        with self._recorder._changed:
            return list(self._recorder.received)

    @property
    def commands(self) -> list[str]:
        """The verbs of every MAIL, RCPT, DATA, RSET and QUIT command received, in order."""
        with self._recorder._changed:
            return list(self._recorder.commands)

    @property
    def connections(self) -> int:
        return self._recorder.connections

    @property
    def auth_attempts(self) -> int:
        """AUTH commands that came with credentials, right or wrong."""
        return self._recorder.auth_attempts

    @property
    def connections_closed(self) -> int:
        """Connections that have ended (the server saw the client leave, or hung up)."""
        return self._recorder.closed

    @property
    def transactions_attempted(self) -> int:
        """MAIL commands seen from authorised clients, whatever became of them."""
        return self._recorder.transactions

    def wait_for_count(self, n: int, timeout: float = 30) -> list[Received]:
        """Wait until at least `n` messages were accepted; return all received so far."""
        return self._recorder.wait_for_count(n, timeout)

    def wait_for(self, predicate: Callable[[], bool], timeout: float = 30, what: str = "") -> None:
        """Poll any condition on this server (e.g. on `connections`)."""
        wait_for(predicate, timeout, what or "a condition on the SMTP server")


DEFAULT_PROVIDER_REPLY = "421 4.7.0 invalid sender domain, possibly misconfigured"


class FakeProvider(RecordingSmarthost):
    """A provider's MX that turns every delivery away with one reply at one stage,
    until `accept_all()`; then it records mail like a smarthost."""

    def __init__(
        self,
        reply: str = DEFAULT_PROVIDER_REPLY,
        stage: Stage = "MAIL",
        *,
        hostname: str = "mx.provider.test",
        **options: Any,
    ) -> None:
        super().__init__(hostname=hostname, **options)
        self._initial = (reply, stage)
        self.set_reply(reply, stage)

    def set_reply(self, reply: str, stage: Stage = "MAIL") -> None:
        """Answer every delivery with `reply` at `stage` from now on."""
        self.clear_faults()
        self.script(Fault(stage, reply, times=None))

    def accept_all(self) -> None:
        """Accept and record every delivery from now on."""
        self.clear_faults()

    def reset(self) -> None:
        """Back to refusing with the reply and stage it was made with; forget all mail."""
        super().reset()
        self.set_reply(*self._initial)
