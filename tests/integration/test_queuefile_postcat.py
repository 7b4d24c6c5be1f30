"""The queue file reader held against Postfix itself: postcat, postqueue -j, defer logs.

A private Postfix instance (tests.lab) queues the tricky cases: 8-bit text, long lines,
dot lines, 50 recipients of which some were delivered, DSN parameters, the null sender,
SMTPUTF8 addresses, a message picked up from sendmail without a final newline, a held
message, and messages a milter edited (which leaves pointer records, padding and a
canceled recipient in the file). Then every queue file is read and compared byte for
byte with what `postcat -e` and `postcat -bh` print.
"""

from __future__ import annotations

import re
import socket
import socketserver
import struct
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Self

import pytest

from rescue.postfix.deferlog import delay_reasons, read_defer_log
from rescue.postfix.queuefile import QueueFile, format_envelope, read_queue_file
from tests.lab import recv_exactly
from tests.lab.postfix import PostfixLab
from tests.lab.smtpd import FakeProvider, RecordingSmarthost

pytestmark = pytest.mark.postfix

QUEUES = ("incoming", "active", "deferred", "hold")
DEFERRED_DOMAIN = "provider.test"
ACCEPTED_DOMAIN = "accept.test"
HEADER = b"From: Sender <sender@src.test>\nTo: someone@provider.test\nSubject: test\n"


# -- a milter that edits messages on request -------------------------------------------


def _packet(command: bytes, data: bytes = b"") -> bytes:
    return struct.pack(">I", len(data) + 1) + command + data


def _edit_replies(request: bytes) -> list[bytes]:
    """Milter replies for edits named in an X-Milter-Test header, ';' separated:
    addhdr NAME=VALUE, inshdr INDEX NAME=VALUE, chghdr NAME INDEX=VALUE, addrcpt ADDR,
    addrcptpar ADDR ARGS, delrcpt <ADDR>, from ADDR, body TEXT (\\n for line breaks)."""
    replies = []
    for edit in filter(None, (part.strip() for part in request.split(b";"))):
        op, _, arg = edit.partition(b" ")
        if op == b"addhdr":
            name, _, value = arg.partition(b"=")
            replies.append(_packet(b"h", name + b"\0" + value + b"\0"))
        elif op == b"inshdr":
            index, _, header = arg.partition(b" ")
            name, _, value = header.partition(b"=")
            position = struct.pack(">I", int(index))
            replies.append(_packet(b"i", position + name + b"\0" + value + b"\0"))
        elif op == b"chghdr":
            name, _, rest = arg.partition(b" ")
            index, _, value = rest.partition(b"=")
            position = struct.pack(">I", int(index))
            replies.append(_packet(b"m", position + name + b"\0" + value + b"\0"))
        elif op == b"addrcpt":
            replies.append(_packet(b"+", arg + b"\0"))
        elif op == b"addrcptpar":
            address, _, args = arg.partition(b" ")
            replies.append(_packet(b"2", address + b"\0" + args + b"\0"))
        elif op == b"delrcpt":
            replies.append(_packet(b"-", arg + b"\0"))
        elif op == b"from":
            replies.append(_packet(b"e", arg + b"\0"))
        elif op == b"body":
            replies.append(_packet(b"b", arg.replace(b"\\n", b"\r\n")))
    return replies


class _MilterSession(socketserver.BaseRequestHandler):
    """One SMTP session's milter conversation (protocol version 6, every step replied)."""

    def handle(self) -> None:
        sock: socket.socket = self.request
        edits: list[bytes] = []
        while (size := recv_exactly(sock, 4)) is not None:
            packet = recv_exactly(sock, struct.unpack(">I", size)[0])
            if not packet:
                return
            command, data = packet[:1], packet[1:]
            if command == b"O":  # negotiate: all edit actions, no protocol steps skipped
                sock.sendall(_packet(b"O", struct.pack(">III", 6, 0x1FF, 0)))
            elif command == b"Q":
                return
            elif command in (b"D", b"A"):  # macros and abort get no reply
                continue
            else:
                if command == b"L":
                    name, value = data.split(b"\0")[:2]
                    if name.lower() == b"x-milter-test":
                        edits = _edit_replies(value)
                elif command == b"E":
                    sock.sendall(b"".join(edits))
                    edits = []
                sock.sendall(_packet(b"c"))


