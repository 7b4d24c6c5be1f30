"""`flush` and `export` without --yes: they ask on a terminal, and change nothing where
there is no terminal to ask on.

The terminal is a pseudo-terminal on the command's stdin and stdout, with stderr
going to a file (an admin who keeps a log: `queue-rescue flush ... 2>flush.log`).
"""

from __future__ import annotations

import contextlib
import os
import pty
import select
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.integration.rescue_cli import Rescue
from tests.integration.world import World, submit

pytestmark = pytest.mark.postfix

QUESTION = b"[y/N]"


class OnTerminal:
    """A command whose stdin and stdout are a pseudo-terminal; stderr goes to a file."""

    def __init__(self, rescue: Rescue, args: tuple[str, ...], stderr: Path) -> None:
        self.master, slave = pty.openpty()
        env = dict(os.environ)
        env.pop("QUEUE_RESCUE_CONFIG", None)
        with stderr.open("w") as err:
            self.proc = subprocess.Popen(
                rescue.command(*args),
                stdin=slave,
                stdout=slave,
                stderr=err,
                env=env,
                cwd=Path(__file__).parents[2],
            )
        os.close(slave)
        self.seen = b""

    def wait_for(self, text: bytes, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while text not in self.seen:
            assert time.monotonic() < deadline, f"no {text!r} on the terminal: {self.seen!r}"
            if select.select([self.master], [], [], 0.1)[0]:
                with contextlib.suppress(OSError):  # EIO: the command ended, closing it
                    self.seen += os.read(self.master, 4096)
            if text not in self.seen and self.proc.poll() is not None:
                raise AssertionError(f"ended ({self.proc.returncode}) at: {self.seen!r}")

    def type(self, keys: bytes) -> None:
        os.write(self.master, keys)

    def end(self, timeout: float = 60) -> int:
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()  # it would hold the queue's lock for the tests after it
            self.proc.wait()
            raise
        try:
            while chunk := os.read(self.master, 4096):
                self.seen += chunk
        except OSError:  # EIO: the terminal's other side is closed
            pass
        os.close(self.master)
        return code


def asked(
    w: World,
    tmp_path: Path,
    name: str,
    answer: bytes | signal.Signals,
    command: tuple[str, ...] = ("flush", "--provider", "ionos"),
) -> tuple[int, str, str]:
    """Run `command` on a terminal, wait for its question, then type `answer` or send
    that signal (SIGINT: Ctrl-C as the terminal sends it); (exit code, what the
    terminal showed, stderr)."""
    err = tmp_path / f"{name}.err"
    run = OnTerminal(w.rescue(name), command, err)
    run.wait_for(QUESTION)
    if isinstance(answer, signal.Signals):
        run.proc.send_signal(answer)
    else:
        run.type(answer)
    code = run.end()
    return code, run.seen.decode(errors="replace"), err.read_text()


def test_no_terminal_and_no_yes_changes_nothing(w: World, tmp_path: Path) -> None:
    ids = submit(w, 2)

    flush = w.rescue("no-terminal").run("flush", "--provider", "ionos")
    export = w.rescue("no-terminal").run(
        "export", "--to", str(tmp_path / "out"), "--provider", "ionos"
    )

    for result, command in ((flush, "flush"), (export, "export")):
        assert result.code == 2, result.stderr
        assert f"{command} asks before it changes the queue" in result.stderr
        assert "no terminal to ask on" in result.stderr and "--yes" in result.stderr
        assert result.stdout == ""
    assert w.smarthost.received == []
    assert sorted(w.lab.queue_ids("deferred")) == sorted(ids)
    assert not (tmp_path / "out").exists()


def test_yes_on_the_terminal_reroutes(w: World, tmp_path: Path) -> None:
    submit(w, 2)

    code, shown, stderr = asked(w, tmp_path, "yes", b"y\n")

    assert code == 0, stderr
    assert "Reroute 2 messages (2 recipients; ionos) through relay1?" in shown
    rcpts = sorted(r.rcpt_tos for r in w.smarthost.received)
    assert rcpts == [("c0@kunde1.test",), ("c1@kunde2.test",)]
    assert w.lab.queue_ids() == []


@pytest.mark.parametrize(
    ("answer", "code", "says"),
    [
        (b"n\n", 2, "not confirmed; nothing was changed"),
        (b"\n", 2, "not confirmed; nothing was changed"),  # no is the default
        (b"\x04", 2, "not confirmed; nothing was changed"),  # Ctrl-D: the end of input
        (signal.SIGINT, 130, "interrupted"),  # Ctrl-C
        (signal.SIGTERM, 130, "interrupted"),
    ],
)
def test_anything_but_yes_changes_nothing(
    w: World, tmp_path: Path, answer: bytes | signal.Signals, code: int, says: str
) -> None:
    ids = submit(w, 2)

    got, shown, stderr = asked(w, tmp_path, "no", answer)

    assert got == code, (shown, stderr)
    assert says in stderr
    assert "Aborted" not in shown + stderr
    assert w.smarthost.received == []
    assert sorted(w.lab.queue_ids("deferred")) == sorted(ids)
    assert w.lab.queue_ids("hold") == []


def test_the_question_holds_no_lock(w: World, tmp_path: Path) -> None:
    """While one flush waits for its answer, another takes the queue and sends the mail;
    the answer then finds nothing left of what it was asked about."""
    submit(w, 2)
    err = tmp_path / "waiting.err"
    waiting = OnTerminal(w.rescue("first"), ("flush", "--provider", "ionos"), err)
    waiting.wait_for(QUESTION)

    other = w.rescue("first").run("flush", "--yes", "--provider", "ionos", "--wait", "0")
    assert other.code == 0, other.stderr
    waiting.type(b"y\n")

    assert waiting.end() == 0, err.read_text()
    assert "Nothing to reroute" in err.read_text()
    rcpts = sorted(r.rcpt_tos for r in w.smarthost.received)
    assert rcpts == [("c0@kunde1.test",), ("c1@kunde2.test",)]  # each once
    assert w.lab.queue_ids() == []


def test_only_what_was_asked_about_is_taken(w: World, tmp_path: Path) -> None:
    """Mail that arrives while the question waits is left for the next run."""
    submit(w, 1)
    err = tmp_path / "asked.err"
    waiting = OnTerminal(w.rescue("asked"), ("flush", "--provider", "ionos"), err)
    waiting.wait_for(b"Reroute 1 messages")
    later = w.lab.submit("alice@example.com", ["late@kunde2.test"], b"Subject: late\n\nx\n")
    w.lab.wait_deferred(2)
    waiting.type(b"y\n")

    assert waiting.end() == 0, err.read_text()
    assert [r.rcpt_tos for r in w.smarthost.received] == [("c0@kunde1.test",)]
    assert w.lab.queue_ids("deferred") == [later]


@pytest.mark.parametrize("answer", [b"n\n", b"y\n"])
def test_export_asks_before_it_writes_anything(w: World, tmp_path: Path, answer: bytes) -> None:
    ids = submit(w, 2)
    folder = tmp_path / "out"

    code, shown, stderr = asked(
        w, tmp_path, "export", answer, ("export", "--to", str(folder), "--provider", "ionos")
    )

    assert f"Export 2 messages (2 recipients) to {folder} and delete them from Postfix?" in shown
    if answer == b"n\n":
        assert code == 2, stderr
        assert not folder.exists()  # "nothing was changed": not even the folder
        assert sorted(w.lab.queue_ids("deferred")) == sorted(ids)
    else:
        assert code == 0, stderr
        assert sorted(p.stem for p in folder.glob("*.eml")) == sorted(ids)
        assert w.lab.queue_ids() == []
