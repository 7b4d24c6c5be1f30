"""Asking before a command changes the queue: on a terminal, or with --yes not at all.

`flush` and `export` take mail out of Postfix's hands. Without --yes they ask, and
when there is no terminal to ask on (a script, cron, a pipe into standard input)
they change nothing: a question nobody can see must not count as a yes.
"""

from __future__ import annotations

import sys
from typing import TextIO

from rescue.cli.boundary import fail
from rescue.cli.common import is_terminal
from rescue.exitcodes import ExitCode


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
        answer = line.strip().lower()
        if not line or answer in ("", "n", "no"):
            if not line:
                terminal.write("\n")  # end the question's line
            return False
        if answer in ("y", "yes"):
            return True
        prompt = "Please answer y or n [y/N]: "
