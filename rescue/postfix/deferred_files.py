"""The deferred queue listed from its files, on both CPUs: showq's listing, sooner.

showq (behind `postqueue -j`) reads every queue file and defer log in one
process and hands each message over twice (to postqueue, then as JSON); for a
scan of the deferred queue this reads the same files itself, in showq's order
(the directory order, hash folders depth first), split between two processes.
What rescue.postfix.deferred cannot list exactly as showq would, and a queue it
cannot read (not root, long queue ids, a layout it does not know), raises
NotAsShowq: the caller then asks showq. This runs in the helper processes that
rescue.postfix.files_listing starts.
"""

from __future__ import annotations

import marshal
import os
from collections.abc import Callable
from typing import NamedTuple

from rescue.postfix.deferred import (
    CHUNK,
    DEFERRED,
    STAT_READY,
    FileFacts,
    ListedRow,
    NotAsShowq,
    ShowqParams,
    deferred_row,
)
from rescue.postfix.files_listing import POSTCONF_PARAMETERS, PostfixDirs
from rescue.postfix.forked import PipedChild

DEFER_LOGS = "defer"
# Short queue ids are upper-case hex; their hash folders are their first characters.
# Long ones (enable_long_queue_ids) hash otherwise: those queues go to showq.
_SHORT_ID = frozenset("0123456789ABCDEF")
# Below this many files one process reads them all (a fork costs more than it saves).
MIN_SPLIT = 200


class QueueLayout(NamedTuple):
    """Where showq looks for a deferred message's file and its defer log."""

    queue_dir: str
    deferred_depth: int  # hash_queue_depth if hash_queue_names names the queue, else 0
    defer_depth: int
    params: ShowqParams

    def path(self, queue: str, queue_id: str) -> str:
        depth = self.deferred_depth if queue == DEFERRED else self.defer_depth
        return "/".join((self.queue_dir, queue, *queue_id[:depth], queue_id))


def layout_of(values: list[str], configured_dir: str | None) -> QueueLayout:
    """The layout from postconf's answers (in POSTCONF_PARAMETERS' order)."""
    if len(values) != len(POSTCONF_PARAMETERS):
        raise NotAsShowq(f"postconf answered {len(values)} lines for {len(POSTCONF_PARAMETERS)}")
    queue_dir, empty, limit, depth, names, _relayhost = values
    if not (limit.isdigit() and depth.isdigit()):
        raise NotAsShowq(f"unexpected duplicate_filter_limit {limit!r} or hash_queue_depth")
    hashed = set(names.replace(",", " ").split())
    return QueueLayout(
        queue_dir=configured_dir or queue_dir,
        deferred_depth=int(depth) if DEFERRED in hashed else 0,
        defer_depth=int(depth) if DEFER_LOGS in hashed else 0,
        params=ShowqParams(empty_address=empty, duplicate_filter_limit=int(limit)),
    )


def read_queue(dirs: PostfixDirs, postconf: list[str]) -> tuple[list[ListedRow], str]:
    """Every deferred message's row, in showq's order, and Postfix's relayhost.

    `postconf`: its answers for POSTCONF_PARAMETERS. Runs in the helper process
    rescue.postfix.files_listing forks; above MIN_SPLIT files it forks one more for
    the later half, so that both CPUs read.
    """
    values = postconf
    layout = layout_of(values, dirs[2])
    relayhost = values[-1].strip()
    names = queue_files(f"{layout.queue_dir}/{DEFERRED}", layout.deferred_depth)
    if len(names) < MIN_SPLIT:
        return read_rows(layout, names), relayhost
    half = len(names) // 2
    helper = Helper(layout, names[half:])
    try:
        rows = read_rows(layout, names[:half])
        return rows + helper.rows(), relayhost
    finally:
        helper.close()


def queue_files(folder: str, depth: int) -> list[str]:
    """Queue ids below `folder` in showq's order (mail_scan_dir_next: one-character
    names are hash folders, entered depth first where they are met)."""
    found: list[str] = []
    _walk(folder, depth, "", found)
    return found


def _walk(folder: str, depth: int, prefix: str, found: list[str]) -> None:
    with os.scandir(folder) as entries:
        for entry in entries:
            name = entry.name
            if len(name) == 1:
                if not entry.is_dir(follow_symlinks=False):
                    raise NotAsShowq(f"{entry.path}: a one-character name that is not a folder")
                _walk(entry.path, depth, prefix + name, found)
            elif not _SHORT_ID.issuperset(name) or len(prefix) != depth:
                # A long queue id, a stray name or a file in the wrong folder: showq
                # decides those (by mail_queue_id_ok and where the id hashes to).
                raise NotAsShowq(f"{entry.path}: not a short queue id in its hash folder")
            elif name[:depth] != prefix:
                raise NotAsShowq(f"{entry.path}: not in its hash folder")
            else:
                found.append(name)


