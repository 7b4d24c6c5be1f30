"""An export interrupted or failing part way still gives back every message it held.

A fake queue and the real journal, as in test_flush_core; the interruption test runs a
real postsuper stand-in as a child process, the way Postfix's commands run.
"""

from __future__ import annotations

import errno
import os
import signal
import threading
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import pytest

from rescue.cli.export_cmd import sigterm_interrupts
from rescue.config import PostfixConfig
from rescue.errors import JournalError, QueueFileError
from rescue.flush.export import Export, ExportOutcome
from rescue.journal.store import HELD, Journal
from rescue.model import Envelope
from rescue.postfix.commands import Postfix
from tests.lab import wait_for
from tests.unit.test_flush_core import FakeQueue, envelope, selected


def export(
    tmp_path: Path,
    queue: Any,
    journal: Journal,
    read: Any = envelope,
) -> tuple[Export, list[ExportOutcome]]:
    out: list[ExportOutcome] = []
    folder = tmp_path / "out"
    folder.mkdir(exist_ok=True)
    journal.begin_run("export", 1)
    return (
        Export(
            queue=queue,
            read_envelope=read,
            journal=journal,
            folder=folder,
            keep=False,
            hostname=None,
            report=out.append,
        ),
        out,
    )


def test_a_journal_that_cannot_record_the_hold_gives_the_held_back(tmp_path: Path) -> None:
    class NoHeld(Journal):
        def record(self, items: Iterable[tuple[str, str]], state: str, **kw: Any) -> None:
            if state == HELD:
                raise JournalError("journal: database or disk is full")
            super().record(items, state, **kw)

    selection = [selected(n) for n in range(3)]
    queue = FakeQueue(s.message.queue_id for s in selection)
    run, _ = export(tmp_path, queue, NoHeld(tmp_path / "journal.sqlite3"))

    with pytest.raises(JournalError):
        run.run(selection)

    assert set(queue.where.values()) == {"deferred"}


def test_an_fsync_error_still_deletes_the_exported_and_releases_the_rest(
    tmp_path: Path,
) -> None:
    def failing_fsync(fd: int) -> None:
        raise OSError(errno.EIO, "I/O error")

    selection = [selected(n) for n in range(3)]
    queue = FakeQueue(s.message.queue_id for s in selection)
    broken = selection[1].message.queue_id

    def read(queue_id: str) -> Envelope:
        if queue_id == broken:
            raise QueueFileError(queue_id, "damaged")
        return envelope(queue_id)

    journal = Journal(tmp_path / "journal.sqlite3", fsync=failing_fsync)
    run, out = export(tmp_path, queue, journal, read)

    run.run(selection)

    # The two written pairs leave Postfix (giving them back would send them twice);
    # the unreadable one goes back to the deferred queue. Nothing stays on hold.
    assert queue.where == {
        selection[0].message.queue_id: "gone",
        broken: "deferred",
        selection[2].message.queue_id: "gone",
    }
    assert sorted((o.queue_id, o.action) for o in out) == [
        (selection[0].message.queue_id, "exported"),
        (broken, "failed"),
        (selection[2].message.queue_id, "exported"),
    ]


def stand_in(folder: Path) -> Path:
    """A postsuper that moves ids between files deferred/hold, one a second for -h."""
    folder.mkdir()
    script = folder / "postsuper"
    script.write_text(
        f"""#!/bin/sh
# postsuper -c DIR FLAG - QUEUE
state={folder}
case "$3" in
-h) from=deferred to=hold word="placed on hold" pause=0.5 ;;
-H) from=hold to=deferred word="released from hold" pause=0 ;;
-d) from=hold to=gone word="removed" pause=0 ;;
esac
while read id; do
    if grep -qx "$id" "$state/$from"; then
        grep -vx "$id" "$state/$from" > "$state/tmp"; mv "$state/tmp" "$state/$from"
        echo "$id" >> "$state/$to"
        echo "postsuper: $id: $word" >&2
    fi
    sleep $pause
done
"""
    )
    script.chmod(0o755)
    for name in ("deferred", "hold", "gone"):
        (folder / name).write_text("")
    return folder


def test_sigterm_during_the_hold_leaves_nothing_on_hold(tmp_path: Path) -> None:
    # SIGTERM becomes KeyboardInterrupt in an export. Before, it killed postsuper part
    # way, and what it had held stayed on hold with no one to release it.
    selection = [selected(n) for n in range(4)]
    folder = stand_in(tmp_path / "postfix")
    (folder / "deferred").write_text("".join(s.message.queue_id + "\n" for s in selection))
    postfix = Postfix(PostfixConfig(command_dir=folder, config_dir=folder))
    run, _ = export(tmp_path, postfix, Journal(tmp_path / "journal.sqlite3"))

    def lines(name: str) -> Sequence[str]:
        return (folder / name).read_text().split()

    def stop_once_two_are_held() -> None:
        wait_for(lambda: len(lines("hold")) >= 2, 30, "two messages on hold")
        os.kill(os.getpid(), signal.SIGTERM)

    stopper = threading.Thread(target=stop_once_two_are_held)
    stopper.start()
    try:
        with pytest.raises(KeyboardInterrupt), sigterm_interrupts():
            run.run(selection)
    finally:
        stopper.join()

    assert lines("hold") == []
    assert sorted(lines("deferred")) == sorted(s.message.queue_id for s in selection)
