"""Asking before a command changes the queue: on a terminal, or with --yes not at all.

`flush` and `export` take mail out of Postfix's hands. Without --yes they ask, and
when there is no terminal to ask on (a script, cron, a pipe into standard input)
they change nothing: a question nobody can see must not count as a yes. They ask
before they take the queue's lock, so one waiting for an answer holds nothing up,
and then take only the messages the answer covered.
"""

from __future__ import annotations

import signal
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import FrameType
from typing import TextIO

from rescue.cli.boundary import fail
from rescue.cli.common import is_terminal
from rescue.exitcodes import ExitCode
from rescue.model import Selected


def where_to_ask(yes: bool, command: str) -> TextIO | None:
    """The terminal to ask on (standard error, else standard output), None with --yes.

    Without --yes and without a terminal on standard input and on one of the two
    outputs, the command ends here (exit 2), before it changed anything.
    """
    if yes:
        return None
    if is_terminal(sys.stdin):
        for stream in (sys.stderr, sys.stdout):
            if is_terminal(stream):
                return stream
    fail(
        ExitCode.USAGE,
        f"{command} asks before it changes the queue, and there is no terminal to ask on; "
        "nothing was changed (add --yes to go ahead without asking)",
    )


def confirmed_keys(
    yes: bool,
    command: str,
    listing: Callable[[], list[Selected]],
    question: Callable[[list[Selected]], str],
) -> frozenset[str] | None:
    """The keys (QueuedMessage.key) of the messages the admin said yes to; None with
    --yes (no limit).

    Asked before the command takes the queue's lock: one waiting for an answer holds up
    neither the service nor another command, and a "no" changes nothing at all, not
    even by recovery. What came into the queue after the question is left for later.
    """
    terminal = where_to_ask(yes, command)
    if terminal is None:
        return None
    asked = listing()
    with sigterm_interrupts():  # after the listing: its event loop resets SIGTERM's handler
        if asked and not confirmed(question(asked), terminal):
            fail(ExitCode.USAGE, "not confirmed; nothing was changed")
    return frozenset(s.message.key for s in asked)


def confirmed(question: str, terminal: TextIO) -> bool:
    """The answer to a yes/no question asked on `terminal`, no by default.

    Ctrl-C is an interruption (exit 130, as anywhere else); the end of the input is no.
    The question is written here, not by input(): without readline loaded, Python
    writes input()'s prompt to stderr, which may be a log file.
    """
    prompt = f"{question} [y/N]: "
    while True:
        terminal.write(prompt)
        terminal.flush()
        try:
            line = sys.stdin.readline()
        except KeyboardInterrupt:
            terminal.write("\n")
            raise
        if not line:  # the end of the input
            terminal.write("\n")  # end the question's line
            return False
        answer = line.strip().lower()
        if answer in ("", "n", "no"):
            return False
        if answer in ("y", "yes"):
            return True
        prompt = "Please answer y or n [y/N]: "


@contextmanager
def sigterm_interrupts() -> Iterator[None]:
    """SIGTERM raises KeyboardInterrupt, as Ctrl-C does, so `finally` blocks run."""

    def interrupt(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
