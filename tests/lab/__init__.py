"""The test lab: a private Postfix, fake SMTP servers, DNS servers and certificates.

Shared by the integration tests, the benchmark and the demo. This module holds only the
polling helper every part of the lab uses; the parts live in their own modules (dns: a
scriptable resolver for MX lookups; authdns: Knot DNS as an authoritative server).
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from types import TracebackType
from typing import Self

# First and longest pause between two looks at a condition: quick to notice a fast change,
# cheap when a condition takes seconds (a 10,000 message queue listing takes a while).
_FIRST_POLL = 0.01
_LONGEST_POLL = 0.25


class Running:
    """A lab server as a context manager: start() on entry, stop() on exit."""

    def start(self) -> object:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()


class LabTimeout(TimeoutError):
    """A condition the lab waited for did not come true in time."""


def wait_for(
    predicate: Callable[[], bool],
    timeout: float = 30.0,
    what: str = "a condition",
    describe: Callable[[], str] | None = None,
) -> None:
    """Poll `predicate` until it is true; raise LabTimeout naming `what` when time runs out.

    `describe` is called once on timeout to say what the world looked like instead.
    """
    deadline = time.monotonic() + timeout
    pause = _FIRST_POLL
    while not predicate():
        if time.monotonic() >= deadline:
            seen = f"; instead: {describe()}" if describe is not None else ""
            raise LabTimeout(f"timed out after {timeout:g}s waiting for {what}{seen}")
        time.sleep(pause)
        pause = min(pause * 2, _LONGEST_POLL)


def recv_exactly(sock: socket.socket, size: int) -> bytes | None:
    """Exactly `size` bytes from a stream socket, or None when the peer closed first."""
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            return None
        data += chunk
    return data
