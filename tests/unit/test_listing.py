"""Parsing `postqueue -j`: good lines become messages, bad ones are reported, never guessed."""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from rescue.config import PostfixConfig
from rescue.model import QueuedMessage
from rescue.postfix.commands import Postfix, follow
from rescue.postfix.listing import BadLine, parse_listing


def line(**overrides: object) -> bytes:
    obj: dict[str, object] = {
        "queue_name": "deferred",
        "queue_id": "4F2A81C0D3",
        "arrival_time": 1700000000,
        "message_size": 1234,
        "forced_expire": False,
        "sender": "alice@example.com",
        "recipients": [
            {"address": "bob@kunde1.test", "delay_reason": "host x[1.2.3.4] said: 421 no"}
        ],
    }
    obj.update(overrides)
    return json.dumps(obj).encode() + b"\n"


def test_good_line() -> None:
    [msg] = list(parse_listing([line()]))
    assert isinstance(msg, QueuedMessage)
    assert msg.queue_id == "4F2A81C0D3"
    assert msg.recipients[0].domain == "kunde1.test"
    assert msg.key == "4F2A81C0D3:1700000000:1234"


def test_null_sender_and_recipient_without_reason() -> None:
    [msg] = list(parse_listing([line(sender="", recipients=[{"address": "x@y.test"}])]))
    assert isinstance(msg, QueuedMessage)
    assert msg.sender == "" and msg.recipients[0].delay_reason == ""


def test_garbage_truncated_and_wrong_types_are_reported_with_line_numbers() -> None:
    good = line(queue_id="AAAAA11111")
    truncated = line(queue_id="BBBBB22222")[:60]
    items = list(
        parse_listing(
            [good, b"garbage\n", truncated, line(recipients="nope"), b"\n", b"[1,2]\n", good]
        )
    )
    bad = [i for i in items if isinstance(i, BadLine)]
    ok = [i for i in items if isinstance(i, QueuedMessage)]
    assert [b.number for b in bad] == [2, 3, 4, 6]
    assert bad[1].queue_id == "BBBBB22222"
    assert len(ok) == 2


def test_deeply_nested_json_is_a_bad_line_not_a_crash() -> None:
    nested = b"[" * 100_000 + b"]" * 100_000
    found = list(parse_listing([nested, line()]))
    assert isinstance(found[0], BadLine) and found[0].number == 1
    assert isinstance(found[1], QueuedMessage) and found[1].queue_id == "4F2A81C0D3"


def test_non_utf8_address_survives() -> None:
    raw = line().replace(b"alice@example.com", b"al\xe9ce@example.com")
    [msg] = list(parse_listing([raw]))
    assert isinstance(msg, QueuedMessage)
    assert msg.sender.encode("utf-8", "surrogateescape") == b"al\xe9ce@example.com"


def test_bad_queue_id_is_refused() -> None:
    [item] = list(parse_listing([line(queue_id="../../etc")]))
    assert isinstance(item, BadLine)


def follow_command(script: str) -> list[bytes]:
    with tempfile.TemporaryFile() as spill:
        proc = subprocess.Popen(["sh", "-c", script], stdout=spill)
        try:
            return list(follow(proc, spill))
        finally:
            proc.wait()


def test_follow_reads_a_listing_while_it_is_written() -> None:
    # Lines arrive in pieces and with pauses; the last one has no newline.
    script = "printf 'one\\ntw'; sleep 0.2; printf 'o\\n'; sleep 0.1; printf 'three'"
    assert follow_command(script) == [b"one", b"two", b"three"]


def test_follow_of_a_command_that_writes_nothing() -> None:
    assert follow_command("exit 3") == []


def test_follow_keeps_up_with_a_long_listing() -> None:
    # More than a pipe would hold (64 KiB): the writer never waits for the reader.
    script = 'i=0; while [ $i -lt 3000 ]; do echo "line $i $0"; i=$((i+1)); done'
    script = f"sh -c '{script}' {'x' * 28}"
    lines = follow_command(script)
    assert len(lines) == 3000
    assert lines[0] == b"line 0 xxxxxxxxxxxxxxxxxxxxxxxxxxxx"
    assert lines[-1] == b"line 2999 xxxxxxxxxxxxxxxxxxxxxxxxxxxx"


def test_closing_a_listing_before_reading_it_stops_postqueue(tmp_path: Path) -> None:
    # A stand-in postqueue that would run for a minute; closing the listing must end it.
    pid_file = tmp_path / "pid"
    postqueue = tmp_path / "postqueue"
    postqueue.write_text(
        f"#!/bin/sh\necho $$ > {pid_file}.new\nmv {pid_file}.new {pid_file}\nexec sleep 60\n"
    )
    postqueue.chmod(0o755)
    listing = Postfix(PostfixConfig(config_dir=tmp_path, command_dir=tmp_path)).listing()
    deadline = time.monotonic() + 30
    while not pid_file.exists():
        assert time.monotonic() < deadline, "postqueue did not start"
        time.sleep(0.01)
    pid = int(pid_file.read_text())
    listing.close()  # type: ignore[attr-defined]  (a generator, typed as an iterator)
    with pytest.raises(ProcessLookupError):  # killed and reaped
        os.kill(pid, 0)
