"""Smarthost faults against a scripted fake smarthost (a real aiosmtpd server on loopback).

Each fault says whether retrying can help, whether another smarthost is tried,
and whether the smarthost may have the message anyway.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator

import pytest

from rescue.config import RetryConfig, Secret, SmarthostConfig
from rescue.errors import DeliveryError
from rescue.model import Envelope, Recipient
from rescue.smarthost.pool import Dispatcher
from rescue.smarthost.session import Accepted
from tests.lab.certs import default_certs
from tests.lab.faults import Fault
from tests.lab.smtpd import RecordingSmarthost
from tests.lab.system import free_port

FAST_RETRY = RetryConfig(attempts=3, initial_wait=0.01, max_wait=0.05)
# A backoff so long that a test waiting for it could not pass unnoticed.
RESTING_BACKOFF = 60.0
CONTENT = b"From: a@example.com\nSubject: t\n\nhello\n"


def envelope(
    *recipients: str, content: bytes = CONTENT, sender: str = "SRS0=x@srs.test"
) -> Envelope:
    return Envelope(
        queue_id="ABCDEF1234",
        sender=sender,
        recipients=tuple(Recipient(r) for r in recipients or ("bob@kunde1.test",)),
        content=content,
    )


def host(name: str, port: int, **extra: object) -> SmarthostConfig:
    values: dict[str, object] = {
        "name": name,
        "host": "127.0.0.1",
        "port": port,
        "tls": "none",
        "timeout": 2.0,
        "max_failures": 3,
        "cooldown": 60.0,
    }
    values.update(extra)
    return SmarthostConfig(**values)  # type: ignore[arg-type]


def deliver(
    hosts: list[SmarthostConfig], env: Envelope, retry: RetryConfig = FAST_RETRY
) -> tuple[Accepted | DeliveryError, list[str]]:
    attempts: list[str] = []

    async def go() -> Accepted | DeliveryError:
        dispatcher = Dispatcher(hosts, retry)
        try:
            return await dispatcher.deliver(env, env.sender, attempts.append)
        except DeliveryError as exc:
            return exc
        finally:
            await dispatcher.close()

    return asyncio.run(go()), attempts


@pytest.fixture
def smarthost() -> Iterator[RecordingSmarthost]:
    with RecordingSmarthost() as server:
        yield server


@pytest.fixture
def backup() -> Iterator[RecordingSmarthost]:
    with RecordingSmarthost() as server:
        yield server


def test_delivery_reports_the_reply(smarthost: RecordingSmarthost) -> None:
    result, attempts = deliver([host("relay1", smarthost.port)], envelope())
    assert isinstance(result, Accepted)
    assert result.reply.startswith("250 ")
    assert attempts == ["relay1"]
    [got] = smarthost.received
    assert got.rcpt_tos == ("bob@kunde1.test",)


def test_421_greeting_hands_over_to_the_next_smarthost(
    smarthost: RecordingSmarthost, backup: RecordingSmarthost
) -> None:
    smarthost.script(Fault(stage="GREETING", reply="421 4.3.2 busy, try later", times=None))
    result, attempts = deliver(
        [host("relay1", smarthost.port), host("relay2", backup.port)], envelope()
    )
    assert isinstance(result, Accepted) and result.smarthost == "relay2"
    assert attempts[:2] == ["relay1", "relay2"]
    assert smarthost.received == [] and len(backup.received) == 1


@pytest.mark.parametrize("stage", ["MAIL", "RCPT", "DATA", "EOD"])
def test_4xx_is_retried_with_backoff(smarthost: RecordingSmarthost, stage: str) -> None:
    smarthost.script(Fault(stage=stage, reply="451 4.3.0 temporary trouble", times=1))  # type: ignore[arg-type]
    result, attempts = deliver([host("relay1", smarthost.port)], envelope())
    assert isinstance(result, Accepted)
    assert attempts == ["relay1", "relay1"]
    assert len(smarthost.received) == 1


@pytest.mark.parametrize("stage", ["MAIL", "RCPT", "DATA", "EOD"])
def test_4xx_that_persists_gives_up_after_the_attempts(
    smarthost: RecordingSmarthost, stage: str
) -> None:
    smarthost.script(Fault(stage=stage, reply="451 4.3.0 temporary trouble", times=None))  # type: ignore[arg-type]
    result, attempts = deliver([host("relay1", smarthost.port)], envelope())
    assert isinstance(result, DeliveryError) and result.transient and not result.uncertain
    assert result.code == 451
    assert len(attempts) == FAST_RETRY.attempts
    assert smarthost.received == []


@pytest.mark.parametrize("stage", ["MAIL", "RCPT", "DATA", "EOD"])
def test_5xx_is_not_retried(smarthost: RecordingSmarthost, stage: str) -> None:
    smarthost.script(Fault(stage=stage, reply="554 5.7.1 refused", times=None))  # type: ignore[arg-type]
    result, attempts = deliver([host("relay1", smarthost.port)], envelope())
    assert isinstance(result, DeliveryError) and not result.transient
    assert result.code == 554
    assert attempts == ["relay1"]
    assert smarthost.received == []


def test_5xx_hands_over_to_the_next_smarthost(
    smarthost: RecordingSmarthost, backup: RecordingSmarthost
) -> None:
    smarthost.script(Fault(stage="MAIL", reply="550 5.7.1 relaying denied", times=None))
    result, _ = deliver([host("relay1", smarthost.port), host("relay2", backup.port)], envelope())
    assert isinstance(result, Accepted) and result.smarthost == "relay2"


def test_one_refused_recipient_sends_nothing_and_keeps_the_session(
    smarthost: RecordingSmarthost,
) -> None:
    smarthost.script(Fault(stage="RCPT", reply="550 5.1.1 unknown", recipient="b@kunde1.test"))

    async def go() -> tuple[object, object]:
        dispatcher = Dispatcher([host("relay1", smarthost.port)], FAST_RETRY)
        try:
            try:
                first: object = await dispatcher.deliver(
                    envelope("a@kunde1.test", "b@kunde1.test"), "s@srs.test", lambda _: None
                )
            except DeliveryError as exc:
                first = exc
            second = await dispatcher.deliver(
                envelope("c@kunde1.test"), "s@srs.test", lambda _: None
            )
            return first, second
        finally:
            await dispatcher.close()

    first, second = asyncio.run(go())
    assert isinstance(first, DeliveryError) and first.code == 550
    assert isinstance(second, Accepted)
    [got] = smarthost.received
    assert got.rcpt_tos == ("c@kunde1.test",)
    # DATA had already been accepted in the pipelined group: the session was hung up
    # before any text (so nothing reached a@), and a new one carried the next message.
    assert smarthost.connections == 2


def test_a_refused_only_recipient_keeps_the_session(smarthost: RecordingSmarthost) -> None:
    smarthost.script(Fault(stage="RCPT", reply="550 5.1.1 unknown", recipient="b@kunde1.test"))

    async def go() -> tuple[object, object]:
        dispatcher = Dispatcher([host("relay1", smarthost.port)], FAST_RETRY)
        try:
            try:
                first: object = await dispatcher.deliver(
                    envelope("b@kunde1.test"), "s@srs.test", lambda _: None
                )
            except DeliveryError as exc:
                first = exc
            second = await dispatcher.deliver(
                envelope("c@kunde1.test"), "s@srs.test", lambda _: None
            )
            return first, second
        finally:
            await dispatcher.close()

    first, second = asyncio.run(go())
    assert isinstance(first, DeliveryError) and first.code == 550 and first.stage == "RCPT TO"
    assert isinstance(second, Accepted)
    assert [r.rcpt_tos for r in smarthost.received] == [("c@kunde1.test",)]
    assert smarthost.connections == 1  # DATA was refused too: RSET kept the session


def test_connection_reset_before_data_is_retried(smarthost: RecordingSmarthost) -> None:
    smarthost.script(Fault(stage="DATA", action="disconnect", times=1))
    result, attempts = deliver([host("relay1", smarthost.port)], envelope())
    assert isinstance(result, Accepted)  # the retry on a new connection went through
    assert attempts == ["relay1", "relay1"]
    assert len(smarthost.received) == 1
    assert smarthost.connections == 2


def test_connection_reset_during_data_is_given_back(smarthost: RecordingSmarthost) -> None:
    # Once the whole text is written the client cannot tell whether the server had
    # the final dot: like Postfix, treat it as "may be sent more than once" and do
    # not send it again (the flush gives it back to Postfix).
    smarthost.script(Fault(stage="BODY", action="disconnect", times=1))
    result, attempts = deliver([host("relay1", smarthost.port)], envelope())
    assert isinstance(result, DeliveryError) and result.uncertain
    assert attempts == ["relay1"]
    assert smarthost.received == []


def test_timeout_after_end_of_data_may_be_sent_twice(smarthost: RecordingSmarthost) -> None:
    # The client's timeout is short, but long enough that only the hang can hit it.
    smarthost.script(Fault(stage="EOD", action="hang", seconds=15, times=1))
    result, attempts = deliver([host("relay1", smarthost.port, timeout=2.0)], envelope())
    assert isinstance(result, DeliveryError)
    assert result.uncertain and "may be sent more than once" in str(result)
    assert attempts == ["relay1"]  # never retried: it could deliver the message twice
    assert len(smarthost.received) == 1  # the smarthost did get it


def test_tls_handshake_failure(smarthost: RecordingSmarthost) -> None:
    # Implicit TLS against a server that speaks plain SMTP.
    result, _ = deliver([host("relay1", smarthost.port, tls="implicit")], envelope())
    assert isinstance(result, DeliveryError)
    # The server's plain "220" greeting is not a TLS record.
    assert result.stage == "TLS handshake"
    assert result.transient
    assert "wrong version number" in str(result)
    assert smarthost.received == []


def test_starttls_required_but_not_offered(smarthost: RecordingSmarthost) -> None:
    result, attempts = deliver([host("relay1", smarthost.port, tls="starttls")], envelope())
    assert isinstance(result, DeliveryError) and not result.transient
    assert "STARTTLS is required but not offered" in str(result)
    assert attempts == ["relay1"]


def test_untrusted_certificate_is_refused_and_trusted_with_ca_file() -> None:
    certs = default_certs()
    with RecordingSmarthost(starttls=True, certs=certs) as server:
        result, _ = deliver([host("relay1", server.port, tls="starttls")], envelope())
        assert isinstance(result, DeliveryError) and not result.transient
        assert "certificate" in str(result).lower()
        assert server.received == []

        wrong_ca = host("relay1", server.port, tls="starttls", ca_file=certs.other_ca_file)
        result, _ = deliver([wrong_ca], envelope())
        assert isinstance(result, DeliveryError)

        good = host("relay1", server.port, tls="starttls", ca_file=certs.ca_file)
        result, _ = deliver([good], envelope())
        assert isinstance(result, Accepted)
        assert server.received[0].tls


def deliver_with_auth(tls: str, password: str) -> tuple[RecordingSmarthost, object, list[str]]:
    """One delivery to a smarthost over `tls` that wants user rescue, password right-pw."""
    certs = default_certs()
    mode = {"implicit_tls": True} if tls == "implicit" else {"starttls": True}
    with RecordingSmarthost(**mode, certs=certs, require_auth=("rescue", "right-pw")) as server:
        cfg = host(
            "relay1",
            server.port,
            tls=tls,
            ca_file=certs.ca_file,
            username="rescue",
            password=Secret(password),
        )
        result, attempts = deliver([cfg], envelope())
    return server, result, attempts


def test_implicit_tls_and_auth() -> None:
    server, result, _ = deliver_with_auth("implicit", "right-pw")

    assert isinstance(result, Accepted)
    assert server.received[0].auth_user == "rescue"


def test_auth_refused_is_permanent() -> None:
    _, result, attempts = deliver_with_auth("starttls", "wrong-pw")

    assert isinstance(result, DeliveryError) and not result.transient
    assert result.stage == "AUTH" and result.code == 535
    assert attempts == ["relay1"]
    assert "wrong-pw" not in str(result)


def test_message_over_the_smarthosts_size_is_refused_before_sending() -> None:
    with RecordingSmarthost(size_limit=1000) as server:
        result, _ = deliver([host("relay1", server.port)], envelope(content=b"x" * 5000 + b"\n"))
        assert isinstance(result, DeliveryError) and not result.transient
        assert "exceeds the smarthost's SIZE 1000" in str(result)
        assert server.transactions_attempted == 0


def test_8bit_content_needs_8bitmime() -> None:
    with RecordingSmarthost(advertise_8bitmime=False) as server:
        result, _ = deliver(
            [host("relay1", server.port)], envelope(content=b"Subject: x\n\nK\xc3\xb6ln\n")
        )
        assert isinstance(result, DeliveryError) and not result.transient
        assert "does not offer 8BITMIME" in str(result)
        assert server.received == []


def test_utf8_address_needs_smtputf8() -> None:
    with RecordingSmarthost(advertise_smtputf8=False) as server:
        result, _ = deliver([host("relay1", server.port)], envelope("jörg@kunde1.test"))
        assert isinstance(result, DeliveryError) and not result.transient
        assert "does not offer SMTPUTF8" in str(result)
        assert server.received == []
    with RecordingSmarthost() as server:
        result, _ = deliver([host("relay1", server.port)], envelope("jörg@kunde1.test"))
        assert isinstance(result, Accepted)
        assert "SMTPUTF8" in server.received[0].mail_options
        assert server.received[0].rcpt_tos == ("jörg@kunde1.test",)


def test_a_smarthost_that_keeps_failing_rests(backup: RecordingSmarthost) -> None:
    dead = host("relay1", free_port(), max_failures=2, cooldown=60.0)
    live = host("relay2", backup.port)
    tried: list[str] = []

    async def go() -> list[object]:
        dispatcher = Dispatcher([dead, live], FAST_RETRY)
        results: list[object] = []
        try:
            for n in range(5):
                results.append(
                    await dispatcher.deliver(
                        envelope(f"u{n}@kunde1.test"), "s@srs.test", tried.append
                    )
                )
        finally:
            await dispatcher.close()
        return results

    results = asyncio.run(go())
    assert all(isinstance(r, Accepted) and r.smarthost == "relay2" for r in results)
    # relay1 was tried until it failed twice in a row, then left alone.
    assert tried.count("relay1") == 2
    assert len(backup.received) == 5


def test_every_smarthost_resting_fails_fast(smarthost: RecordingSmarthost) -> None:
    # A refused greeting is a permanent session failure: no retry, and with
    # max_failures 1 the smarthost rests at once.
    smarthost.script(Fault(stage="GREETING", reply="554 5.3.2 not now", times=None))
    refusing = host("relay1", smarthost.port, max_failures=1, cooldown=600.0)

    async def go() -> tuple[object, float]:
        retry = RetryConfig(attempts=5, initial_wait=RESTING_BACKOFF, max_wait=RESTING_BACKOFF)
        dispatcher = Dispatcher([refusing], retry)
        try:
            await dispatcher.deliver(envelope(), "s@srs.test", lambda _: None)
        except DeliveryError as first:
            assert first.stage == "greeting" and not first.transient
        start = time.monotonic()
        try:
            await dispatcher.deliver(envelope(), "s@srs.test", lambda _: None)
        except DeliveryError as second:
            return second, time.monotonic() - start
        finally:
            await dispatcher.close()
        return None, 0.0

    err, elapsed = asyncio.run(go())
    assert isinstance(err, DeliveryError) and "resting" in str(err)
    assert smarthost.connections == 1  # the resting smarthost was not asked again
    # No backoff waits while every smarthost rests. The first wait alone would be
    # RESTING_BACKOFF seconds; the bound leaves a slow machine half of that.
    assert elapsed < RESTING_BACKOFF / 2


def test_a_message_given_up_on_never_finishes_its_upload() -> None:
    # A smarthost that stops reading a large message part way (its buffers full, a slow
    # disk) until the client has given up on the answer. Closing the connection politely
    # would still send the rest and the final dot once it reads on, and it would deliver
    # a message the client released to Postfix: a copy each. The client must drop it.
    gate = threading.Event()
    content = b"Subject: big\n\n" + b"x" * 76 + b"\n"
    big = envelope(content=content * 40_000)  # 3.1 MB
    with RecordingSmarthost(receive_buffer=64 * 1024) as server:
        server.script(Fault("BODY", action="hang", gate=gate))

        async def go() -> Accepted | DeliveryError:
            dispatcher = Dispatcher([host("relay1", server.port, timeout=1.0)], FAST_RETRY)
            try:
                return await dispatcher.deliver(big, big.sender, lambda name: None)
            except DeliveryError as exc:
                return exc
            finally:
                # The smarthost reads on while this client still runs: a connection that
                # was only closed goes on sending what was buffered.
                gate.set()
                await asyncio.to_thread(
                    server.wait_for, lambda: server.connections_closed == server.connections
                )
                await dispatcher.close()

        result = asyncio.run(go())

    assert isinstance(result, DeliveryError), result
    assert server.received == []
