"""`scan` reads the deferred queue's files itself: exactly what Postfix's showq lists.

A real Postfix holds mail deferred at RCPT by a fake provider, refused by a closed port,
and partly delivered to a recording server (a done recipient in the queue file); one
message has the null sender. Every test holds the reading of the files (in two
processes, more messages than rescue.postfix.deferred_files.MIN_SPLIT, or one) against
`postqueue -j` at that moment, and scan's output against its output from showq's listing.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from rescue.cli.scan_run import ScanOptions, run_scan
from rescue.config import Config, load_config
from rescue.model import QueuedMessage
from rescue.postfix import deferred_files
from rescue.postfix.commands import Postfix
from rescue.postfix.deferred_files import MIN_SPLIT
from rescue.postfix.files_listing import FilesListing, dirs_of
from rescue.postfix.listing import parse_listing
from tests.integration.rescue_cli import Rescue, smarthost_entry
from tests.lab.postfix import PostfixLab
from tests.lab.smtpd import FakeProvider, RecordingSmarthost
from tests.lab.submission import Submission
from tests.lab.system import free_port

MESSAGES = MIN_SPLIT + 40
REPLY = "450 4.2.0 <%s>: Recipient address rejected: try again later"
# Every message dated back into qshape's 160-320 minute column: scans minutes apart agree.
AGE_MINUTES = 240


def recipients(n: int) -> list[str]:
    found = [f"u{n}@slow.test"]
    if n % 5 == 0:
        found.append(f"v{n}@closed.test")
    if n % 7 == 0:
        found.append(f"w{n}@ok.test")  # delivered: a done recipient in the queue file
    return found


@pytest.fixture(scope="module")
def lab(module_lab_root: Path) -> Iterator[PostfixLab]:
    with (
        FakeProvider("450 4.2.0 try again later", "RCPT") as slow,
        RecordingSmarthost() as accepting,
    ):
        transports = {
            "slow.test": slow.next_hop,
            "ok.test": accepting.next_hop,
            "closed.test": f"smtp:[127.0.0.1]:{free_port()}",
        }
        with PostfixLab(module_lab_root / "postfix", transports=transports) as postfix:
            submissions = [
                Submission(f"shop{n % 3}@src.test", recipients(n), b"Subject: hi\n\nHi\n")
                for n in range(MESSAGES)
            ]
            submissions.append(Submission("", ["bounce@slow.test"], b"Subject: b\n\nB\n"))
            ids = postfix.submit_many(submissions, sessions=4)
            postfix.wait_deferred(len(submissions))
            arrived = int(time.time()) - AGE_MINUTES * 60
            for queue_id in ids:
                postfix.set_arrival(queue_id, arrived)
            yield postfix


@pytest.fixture(scope="module")
def rescue(tmp_path_factory: pytest.TempPathFactory, lab: PostfixLab) -> Rescue:
    return Rescue(
        tmp_path_factory.mktemp("scan-files"),
        lab,
        smarthosts=[smarthost_entry("relay", free_port())],
        extra="[dns]\nenabled = false\n",
    )


@pytest.fixture(scope="module")
def cfg(rescue: Rescue) -> Config:
    return load_config(rescue.write_config())


def showq_deferred(lab: PostfixLab) -> list[QueuedMessage]:
    """What `postqueue -j` lists of the deferred queue, parsed as scan parses it."""
    out = subprocess.run(
        [str(lab.command_dir / "postqueue"), "-c", str(lab.config_dir), "-j"],
        capture_output=True,
        check=True,
    ).stdout
    listed = list(parse_listing(out.splitlines()))
    assert all(isinstance(m, QueuedMessage) for m in listed)
    return [m for m in listed if isinstance(m, QueuedMessage) and m.queue_name == "deferred"]


def listed_from_files(cfg: Config) -> list[QueuedMessage] | None:
    files = FilesListing(dirs_of(cfg.postfix))
    try:
        return files.messages()
    finally:
        files.cancel()


def scan_output(cfg: Config, capsys: pytest.CaptureFixture[str], *, showq: bool) -> str:
    """`scan --reasons`'s and `scan --by domain`'s output, from the files or from showq."""
    printed = []
    for options in (ScanOptions(show_reasons=True, no_dns=True), ScanOptions(by="domain")):
        listing = Postfix(cfg.postfix).listing() if showq else None
        run_scan(cfg, options, listing)
        printed.append(capsys.readouterr().out)
    return "\n".join(printed)


@pytest.mark.parametrize("split", [True, False])
def test_the_files_list_what_showq_lists(
    lab: PostfixLab, cfg: Config, split: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Split: two helper processes read half of the files each; else one reads them all.
    if not split:
        monkeypatch.setattr(deferred_files, "MIN_SPLIT", MESSAGES + 2)
    from_files = listed_from_files(cfg)
    assert from_files == showq_deferred(lab)  # the same messages, in the same order
    assert len(from_files) == MESSAGES + 1
    by_id = {m.queue_id: m for m in from_files}
    listed = {r.address: r for m in from_files for r in m.recipients}
    assert not any(address.endswith("@ok.test") for address in listed)  # delivered
    assert "try again later" in listed["u7@slow.test"].delay_reason
    assert "refused" in listed["v5@closed.test"].delay_reason
    assert [m.sender for m in by_id.values() if m.recipients[0].address == "bounce@slow.test"] == [
        ""
    ]


def test_scan_shows_the_same_from_the_files(
    cfg: Config, rescue: Rescue, capsys: pytest.CaptureFixture[str]
) -> None:
    from_files = scan_output(cfg, capsys, showq=False)
    assert from_files == scan_output(cfg, capsys, showq=True)
    assert "slow.test" in from_files
    result = rescue.run("scan", "--by", "domain")
    assert result.code == 0, result.stderr
    assert result.stdout in from_files


def test_held_mail_and_a_lost_defer_log(lab: PostfixLab, cfg: Config) -> None:
    first, second = (m.queue_id for m in showq_deferred(lab)[:2])
    assert lab.hold_ids([first]) == [first]
    # A defer log can lack recipients (delivery interrupted by a reload): showq lists
    # them from the queue file, with no reason; here one lacks all of them.
    [log] = [p for p in (lab.queue_dir / "defer").rglob(second) if p.is_file()]
    log.unlink()
    from_files = listed_from_files(cfg)
    assert from_files == showq_deferred(lab)
    assert first not in {m.queue_id for m in from_files}
    [unlogged] = [m for m in from_files if m.queue_id == second]
    assert {r.delay_reason for r in unlogged.recipients} == {""}


def test_an_address_showq_quotes_is_left_to_showq(
    lab: PostfixLab, cfg: Config, rescue: Rescue, capsys: pytest.CaptureFixture[str]
) -> None:
    queue_id = lab.submit("shop@src.test", ['"john doe"@slow.test'], b"Subject: q\n\nQ\n")

    def deferred() -> bool:
        listed = [m for m in showq_deferred(lab) if m.queue_id == queue_id]
        return bool(listed) and bool(listed[0].recipients[0].delay_reason)

    lab.wait_for(deferred, 60, f"{queue_id} deferred")
    assert listed_from_files(cfg) is None  # showq quotes it: ask showq
    # The scan still shows it: from showq's listing.
    assert scan_output(cfg, capsys, showq=False) == scan_output(cfg, capsys, showq=True)
    result = rescue.run("scan", "--by", "domain")
    assert result.code == 0, result.stderr
    header, total = result.stdout.splitlines()[:2]
    recipients = dict(zip(header.split("\t"), total.split("\t"), strict=True))["T"]
    assert int(recipients) == sum(len(m.recipients) for m in showq_deferred(lab))