def read_rows(layout: QueueLayout, names: list[str]) -> list[ListedRow]:
    """Each listed message as plain values; files gone meanwhile are left out, as showq does."""
    rows = []
    with _Folders(layout) as folders:
        for queue_id in names:
            message = read_message(folders, queue_id)
            if message is not None:
                rows.append(message)
    return rows


class _Folders:
    """Open hash folders, so that each file is opened by its name in one (openat)."""

    def __init__(self, layout: QueueLayout) -> None:
        self.layout = layout
        self._fds: dict[tuple[str, str], int] = {}

    def __enter__(self) -> _Folders:
        return self

    def __exit__(self, *exc: object) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()

    def open(self, queue: str, queue_id: str, flags: int) -> int:
        """The file's descriptor; FileNotFoundError when it (or its folder) is not there."""
        depth = self.layout.deferred_depth if queue == DEFERRED else self.layout.defer_depth
        key = (queue, queue_id[:depth])
        folder = self._fds.get(key)
        if folder is None:
            path = "/".join((self.layout.queue_dir, queue, *key[1]))
            folder = self._fds[key] = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
        return os.open(queue_id, flags, dir_fd=folder)


def read_message(folders: _Folders, queue_id: str) -> ListedRow | None:
    """One message (mail_open_ok, then showq_report); None when showq would skip it."""
    try:
        fd = folders.open(DEFERRED, queue_id, os.O_RDONLY | os.O_NOFOLLOW)
    except FileNotFoundError:
        return None  # delivered, or moved to another queue, since the folder was read
    except OSError as exc:
        raise NotAsShowq(f"{queue_id}: {exc}") from None
    try:
        st = os.fstat(fd)
        if st.st_mode & 0o170000 != 0o100000:
            raise NotAsShowq(f"{queue_id}: not a regular file")
        if st.st_mode & STAT_READY != STAT_READY:
            return None  # not complete: showq passes over it
        size = st.st_size
        facts = FileFacts(size, int(st.st_mtime), st.st_mode)
        first = os.read(fd, min(size, CHUNK))
        defer_log = _defer_log(folders, queue_id)
        read_at = _reader(fd, size)
        return deferred_row(queue_id, read_at, facts, defer_log, folders.layout.params, first)
    finally:
        os.close(fd)


def _reader(fd: int, size: int) -> Callable[[int, int], bytes]:
    def read_at(offset: int, n: int) -> bytes:
        # No more than the file holds: a large buffer costs more than the read.
        return os.pread(fd, max(0, min(n, size - offset)), offset)

    return read_at


LOG_READ = 1 << 13


def _defer_log(folders: _Folders, queue_id: str) -> bytes | None:
    try:
        fd = folders.open(DEFER_LOGS, queue_id, os.O_RDONLY)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise NotAsShowq(f"{queue_id}: defer log: {exc}") from None
    try:
        data = os.read(fd, LOG_READ)
        if len(data) < LOG_READ:
            return data
        chunks = [data]
        while chunk := os.read(fd, 1 << 16):
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


class Helper(PipedChild):
    """A forked process that reads some of the files and sends back their rows."""

    def __init__(self, layout: QueueLayout, names: list[str]) -> None:
        def child(write_fd: int) -> None:  # read, send; PipedChild leaves without clean-up
            try:
                reply: tuple[str, list[ListedRow] | str] = ("rows", read_rows(layout, names))
            except (NotAsShowq, OSError) as exc:
                reply = ("not", str(exc))
            data = marshal.dumps(reply)
            with os.fdopen(write_fd, "wb") as out:
                out.write(data)

        super().__init__(child)

    def rows(self) -> list[ListedRow]:
        assert self._pipe is not None
        data = self._pipe.read()
        status = self.close()
        if status != 0 or not data:
            raise NotAsShowq(f"the helper process ended with status {status}")
        # From the helper forked above, through a pipe of our own: nobody else's bytes.
        kind, rows = marshal.loads(data)  # noqa: S302
        if kind != "rows":
            raise NotAsShowq(str(rows))
        return list(rows)
