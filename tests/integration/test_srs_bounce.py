"""A bounce to a rerouted message's SRS sender finds its way back, through a real Postfix.

Postfix receives the bounce for the SRS domain and asks `queue-rescue srs serve` (its
socketmap, as recipient_canonical_maps) what the address really is; the bounce is then
delivered to the original sender. A forged SRS address is never rewritten.
"""

from __future__ import annotations

import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from rescue.srs.rewriter import SrsRewriter
from tests.integration.rescue_cli import SRS_DOMAIN, SRS_SECRET, Rescue, smarthost_entry
from tests.lab import wait_for
from tests.lab.postfix import PostfixLab
from tests.lab.smtpd import RecordingSmarthost
from tests.lab.system import new_lab_root, remove_lab_root

pytestmark = pytest.mark.postfix

ORIGINAL_SENDER = "alice@shop.test"

DSN = (
    b"From: MAILER-DAEMON@mx.kunde1.test (Mail Delivery System)\n"
    b"Subject: Undelivered Mail Returned to Sender\n"
    b"MIME-Version: 1.0\n"
    b'Content-Type: multipart/report; report-type=delivery-status; boundary="B"\n\n'
    b"--B\nContent-Type: text/plain\n\nYour message could not be delivered.\n\n"
    b"--B\nContent-Type: message/delivery-status\n\n"
    b"Reporting-MTA: dns; mx.kunde1.test\n\n"
    b"Final-Recipient: rfc822; nobody@kunde1.test\nAction: failed\nStatus: 5.1.1\n\n"
    b"--B--\n"
)


@pytest.fixture
def mailhost() -> Iterator[tuple[PostfixLab, RecordingSmarthost, RecordingSmarthost, Path]]:
    """A Postfix that receives bounces for the SRS domain, with our socketmap server."""
    root = new_lab_root("bounce-")
    socket_path = root / "srs.sock"
    originals = RecordingSmarthost().start()  # the original senders' mail server
    srs_domain = RecordingSmarthost().start()  # where unrewritten SRS-domain mail would go
    lab = PostfixLab(
        root / "postfix",
        transports={"shop.test": originals.next_hop, SRS_DOMAIN: srs_domain.next_hop},
        name="bounce",
        settings={
            "recipient_canonical_maps": f"socketmap:unix:{socket_path}:reverse",
            "recipient_canonical_classes": "envelope_recipient, header_recipient",
        },
    )
    rescue = Rescue(root / "rescue", lab, smarthosts=[smarthost_entry("relay1", 25)])
    server = subprocess.Popen(
        [*rescue.command("srs", "serve", "--listen", f"unix:{socket_path}")],
        cwd=Path(__file__).parents[2],
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_for(socket_path.exists, 30, "the socketmap server's socket")
        lab.start()
        yield lab, originals, srs_domain, socket_path
    finally:
        lab.stop()
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=30)
        originals.stop()
        srs_domain.stop()
        remove_lab_root(root)


def test_a_bounce_reaches_the_original_sender(
    mailhost: tuple[PostfixLab, RecordingSmarthost, RecordingSmarthost, Path],
) -> None:
    lab, originals, srs_domain, _ = mailhost
    srs_sender = SrsRewriter(domain=SRS_DOMAIN, secrets=[SRS_SECRET]).forward(ORIGINAL_SENDER)
    assert srs_sender.startswith("SRS0=") and srs_sender.endswith("@" + SRS_DOMAIN)

    lab.submit("", [srs_sender], DSN)

    [got] = originals.wait_for_count(1, timeout=60)
    assert got.rcpt_tos == (ORIGINAL_SENDER,)
    assert got.mail_from == ""  # still a bounce: the null sender
    assert b"Final-Recipient: rfc822; nobody@kunde1.test" in got.content
    assert srs_domain.received == []


def test_a_forged_srs_address_is_not_rewritten(
    mailhost: tuple[PostfixLab, RecordingSmarthost, RecordingSmarthost, Path],
) -> None:
    lab, originals, srs_domain, _ = mailhost
    genuine = SrsRewriter(domain=SRS_DOMAIN, secrets=[SRS_SECRET]).forward("victim@elsewhere.test")
    forged = SrsRewriter(domain=SRS_DOMAIN, secrets=["someone-elses-secret-123"]).forward(
        "victim@elsewhere.test"
    )
    assert forged != genuine

    lab.submit("", [forged], DSN)

    [got] = srs_domain.wait_for_count(1, timeout=60)
    assert got.rcpt_tos == (forged,)  # not turned into victim@elsewhere.test
    assert originals.received == []


def test_the_server_answers_postfix_as_it_runs(
    mailhost: tuple[PostfixLab, RecordingSmarthost, RecordingSmarthost, Path],
) -> None:
    lab, _, _, socket_path = mailhost
    srs_sender = SrsRewriter(domain=SRS_DOMAIN, secrets=[SRS_SECRET]).forward(ORIGINAL_SENDER)
    query = subprocess.run(
        [
            str(lab.command_dir / "postmap"),
            "-c",
            str(lab.config_dir),
            "-q",
            srs_sender,
            f"socketmap:unix:{socket_path}:reverse",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert query.returncode == 0, query.stderr
    assert query.stdout.strip() == ORIGINAL_SENDER
