"""The edge to a live Postfix: postqueue, postsuper and postcat, batched where possible."""

from __future__ import annotations

import logging
import os
import re
import subprocess
import time
from collections.abc import Generator, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, cast

from rescue.config import PostfixConfig
from rescue.errors import PostfixError, PostsuperFailed, QueueFileError
from rescue.model import Envelope, QueuedMessage, Recipient
from rescue.postfix.listing import BadLine, parse_listing

# postsuper reports each message it acted on: "postsuper: ABC123: placed on hold".
_POSTSUPER_LINE = re.compile(
    rb"^postsuper: ([0-9A-Za-z]+): (placed on hold|released from hold|removed)"
)

# Queue ids are letters and digits only; anything else never reaches a command line.
_QUEUE_ID = re.compile(r"^[0-9A-Za-z]{5,32}$")

COMMAND_TIMEOUT = 300.0

log = logging.getLogger(__name__)


# How often a listing reader looks for more of postqueue's output when it has caught up.
FOLLOW_INTERVAL = 0.002
READ_SIZE = 1 << 16


def follow(proc: subprocess.Popen[bytes], spill: IO[bytes]) -> Iterator[bytes]:
    """The lines a running command writes to the file `spill`, as it writes them.

    A pipe would make postqueue (and showq behind it) wait whenever the reader
    is busy (a 64 KiB pipe holds about 180 lines); a file never does, and keeps
    the listing on disk rather than in memory. Reads use their own offset
    (pread), so the command's writes are not disturbed.
    """
    fd = spill.fileno()
    offset = 0
    partial = b""
    while True:
        chunk = os.pread(fd, READ_SIZE, offset)
        if chunk:
            offset += len(chunk)
            lines = (partial + chunk).split(b"\n")
            partial = lines.pop()
            yield from lines
        elif proc.poll() is None:
            time.sleep(FOLLOW_INTERVAL)
        elif not os.pread(fd, 1, offset):  # exited: everything it wrote is in the file
            break
    if partial:
        yield partial


def valid_queue_id(queue_id: str) -> bool:
    return bool(_QUEUE_ID.match(queue_id))