class Milter:
    """A milter on 127.0.0.1 in a thread; `socket` is its Postfix milter address."""

    def __init__(self) -> None:
        self._server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), _MilterSession)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def socket(self) -> str:
        return f"inet:127.0.0.1:{self._server.server_address[1]}"

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._server.shutdown()
        self._server.server_close()


# -- the queue ----------------------------------------------------------------------------


@dataclass
class Queue:
    lab: PostfixLab
    ids: dict[str, str]  # case name -> queue id

    def files(self) -> dict[str, Path]:
        """Every queue file, by queue id."""
        return {
            path.name: path
            for name in QUEUES
            for path in (self.lab.queue_dir / name).rglob("*")
            if path.is_file()
        }

    def read(self, case: str) -> QueueFile:
        return read_queue_file(self.files()[self.ids[case]])


def _submit_all(lab: PostfixLab) -> dict[str, str]:
    deferred = [f"d{i}@{DEFERRED_DOMAIN}" for i in range(25)]
    accepted = [f"a{i}@{ACCEPTED_DOMAIN}" for i in range(25)]
    tricky_body = b"".join(
        line + b"\n"
        for line in (
            b"8-bit: \xe4\xf6\xfc \xc3\xa4\xc3\xb6 \xff",
            b"x" * 5000,
            b"y" * 2048,
            b"z" * 4096,
            b".starts with a dot",
            b"..two dots",
            b".",
            b"",
            b"",
            b"\ttab and trailing space ",
            b"last line",
        )
    )
    ids = {
        "tricky": lab.submit(
            "sender@src.test", [f"t@{DEFERRED_DOMAIN}"], HEADER + b"\n" + tricky_body
        ),
        "many": lab.submit(
            "dsn@src.test",
            [r for pair in zip(accepted, deferred, strict=True) for r in pair],
            HEADER + b"\nfifty recipients\n",
            dsn_notify="SUCCESS,DELAY",
            dsn_orcpt={r: f"rfc822;orig-{r.split('@')[0]}+2Bx@example.com" for r in deferred},
            envid="envelope+2Bid",
            ret="HDRS",
        ),
        "never": lab.submit(
            "n@src.test",
            [f"never@{DEFERRED_DOMAIN}"],
            HEADER + b"\nnever tell\n",
            dsn_notify="NEVER",
            ret="FULL",
        ),
        "null": lab.submit("", [f"bounce@{DEFERRED_DOMAIN}"], HEADER + b"\na bounce\n"),
        "utf8": lab.submit(
            "j\u00f6rg@src.test",
            [f"m\u00fcller@{DEFERRED_DOMAIN}"],
            "From: j\u00f6rg@src.test\nSubject: \u00fcber\n\nGr\u00fc\u00dfe\n".encode(),
        ),
        "milter": lab.submit(
            "sender@src.test",
            [f"one@{DEFERRED_DOMAIN}", f"two@{DEFERRED_DOMAIN}", f"three@{ACCEPTED_DOMAIN}"],
            (
                "From: sender@src.test\nSubject: original\nX-Milter-Test: addhdr X-Added=yes;"
                " inshdr 0 X-First=top; chghdr Subject 1=changed subject;"
                f" addrcpt added@{DEFERRED_DOMAIN}; addrcptpar par@{DEFERRED_DOMAIN} NOTIFY=NEVER;"
                f" delrcpt <two@{DEFERRED_DOMAIN}>; from changed@src.test\n"
                "\nbody line\n" + "w" * 3000 + "\n"
            ).encode(),
        ),
        "body": lab.submit(
            "sender@src.test",
            [f"body@{DEFERRED_DOMAIN}"],
            b"Subject: replaced body\nX-Milter-Test: body new body\\n.dotted\\n\\nend;"
            b" addhdr X-B=1\n\nold body\n",
        ),
        "held": lab.submit("h@src.test", [f"held@{DEFERRED_DOMAIN}"], HEADER + b"\nheld\n"),
    }
    # Local submission goes through pickup, which keeps a last line that has no newline;
    # -i: a line with a single dot is text, not the end of the message.
    sendmail = [str(lab.command_dir / "sendmail"), "-C", str(lab.config_dir), "-i"]
    sendmail += ["-f", "local@src.test", f"p@{DEFERRED_DOMAIN}"]
    subprocess.run(sendmail, input=b"Subject: pickup\n\n.\n..dots\nno final newline", check=True)
    return ids


