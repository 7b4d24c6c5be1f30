"""Read a held message: its queue file directly when we may, else through postcat.

Reading the file saves two process starts a message (the slow part of a large
flush); postcat is the fallback when the queue directory is not readable.
"""

from __future__ import annotations

import logging
from pathlib import Path

from rescue.errors import PostfixError
from rescue.model import Envelope
from rescue.postfix.commands import Postfix, valid_queue_id
from rescue.postfix.queuefile import read_queue_file

log = logging.getLogger(__name__)


def hold_paths(queue_dir: str, queue_id: str) -> tuple[str, ...]:
    """Where a held message may lie: hold/ is flat unless hash_queue_names includes it.

    Plain strings: a flush asks this once a message, and pathlib costs more than the read.
    """
    hold = f"{queue_dir}/hold"
    return (
        f"{hold}/{queue_id}",
        f"{hold}/{queue_id[0]}/{queue_id}",
        f"{hold}/{queue_id[0]}/{queue_id[1]}/{queue_id}",
    )


class HeldMessageReader:
    """Callable: queue id of a message we hold -> its Envelope (pending recipients)."""

    def __init__(self, postfix: Postfix, *, direct: bool = True) -> None:
        self._postfix = postfix
        self._queue_dir: Path | None = None
        if direct:
            try:
                queue_dir = postfix.queue_directory()
                if (queue_dir / "hold").is_dir():
                    self._queue_dir = queue_dir
            except (PostfixError, OSError) as exc:
                log.info("reading messages through postcat: %s", exc)

    @property
    def direct(self) -> bool:
        return self._queue_dir is not None

    @property
    def queue_dir(self) -> Path | None:
        """The queue directory when its files are read directly, else None."""
        return self._queue_dir

    def __call__(self, queue_id: str) -> Envelope:
        """The held message's envelope; FileNotFoundError when it is not on hold (any more).

        Only the hold queue is read: a message someone released (`postsuper -H`) while
        it waited to be sent is Postfix's again, and sending it too would deliver it twice.
        """
        if self._queue_dir is not None and valid_queue_id(queue_id):
            for path in hold_paths(str(self._queue_dir), queue_id):
                try:
                    return read_queue_file(path, queue_id).envelope()
                except FileNotFoundError:
                    continue
                except PermissionError:
                    log.info("%s: queue file not readable; using postcat", queue_id)
                    break
        # Not found where we looked (a deeper hash, or not readable): postcat finds it,
        # and says in which queue; in any other than hold it counts as gone.
        return self._postfix.read_envelope(queue_id, only_in="hold")
