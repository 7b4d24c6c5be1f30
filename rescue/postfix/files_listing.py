"""The deferred queue's listing from its files, begun in a helper process at once.

A scan starts this as soon as it knows Postfix's folders, before it imports
the rest of itself: the helper (rescue.postfix.deferred_files) asks postconf,
reads the files and sends back showq's listing of the deferred queue while
this process loads the classifier. Only `os` and `marshal` are loaded here
before the fork; the helper loads what it needs itself.
"""

from __future__ import annotations

import contextlib
import marshal
import os
import signal
from typing import TYPE_CHECKING

from rescue.postfix.forked import PipedChild

if TYPE_CHECKING:
    from rescue.config import PostfixConfig
    from rescue.model import QueuedMessage
    from rescue.postfix.deferred import ListedRow

PostfixDirs = tuple[str, str, str | None]  # config_dir, command_dir, queue_directory
# What the helper asks postconf, in this order (see rescue.postfix.deferred_files).
POSTCONF_PARAMETERS = (
    "queue_directory",
    "empty_address_recipient",
    "duplicate_filter_limit",
    "hash_queue_depth",
    "hash_queue_names",
    "relayhost",  # not for the listing: for the scan's own_relays, saving a postconf
)


def dirs_of(config: PostfixConfig) -> PostfixDirs:
    """The folders a listing is read with, from a loaded configuration."""
    queue_dir = config.queue_directory
    return (str(config.config_dir), str(config.command_dir), str(queue_dir) if queue_dir else None)


class FilesListing(PipedChild):
    """A helper process reading the deferred queue's files; `messages()` takes its listing.

    `messages()` is None when the helper could not list the queue exactly as showq
    would (`problem` says why: ask showq); `relayhost` is Postfix's once postconf told it.
    """

    def __init__(self, dirs: PostfixDirs) -> None:
        self.dirs = dirs
        self.relayhost: str | None = None
        self.problem = ""
        super().__init__(lambda write_fd: _helper(write_fd, dirs))

    def messages(self) -> list[QueuedMessage] | None:
        from rescue.postfix.listing import message_of  # noqa: PLC0415  (after the fork)

        if self._pipe is None:
            self.problem = "the listing was closed"
            return None
        data = self._pipe.read()
        status = self.close()
        if status != 0 or not data:
            self.problem = f"the helper process ended with status {status}"
            return None
        # From the helper forked above, through a pipe of our own: nobody else's bytes.
        kind, found, self.relayhost = marshal.loads(data)  # noqa: S302
        if kind != "rows":
            self.problem = found
            return None
        return [
            message_of(
                queue_id=queue_id,
                queue_name="deferred",
                arrival_time=arrival,
                size=size,
                sender=sender,
                recipients=recipients,
                forced_expire=expire,
            )
            for queue_id, arrival, size, sender, expire, recipients in found
        ]

    def cancel(self) -> None:
        """Stop the helper and forget its listing (an error, or a config that differs)."""
        if self._pipe is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self._pid, signal.SIGKILL)
            self.close()


def _helper(write_fd: int, dirs: PostfixDirs) -> None:
    """The helper process: list, send the rows (or why not), and leave without Python's
    clean-up (the parent's buffers and handlers are the parent's)."""
    code = 1
    try:
        relayhost = None
        try:
            # postconf first: it runs while this process loads the reader.
            postconf = _Postconf(dirs)
            from rescue.postfix.deferred import NotAsShowq  # noqa: PLC0415
            from rescue.postfix.deferred_files import read_queue  # noqa: PLC0415

            try:
                rows, relayhost = read_queue(dirs, postconf.answers())
                reply: tuple[str, list[ListedRow] | str, str | None] = ("rows", rows, relayhost)
            except (NotAsShowq, OSError) as exc:
                reply = ("not", str(exc), relayhost)
        except Exception as exc:  # a bug here must not stop the scan: showq lists
            reply = ("not", f"{type(exc).__name__}: {exc}", relayhost)
        with os.fdopen(write_fd, "wb") as out:
            out.write(marshal.dumps(reply))
        code = 0
    finally:
        os._exit(code)


class _Postconf:
    """`postconf -h POSTCONF_PARAMETERS`, started (posix_spawn: no subprocess module)."""

    def __init__(self, dirs: PostfixDirs) -> None:
        config_dir, command_dir, _ = dirs
        program = f"{command_dir}/postconf"
        read_fd, write_fd = os.pipe()
        try:
            self._pid = os.posix_spawn(
                program,
                [program, "-c", config_dir, "-h", *POSTCONF_PARAMETERS],
                os.environ,
                file_actions=[
                    (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
                    (os.POSIX_SPAWN_DUP2, write_fd, 1),
                    (os.POSIX_SPAWN_OPEN, 2, os.devnull, os.O_WRONLY, 0),
                    (os.POSIX_SPAWN_CLOSE, read_fd),
                ],
            )
        except OSError:
            os.close(read_fd)
            raise
        finally:
            os.close(write_fd)
        self._out = read_fd

    def answers(self) -> list[str]:
        """Its lines; OSError when it failed (the helper then says why)."""
        chunks = []
        with os.fdopen(self._out, "rb") as out:
            while chunk := out.read():
                chunks.append(chunk)
        _, status = os.waitpid(self._pid, 0)
        if status != 0:
            raise OSError(f"postconf exited with status {os.waitstatus_to_exitcode(status)}")
        return b"".join(chunks).decode("utf-8", "replace").splitlines()