@pytest.fixture(scope="module")
def queue(module_lab_root: Path) -> Iterator[Queue]:
    with FakeProvider() as provider, RecordingSmarthost() as accepting, Milter() as milter:
        lab = PostfixLab(
            module_lab_root / "postfix",
            name="queuefile",
            transports={DEFERRED_DOMAIN: provider.next_hop, ACCEPTED_DOMAIN: accepting.next_hop},
            settings={"smtpd_milters": milter.socket, "milter_default_action": "tempfail"},
        )
        with lab:
            ids = _submit_all(lab)
            lab.wait_deferred(len(ids) + 1)  # the sendmail message has no id here
            pickup = {e["queue_id"] for e in lab.queue()} - set(ids.values())
            ids["pickup"] = pickup.pop()
            assert lab.hold_ids([ids["held"]]) == [ids["held"]]
            yield Queue(lab, ids)


# -- the oracle comparisons -------------------------------------------------------------------


def test_every_queue_file_reads_as_postcat_prints_it(queue: Queue) -> None:
    files = queue.files()
    assert sorted(files) == sorted(e["queue_id"] for e in queue.lab.queue())
    mismatches = []
    for queue_id, path in sorted(files.items()):
        qf = read_queue_file(path)
        label = str(path.relative_to(queue.lab.queue_dir))
        envelope = format_envelope(qf, label).encode("utf-8", "surrogateescape")
        if envelope != queue.lab.postcat(queue_id, "-e"):
            mismatches.append(f"{queue_id} envelope")
        if qf.content != queue.lab.postcat(queue_id, "-bh"):
            mismatches.append(f"{queue_id} content")
    assert not mismatches
    assert len(files) == len(queue.ids)


def test_pending_recipients_and_reasons_are_what_postqueue_shows(queue: Queue) -> None:
    files = queue.files()
    for entry in queue.lab.queue():
        qf = read_queue_file(files[entry["queue_id"]])
        assert qf.sender == ("" if entry["sender"] == "MAILER-DAEMON" else entry["sender"])
        assert int(qf.arrival_time) == entry["arrival_time"]
        assert qf.message_size == entry["message_size"]
        log_path = queue.lab.queue_dir / "defer" / qf.queue_id[0] / qf.queue_id
        log = read_defer_log(log_path)
        shown = sorted((r["address"], r.get("delay_reason")) for r in entry["recipients"])
        mine = sorted((r.address, log[r.address].reason) for r in qf.pending())
        assert mine == shown, entry["queue_id"]
        for rcpt in qf.pending():  # the defer log names each recipient record by offset
            assert log[rcpt.address].offset == rcpt.offset
            assert log[rcpt.address].status.startswith("4.")


