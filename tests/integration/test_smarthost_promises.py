"""What the README promises about talking to a smarthost (Smarthosts: failover, retries,
faults), against real aiosmtpd servers on loopback; no Postfix needed.

DSN parameters go on only when the smarthost offers DSN; a certificate for another host
name is refused; AUTH is never attempted without TLS, even when a configuration that
asks for it gets past the config check.
"""

from __future__ import annotations

from pathlib import Path

from rescue.config import Secret
from rescue.errors import DeliveryError
from rescue.model import Envelope, Recipient
from rescue.smarthost.session import Accepted
from tests.integration.test_smarthost_faults import deliver, host
from tests.lab.certs import LabCerts, default_certs
from tests.lab.smtpd import RecordingSmarthost

DSN_ENVELOPE = Envelope(
    queue_id="ABCDEF1234",
    sender="SRS0=x@srs.test",
    recipients=(
        Recipient("bob@kunde1.test", orig_rcpt="rfc822;Bob@Kunde1.test", notify="SUCCESS,FAILURE"),
        Recipient("eve@kunde1.test", notify="NEVER"),
    ),
    content=b"From: a@example.com\nSubject: t\n\nhello\n",
    envid="env42",
    ret="HDRS",
)


def test_dsn_parameters_go_on_when_the_smarthost_offers_dsn() -> None:
    with RecordingSmarthost(advertise_dsn=True) as server:
        result, _ = deliver([host("relay1", server.port)], DSN_ENVELOPE)
        assert isinstance(result, Accepted)
        [got] = server.received
    assert {"RET=HDRS", "ENVID=env42"} <= set(got.mail_options)
    assert [set(options) for options in got.rcpt_options] == [
        {"NOTIFY=SUCCESS,FAILURE", "ORCPT=rfc822;Bob@Kunde1.test"},
        {"NOTIFY=NEVER"},
    ]


def test_dsn_parameters_are_left_out_when_the_smarthost_does_not_offer_dsn() -> None:
    with RecordingSmarthost(advertise_dsn=False) as server:
        result, _ = deliver([host("relay1", server.port)], DSN_ENVELOPE)
        assert isinstance(result, Accepted)
        [got] = server.received
    assert got.rcpt_tos == ("bob@kunde1.test", "eve@kunde1.test")
    assert not [o for o in got.mail_options if o.startswith(("RET=", "ENVID="))]
    assert got.rcpt_options == ((), ())
    assert got.content.endswith(b"\r\nhello\r\n")


def test_a_certificate_for_another_host_name_is_refused(tmp_path: Path) -> None:
    # Signed by the CA the client trusts, but for elsewhere.test, not 127.0.0.1.
    elsewhere = LabCerts.create(tmp_path / "certs", names=("elsewhere.test",))
    with RecordingSmarthost(starttls=True, certs=elsewhere) as server:
        cfg = host("relay1", server.port, tls="starttls", ca_file=elsewhere.ca_file)
        result, attempts = deliver([cfg], DSN_ENVELOPE)
        assert isinstance(result, DeliveryError)
        assert not result.transient and result.stage == "TLS handshake"
        assert "certificate verify failed" in str(result)
        assert "mismatch" in str(result).lower()
        assert attempts == ["relay1"]
        assert server.received == [] and server.transactions_attempted == 0
    # The same client setup takes a certificate that names the host.
    right = default_certs()
    with RecordingSmarthost(starttls=True, certs=right) as server:
        cfg = host("relay1", server.port, tls="starttls", ca_file=right.ca_file)
        assert isinstance(deliver([cfg], DSN_ENVELOPE)[0], Accepted)


def test_auth_is_never_attempted_without_tls() -> None:
    # The config check refuses username without TLS; a SmarthostConfig made in code
    # skips it, and the session still refuses before a password could leave.
    with RecordingSmarthost(require_auth=("rescue", "pw-in-clear")) as server:
        cfg = host(
            "relay1", server.port, tls="none", username="rescue", password=Secret("pw-in-clear")
        )
        result, attempts = deliver([cfg], DSN_ENVELOPE)
        assert isinstance(result, DeliveryError)
        assert result.stage == "AUTH" and not result.transient
        assert "refusing AUTH without TLS" in str(result)
        assert attempts == ["relay1"]
        assert server.auth_attempts == 0
        assert server.received == []
