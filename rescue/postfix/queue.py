"""What a flush needs from a mail queue: the one interface live Postfix and copies share."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Protocol

from rescue.model import QueuedMessage
from rescue.postfix.listing import BadLine


class MailQueue(Protocol):
    """A queue whose messages can be listed, held, released and deleted in batches.

    `hold` takes only messages in the deferred queue and returns those it really
    held; `release` and `delete` act only on held messages and return those they
    acted on. Implemented by rescue.postfix.commands.Postfix (live) and by the
    spool-copy and export readers.
    """

    def listing(self) -> Iterator[QueuedMessage | BadLine]: ...

    def hold(self, queue_ids: Iterable[str]) -> set[str]: ...

    def release(self, queue_ids: Iterable[str]) -> set[str]: ...

    def delete(self, queue_ids: Iterable[str]) -> set[str]: ...
