"""Bad input: each broken message is reported with its queue id and left in Postfix,
while the run goes on with the others."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.integration.world import World, body
from tests.lab.faults import Fault
from tests.lab.submission import Submission

pytestmark = pytest.mark.postfix


def command_folder(folder: Path, real_dir: Path, **scripts: str) -> Path:
    """Postfix commands: the real ones, except those given as shell scripts."""
    folder.mkdir(parents=True, exist_ok=True)
    for name in ("postqueue", "postcat", "postconf", "postsuper"):
        if name in scripts:
            path = folder / name
            path.write_text("#!/bin/sh\n" + scripts[name].replace("REAL", str(real_dir)))
            path.chmod(0o755)
        else:
            (folder / name).symlink_to(real_dir / name)
    return folder


def submit(w: World, n: int) -> list[str]:
    ids = w.lab.submit_many(
        Submission("alice@example.com", (f"c{i}@kunde{i + 1}.test",), body(i)) for i in range(n)
    )
    w.lab.wait_deferred(n)
    return ids


def test_garbage_and_truncated_listing_lines(w: World, tmp_path: Path) -> None:
    ids = submit(w, 3)
    script = (
        'REAL/postqueue "$@"\n'
        "echo 'this is not json'\n"
        'echo \'{"queue_name": "deferred", "queue_id": "DEADBEEF12", "arrival_t\'\n'
    )
    commands = command_folder(tmp_path / "bin", w.lab.command_dir, postqueue=script)

    result = w.rescue("garbage", command_dir=commands).run(
        "flush", "--yes", "--provider", "ionos", "--json"
    )

    assert result.code == 0, result.stderr
    assert set(result.outcomes) == set(ids)
    assert result.summary["rerouted"] == 3
    assert "unreadable line 4 of the queue listing" in result.stderr
    assert "DEADBEEF12: unreadable line 5" in result.stderr


def test_message_vanished_between_listing_and_reading(w: World, tmp_path: Path) -> None:
    ids = submit(w, 3)
    gone = ids[1]
    # Hold as asked, then someone else deletes one of the held messages.
    commands = command_folder(
        tmp_path / "bin",
        w.lab.command_dir,
        postsuper=(
            'REAL/postsuper "$@"; status=$?\n'
            f'case " $* " in *" -h "*) echo {gone} | REAL/postsuper -c "$2" -d - hold;; esac\n'
            "exit $status\n"
        ),
    )

    result = w.rescue("vanish", command_dir=commands).run(
        "flush", "--yes", "--provider", "ionos", "--json"
    )

    assert result.code == 1
    assert result.outcomes[gone]["action"] == "skipped"
    assert "vanished" in result.outcomes[gone]["detail"]
    assert {result.outcomes[q]["action"] for q in ids if q != gone} == {"rerouted"}
    assert w.lab.queue() == []


def test_corrupt_queue_file_is_reported_and_left_in_postfix(w: World, tmp_path: Path) -> None:
    ids = submit(w, 3)
    bad = ids[0]
    hold = w.lab.queue_dir / "hold"
    commands = command_folder(
        tmp_path / "bin",
        w.lab.command_dir,
        postsuper=(
            'REAL/postsuper "$@"; status=$?\n'
            f'case " $* " in *" -h "*) for f in {hold}/{bad} {hold}/*/{bad}; do '
            '[ -f "$f" ] && truncate -s 40 "$f"; done;; esac\n'
            "exit $status\n"
        ),
    )

    result = w.rescue("corrupt", command_dir=commands).run(
        "--verbose", "flush", "--yes", "--provider", "ionos", "--json"
    )

    assert result.code == 1
    assert result.outcomes[bad]["action"] == "failed"
    assert "cannot read the message" in result.outcomes[bad]["detail"]
    assert f"{bad}: cannot read the message" in result.stderr
    assert {result.outcomes[q]["action"] for q in ids[1:]} == {"rerouted"}
    assert len(w.smarthost.received) == 2
    assert w.lab.queue_ids("hold") == []
    # Postfix has it back in deferred/ (showq cannot list a truncated file; the queue
    # manager moves it to corrupt/ when it tries it).
    places = [p.relative_to(w.lab.queue_dir).parts[0] for p in w.lab.queue_dir.rglob(bad)]
    assert set(places) & {"deferred", "corrupt"} and "hold" not in places


def test_non_utf8_header_bytes_arrive_unchanged(w: World) -> None:
    text = (
        b"From: =?iso-8859-1?q?J=F6rg?= <j@example.com>\nSubject: Gr\xfc\xdfe \xff\xfe\n\nK\xf6ln\n"
    )
    qid = w.lab.submit("alice@example.com", ["x@kunde1.test"], text)
    w.lab.wait_deferred(1)
    queued = w.lab.postcat(qid, "-bh")

    result = w.rescue("latin1").run("flush", "--yes", "--queue-id", qid, "--json")

    assert result.code == 0, result.stderr
    [got] = w.smarthost.received
    assert got.content == queued.replace(b"\n", b"\r\n")
    assert b"Subject: Gr\xfc\xdfe \xff\xfe\r\n" in got.content


def test_addresses_with_quotes_and_unusual_characters(w: World) -> None:
    recipients = ['"john doe"@kunde2.test', "o'brien+tag@kunde2.test", "a=b/c!d%e@kunde2.test"]
    qid = w.lab.submit("o'hara+x@example.com", recipients, body(1))
    w.lab.wait_deferred(1)

    result = w.rescue("quotes").run("flush", "--yes", "--queue-id", qid, "--json")

    assert result.code == 0, result.stderr
    [got] = w.smarthost.received
    assert sorted(got.rcpt_tos) == sorted(recipients)
    assert "=example.com=o'hara+x@" in got.mail_from


def test_empty_queue(w: World) -> None:
    result = w.rescue("empty").run("flush", "--yes", "--all", "--json")
    assert result.code == 0
    assert result.summary["selected"] == 0
    assert "Nothing to reroute" in result.stderr
    scan = w.rescue("empty").run("scan")
    assert scan.code == 0


def test_postsuper_failing_part_way_leaves_nothing_on_hold(w: World, tmp_path: Path) -> None:
    # postsuper holds every message, then fails: a hold that failed sends nothing,
    # gives every message back to Postfix and ends with exit code 4 (README: Exit codes).
    ids = submit(w, 3)
    commands = command_folder(
        tmp_path / "bin",
        w.lab.command_dir,
        postsuper=(
            'REAL/postsuper "$@"\n'
            'case " $* " in *" -h "*) echo "postsuper: fatal: disk trouble" >&2; exit 1;; esac\n'
        ),
    )

    result = w.rescue("partial-hold", command_dir=commands).run(
        "flush", "--yes", "--provider", "ionos", "--json"
    )

    assert result.code == 4, result.stderr
    assert (
        "postsuper -h - deferred failed (exit status 1, after acting on 3 of 3 messages): "
        "postsuper: Placed on hold: 3 messages postsuper: fatal: disk trouble"
    ) in result.stderr
    assert w.smarthost.received == []
    assert sorted(w.lab.queue_ids("deferred")) == sorted(ids)
    assert w.lab.queue_ids("hold") == []
    assert {o["action"] for o in result.outcomes.values()} <= {"released"}


def test_export_with_a_failing_hold_leaves_nothing_on_hold(w: World, tmp_path: Path) -> None:
    ids = submit(w, 2)
    commands = command_folder(
        tmp_path / "bin",
        w.lab.command_dir,
        postsuper=(
            'REAL/postsuper "$@"\n'
            'case " $* " in *" -h "*) echo "postsuper: fatal: disk trouble" >&2; exit 1;; esac\n'
        ),
    )
    target = tmp_path / "export"

    result = w.rescue("partial-hold-export", command_dir=commands).run(
        "export", "--to", str(target), "--provider", "ionos", "--yes", "--json"
    )

    assert result.code == 4, result.stderr
    assert "disk trouble" in result.stderr
    assert sorted(w.lab.queue_ids("deferred")) == sorted(ids)
    assert w.lab.queue_ids("hold") == []
    assert not list(target.glob("*.eml"))


def test_journal_failing_mid_flush_is_exit_70_with_nothing_left_on_hold(
    w: World, tmp_path: Path
) -> None:
    # Right after the hold the journal's disk "fills up": postsuper's wrapper limits the
    # size of files queue-rescue may write (prlimit on its parent, the flush) to what the
    # journal's write-ahead log has now, so its next write fails. Nothing in queue-rescue
    # expects that: exit 70, and every message it held is back in Postfix. The smarthost
    # refuses them all, so each must have been released, none deleted.
    ids = submit(w, 3)
    w.smarthost.script(Fault(stage="MAIL", reply="550 5.7.1 not today", times=None))
    rescue = w.rescue("journal-full")
    wal = f"{rescue.journal_path}-wal"
    commands = command_folder(
        tmp_path / "bin",
        w.lab.command_dir,
        postsuper=(
            'REAL/postsuper "$@"; status=$?\n'
            f'case " $* " in *" -h "*) prlimit --pid $PPID --fsize=$(stat -c %s {wal});; esac\n'
            "exit $status\n"
        ),
    )
    rescue.command_dir = commands

    result = rescue.run("flush", "--yes", "--provider", "ionos", "--json")

    assert result.code == 70, result.stderr
    assert f"queue-rescue: error: journal {rescue.journal_path}: disk I/O error" in result.stderr
    assert w.smarthost.received == []
    assert w.lab.queue_ids("hold") == []
    assert sorted(w.lab.queue_ids("deferred")) == sorted(ids)
    # Refused ("released"), or caught by the journal's failure before it was sent
    # ("failed", the writer thread's error shows when the next write is handed over).
    assert set(result.outcomes) == set(ids)
    assert {o["action"] for o in result.outcomes.values()} <= {"released", "failed"}


@pytest.mark.parametrize("workers", ["1", "2"])
def test_broken_and_vanished_files_in_a_large_flush(w: World, tmp_path: Path, workers: str) -> None:
    # Enough messages that one process reads queue files ahead in a helper process
    # (--workers 1), or that the flush is split over two processes.
    ids = w.lab.submit_many(
        (
            Submission("alice@example.com", (f"c{i}@kunde{i % 30 + 1}.test",), body(i))
            for i in range(250)
        ),
        sessions=2,
    )
    w.lab.wait_deferred(250, timeout=120)
    bad, gone = ids[10], ids[200]
    hold = w.lab.queue_dir / "hold"
    commands = command_folder(
        tmp_path / "bin",
        w.lab.command_dir,
        postsuper=(
            'REAL/postsuper "$@"; status=$?\n'
            'case " $* " in *" -h "*)\n'
            f"  truncate -c -s 40 {hold}/{bad}\n"  # once it is on hold: a worker's own hold
            f'  echo {gone} | REAL/postsuper -c "$2" -d - hold;;\n'
            "esac\n"
            "exit $status\n"
        ),
    )

    result = w.rescue(f"large-{workers}", command_dir=commands).run(
        "flush", "--yes", "--provider", "ionos", "--json", "--workers", workers
    )

    assert result.code == 1
    assert result.outcomes[bad]["action"] == "failed"
    assert "cannot read the message" in result.outcomes[bad]["detail"]
    assert result.outcomes[gone]["action"] == "skipped"
    assert result.summary["rerouted"] == 248
    assert len(w.smarthost.received) == 248
    assert w.lab.queue_ids("hold") == []
