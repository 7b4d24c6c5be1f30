"""`--wait`: a flush or export by hand waits for the service's cycle (or another flush)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from rescue.cli.common import parse_duration
from rescue.cli.output import age
from rescue.journal.lock import WaitingLock

F = TypeVar("F", bound=Callable[..., Any])

DEFAULT_WAIT = "2m"
# While waiting, a line on stderr this often (and at the start).
SAY_EVERY = 10.0


def wait_option(command: F) -> F:
    return click.option(
        "--wait",
        "wait",
        default=DEFAULT_WAIT,
        show_default=True,
        metavar="TIME",
        callback=lambda _ctx, _param, value: parse_duration(value),
        help="How long to wait for the lock (the service's cycle, another flush); 0: not at all.",
    )(command)


class Progress:
    """Says on stderr who has the lock, when the wait begins and every SAY_EVERY seconds."""

    def __init__(self, wait: float) -> None:
        self.wait = wait
        self.said: float | None = None

    def __call__(self, holder: str, waited: float) -> None:
        if self.said is not None and waited - self.said < SAY_EVERY:
            return
        self.said = waited
        click.echo(
            f"queue-rescue: waiting for the lock, held by {holder} "
            f"({age(waited)} of at most {age(self.wait)})",
            err=True,
        )


def queue_lock(path: Path, command: str, wait: float) -> WaitingLock:
    return WaitingLock(path, command, wait=wait, progress=Progress(wait))
