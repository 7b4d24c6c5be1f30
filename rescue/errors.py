"""Exceptions: one root, a few subclasses that carry what went wrong and where."""

from __future__ import annotations

from pathlib import Path


class RescueError(Exception):
    """Root of every error queue-rescue raises on purpose."""


class ConfigError(RescueError):
    """A configuration file is missing, unreadable or holds a bad value."""

    def __init__(self, path: Path | str, key: str | None, problem: str) -> None:
        self.path = Path(path)
        self.key = key
        self.problem = problem
        where = f"{self.path}: {key}" if key else str(self.path)
        super().__init__(f"{where}: {problem}")


class PostfixError(RescueError):
    """A Postfix command failed or printed something we cannot read."""


class PostsuperFailed(PostfixError):
    """postsuper ended with an error (or was stopped) part way through a batch.

    `done` holds the ids it reported acting on. Any other id of the batch may or may
    not have been acted on: a message it was to hold may be on hold all the same.
    """

    def __init__(self, message: str, done: frozenset[str]) -> None:
        self.done = done
        super().__init__(message)


class QueueFileError(RescueError):
    """One queued message could not be read; it stays in Postfix."""

    def __init__(self, queue_id: str, problem: str) -> None:
        self.queue_id = queue_id
        self.problem = problem
        super().__init__(f"{queue_id}: {problem}")


class SrsError(RescueError):
    """An address cannot be rewritten or reversed with SRS."""


class JournalError(RescueError):
    """The journal cannot be opened or written."""


class LockedError(RescueError):
    """Another queue-rescue instance holds the lock."""

    def __init__(self, lock_path: Path, holder: str, *, waited: float = 0.0) -> None:
        self.lock_path = lock_path
        self.holder = holder
        self.waited = waited
        after = f" (waited {waited:.0f}s; --wait sets how long)" if waited else ""
        super().__init__(f"{lock_path} is held by {holder}{after}")


class DeliveryError(RescueError):
    """A smarthost did not take a message.

    ``transient`` tells whether trying again (later, or through another
    smarthost) can help; ``uncertain`` marks the case where the smarthost may
    have taken the message anyway (a timeout after the end of DATA).
    """

    def __init__(
        self,
        message: str,
        *,
        smarthost: str,
        code: int | None = None,
        transient: bool,
        uncertain: bool = False,
        stage: str = "",
    ) -> None:
        self.smarthost = smarthost
        self.code = code
        self.transient = transient
        self.uncertain = uncertain
        self.stage = stage
        super().__init__(message)