def test_done_recipients_and_dsn_parameters(queue: Queue) -> None:
    qf = queue.read("many")
    assert len(qf.recipients) == 50
    done = {r.address for r in qf.recipients if r.done}
    assert done == {f"a{i}@{ACCEPTED_DOMAIN}" for i in range(25)}  # delivered: "D" records
    pending = qf.pending()
    assert {r.address for r in pending} == {f"d{i}@{DEFERRED_DOMAIN}" for i in range(25)}
    assert (qf.envid, qf.ret) == ("envelope+id", 2)  # stored xtext-decoded
    assert all(r.notify == 10 for r in qf.recipients)  # SUCCESS|DELAY as a bitmask
    assert pending[0].dsn_orcpt == "rfc822;orig-d0+x@example.com"
    envelope = qf.envelope(delay_reasons(read_defer_log(_defer_log(queue, qf.queue_id))))
    assert envelope.ret == "HDRS"
    assert {r.notify for r in envelope.recipients} == {"SUCCESS,DELAY"}
    assert all(r.delay_reason.startswith("host 127.0.0.1") for r in envelope.recipients)
    never = queue.read("never")
    assert (never.recipients[0].notify, never.ret) == (1, 1)
    assert never.envelope().recipients[0].notify == "NEVER"


def test_special_senders_and_addresses(queue: Queue) -> None:
    assert queue.read("null").sender == ""
    utf8 = queue.read("utf8")
    assert (utf8.sender, utf8.recipients[0].address) == (
        "j\u00f6rg@src.test",
        f"m\u00fcller@{DEFERRED_DOMAIN}",
    )
    assert "\u00fcber".encode() in utf8.content


def test_long_lines_and_dots_come_out_whole(queue: Queue) -> None:
    content = queue.read("tricky").content
    for line in (b"x" * 5000, b"y" * 2048, b"z" * 4096, b".", b"..two dots", b"8-bit: \xe4"):
        assert b"\n" + line in content
    assert content.endswith(b"\n\n\n\ttab and trailing space \nlast line\n")


def test_pickup_message_without_final_newline(queue: Queue) -> None:
    qf = queue.read("pickup")
    assert qf.content.endswith(b"\n.\n..dots\nno final newline\n")
    assert qf.sender == "local@src.test"


def test_held_message_reads_from_hold(queue: Queue) -> None:
    path = queue.files()[queue.ids["held"]]
    assert path.relative_to(queue.lab.queue_dir).parts[0] == "hold"
    assert read_queue_file(path).pending()[0].address == f"held@{DEFERRED_DOMAIN}"


def test_milter_edits_are_followed_through_pointer_records(queue: Queue) -> None:
    path = queue.files()[queue.ids["milter"]]
    raw = path.read_bytes()
    assert _real_pointers(raw), "the milter should have made Postfix write pointer records"
    qf = read_queue_file(path)
    assert qf.sender == "changed@src.test"
    assert [(r.address, r.done, r.notify) for r in qf.recipients] == [
        (f"one@{DEFERRED_DOMAIN}", False, None),
        (f"two@{DEFERRED_DOMAIN}", True, None),  # deleted by the milter: canceled, "/"
        (f"three@{ACCEPTED_DOMAIN}", True, None),  # delivered: "D"
        (f"added@{DEFERRED_DOMAIN}", False, None),
        (f"par@{DEFERRED_DOMAIN}", False, 1),
    ]
    assert qf.content.startswith(b"X-First: top\n")
    assert b"\nSubject: changed subject\n" in qf.content
    assert b"\nX-Added: yes\n\nbody line\n" in qf.content
    body = queue.read("body").content
    assert body.endswith(b"\nX-B: 1\n\nnew body\n.dotted\n\nend\n")


def _defer_log(queue: Queue, queue_id: str) -> Path:
    return queue.lab.queue_dir / "defer" / queue_id[0] / queue_id


def _real_pointers(raw: bytes) -> list[bytes]:
    """Pointer records that point somewhere (cleanup writes "%15ld", 0 for a dummy)."""
    return re.findall(rb"p\x0f(?= {0,14}[1-9])[ 0-9]{15}", raw)