@dataclass(frozen=True, slots=True)
class Postfix:
    """Runs Postfix's own commands against one instance (`-c config_dir`)."""

    config: PostfixConfig

    def _command(self, name: str) -> list[str]:
        return [str(self.config.command_dir / name), "-c", str(self.config.config_dir)]

    def _run(self, args: list[str], stdin: bytes = b"") -> subprocess.CompletedProcess[bytes]:
        # A session of its own: Ctrl-C at the terminal (sent to the whole foreground
        # process group) must not stop a postsuper part way; the flush waits for it.
        try:
            proc = subprocess.Popen(
                args,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                start_new_session=True,
            )
        except FileNotFoundError:
            raise PostfixError(f"{args[0]} not found (check [postfix] command_dir)") from None
        except PermissionError:
            raise PostfixError(f"{args[0]}: permission denied") from None
        except OSError as exc:
            raise PostfixError(f"cannot start {args[0]}: {exc}") from None
        with proc:
            try:
                out, err = proc.communicate(stdin, timeout=COMMAND_TIMEOUT)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.communicate()
                raise PostfixError(
                    f"{' '.join(args)} did not finish in {COMMAND_TIMEOUT:.0f}s"
                ) from None
            except KeyboardInterrupt:
                # A signal turned into KeyboardInterrupt (Ctrl-C, an export's SIGTERM):
                # subprocess.run would kill postsuper part way, leaving messages held that
                # nobody knows of. Let it finish, then let the interruption go on; the
                # caller gives back what it asked for.
                proc.communicate(timeout=COMMAND_TIMEOUT)
                raise
        return subprocess.CompletedProcess(args, proc.returncode, out, err)

    # --- reading ------------------------------------------------------------------------

    def listing(self) -> Iterator[QueuedMessage | BadLine]:
        """Stream `postqueue -j`.

        A message that moves from one queue to another while showq reads them may
        be listed twice; the inventory keeps the first (see inventory_parts).

        The command starts at once, before the first item is asked for: showq works
        while the caller prepares (loads the catalog, asks postconf), so call this
        first and iterate the result to its end. Closing the result (`close()`),
        even before the first item, stops the command.
        """
        args = [*self._command("postqueue"), "-j"]
        import tempfile  # noqa: PLC0415  (not for a scan that reads the queue's files)

        spill = tempfile.TemporaryFile(prefix="queue-rescue-listing-")  # noqa: SIM115 (closed by the reader)
        try:
            proc = subprocess.Popen(args, stdout=spill, stderr=subprocess.PIPE)
        except FileNotFoundError:
            spill.close()
            raise PostfixError(f"{args[0]} not found (check [postfix] command_dir)") from None
        reader = self._read_listing(proc, spill)
        next(reader)  # into its try: from now on closing the reader also ends postqueue
        return cast(Iterator[QueuedMessage | BadLine], reader)  # the None is taken

    @staticmethod
    def _read_listing(
        proc: subprocess.Popen[bytes], spill: IO[bytes]
    ) -> Generator[QueuedMessage | BadLine | None, None, None]:
        """None first (listing() takes it), then the entries."""
        try:
            yield None
            yield from parse_listing(follow(proc, spill))
        finally:
            spill.close()
            if proc.poll() is None:  # the reader stopped early
                proc.kill()
            stderr = proc.stderr.read() if proc.stderr else b""
            code = proc.wait()
        if code != 0:
            detail = stderr.decode("utf-8", "replace").strip() or f"exit status {code}"
            raise PostfixError(f"postqueue -j failed: {detail}")

    def queue_directory(self) -> Path:
        if self.config.queue_directory is not None:
            return self.config.queue_directory
        result = self._run([*self._command("postconf"), "-h", "queue_directory"])
        if result.returncode != 0:
            raise PostfixError("postconf -h queue_directory failed: " + _text(result.stderr))
        return Path(result.stdout.decode().strip())

    def postconf(self, name: str, *, expand: bool = False) -> str:
        """A parameter's value; `expand` replaces $name references (postconf -x)."""
        flags = ["-x", "-h"] if expand else ["-h"]
        result = self._run([*self._command("postconf"), *flags, name])
        if result.returncode != 0:
            raise PostfixError(f"postconf -h {name} failed: " + _text(result.stderr))
        return result.stdout.decode("utf-8", "replace").strip()

    def postconf_service(self, field: str) -> str:
        """A master.cf field, e.g. "lmtp/unix/chroot" (`postconf -Fh`)."""
        result = self._run([*self._command("postconf"), "-Fh", field])
        if result.returncode != 0:
            raise PostfixError(f"postconf -Fh {field} failed: " + _text(result.stderr))
        return result.stdout.decode("utf-8", "replace").strip()

    def read_envelope(self, queue_id: str, *, only_in: str | None = None) -> Envelope:
        """Envelope and content through postcat (two process starts; the slow path).

        Raises FileNotFoundError when the message is gone, or with `only_in` (a queue
        name such as "hold") when postcat found it in another queue; QueueFileError
        when it cannot be read. The envelope is read last, so that the queue it names
        is where the message was once its content had been read.
        """
        content = self._postcat(queue_id, "-bh")
        envelope = self._postcat(queue_id, "-e")
        if only_in is not None:
            found = postcat_queue(envelope)
            if found is None:
                raise QueueFileError(queue_id, "postcat -e did not say which queue it read")
            if found != only_in:
                raise FileNotFoundError(f"{queue_id} is in the {found} queue, not in {only_in}")
        return envelope_from_postcat(queue_id, envelope, content)

    def _postcat(self, queue_id: str, flags: str) -> bytes:
        if not valid_queue_id(queue_id):
            raise QueueFileError(queue_id, "not a queue id")
        result = self._run([*self._command("postcat"), flags, "-q", queue_id])
        if result.returncode != 0:
            detail = _text(result.stderr)
            if "not found" in detail or "No such file" in detail:
                raise FileNotFoundError(queue_id)
            raise QueueFileError(queue_id, f"postcat {flags} failed: {detail}")
        return result.stdout

    # --- changing the queue (batched: one process for any number of ids) ----------------

    def _postsuper(self, flag: str, queue_ids: Iterable[str], queue: str) -> set[str]:
        ids = [q for q in queue_ids if valid_queue_id(q)]
        if not ids:
            return set()
        stdin = "".join(f"{q}\n" for q in ids).encode()
        result = self._run([*self._command("postsuper"), flag, "-", queue], stdin)
        done = {
            m.group(1).decode()
            for line in result.stderr.splitlines()
            if (m := _POSTSUPER_LINE.match(line))
        }
        if result.returncode != 0:
            # It may have acted on more than it reported (a line lost as it stopped): the
            # caller treats every id not in `done` as possibly acted on. Its complaint is
            # given without the lines for each message it did act on.
            said = b"\n".join(
                line for line in result.stderr.splitlines() if not _POSTSUPER_LINE.match(line)
            )
            raise PostsuperFailed(
                f"postsuper {flag} - {queue} failed (exit status {result.returncode}, after "
                f"acting on {len(done)} of {len(ids)} messages): {_text(said)}",
                frozenset(done),
            )
        return done

    def hold(self, queue_ids: Iterable[str]) -> set[str]:
        """Hold messages that are in the deferred queue now; returns those really held.

        Limiting to `deferred` leaves alone a message the queue manager is delivering.
        A postsuper that fails, also part way, raises PostsuperFailed: nothing of that
        hold is sent, and the caller releases every message it asked to hold (any id not
        in the error's `done` may be held all the same).
        """
        return self._postsuper("-h", queue_ids, "deferred")

    def release(self, queue_ids: Iterable[str]) -> set[str]:
        """Move held messages back to the deferred queue, where Postfix retries them."""
        return self._postsuper("-H", queue_ids, "hold")

    def delete(self, queue_ids: Iterable[str]) -> set[str]:
        """Delete messages from the hold queue only (never one Postfix is working on)."""
        return self._postsuper("-d", queue_ids, "hold")


def _text(data: bytes) -> str:
    return " ".join(data.decode("utf-8", "replace").split())[:500]


# --- postcat output (pure) --------------------------------------------------------------

# Postfix's dsn_mask.h: NEVER 1, SUCCESS 2, FAILURE 4, DELAY 8; RET FULL 1, HDRS 2.
_NOTIFY_WORDS = ((2, "SUCCESS"), (8, "DELAY"), (4, "FAILURE"))
_NOTIFY_NEVER = 1
_RET = {"1": "FULL", "2": "HDRS"}


def notify_keywords(flags: int) -> str | None:
    """RFC 3461 NOTIFY keywords from Postfix's stored bit mask; None when unset."""
    if not flags:
        return None
    if flags & _NOTIFY_NEVER:
        return "NEVER"
    return ",".join(word for bit, word in _NOTIFY_WORDS if flags & bit) or None


_ENVELOPE_HEADING = re.compile(rb"^\*\*\* ENVELOPE RECORDS (\S+) \*\*\*$", re.MULTILINE)


def postcat_queue(envelope: bytes) -> str | None:
    """The queue `postcat -e -q ID` read the message from ("hold", "deferred", ...).

    postcat names the file it read in its first line: "*** ENVELOPE RECORDS hold/ID ***"
    (deferred/A/ID with hashed queue folders).
    """
    found = _ENVELOPE_HEADING.search(envelope)
    if found is None:
        return None
    return found.group(1).decode("ascii", "replace").split("/", 1)[0]


def envelope_from_postcat(queue_id: str, envelope: bytes, content: bytes) -> Envelope:
    """An Envelope from `postcat -e` records: pending recipients with their DSN data.

    `recipient:` records are pending; Postfix rewrites a delivered one in place
    into `done_recipient:`. DSN records come before the recipient they belong to.
    """
    sender: str | None = None
    envid = ret = None
    recipients: list[Recipient] = []
    orcpt: str | None = None
    notify: str | None = None
    for raw in envelope.splitlines():
        line = raw.decode("utf-8", "surrogateescape")
        name, sep, value = line.partition(": ")
        if not sep:
            continue
        if name == "named_attribute":
            # Postfix 3.x keeps DSN data as named attributes before each recipient.
            name, _, value = value.partition("=")
        if name == "sender":
            sender = value
        elif name in ("envelope_id", "dsn_envid"):
            envid = value or None
        elif name in ("ret_flags", "dsn_ret"):
            ret = _RET.get(value.strip())
        elif name == "dsn_orig_rcpt":
            orcpt = value or None
        elif name in ("notify_flags", "dsn_notify_flags"):
            notify = notify_keywords(int(value)) if value.strip().isdigit() else None
        elif name in ("recipient", "done_recipient"):
            if name == "recipient":
                recipients.append(Recipient(address=value, orig_rcpt=orcpt, notify=notify))
            orcpt = notify = None
    if sender is None:
        raise QueueFileError(queue_id, "postcat shows no sender record")
    return Envelope(
        queue_id=queue_id,
        sender=sender,
        recipients=tuple(recipients),
        content=content,
        envid=envid,
        ret=ret,
    )
