"""The export format: each message as a pair NAME.eml (content) and NAME.json (envelope).

NAME is the Postfix queue id. The .eml holds the header and body exactly as
Postfix queued them (what `postcat -bh` prints): lines end in LF, no
dot-stuffing, 8-bit bytes as received; a sender turns LF into CRLF. The .json
is the envelope (see `envelope_json`); it is written after the .eml and
carries the .eml's size and SHA-256, so a pair whose .json exists is complete
and a damaged .eml is noticed. Both are written to a temporary name, fsynced
and renamed; the caller fsyncs the folder.

`ExportQueue` is a MailQueue over such a folder for `flush --from`: a pair it
holds moves to ``queue-rescue/held/``, a sent pair to ``queue-rescue/done/``;
nothing is deleted. The .json's folder tells where a pair stands; the .eml
moves first, so after a crash between the two moves it is looked for in the
other folders too.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

from rescue.errors import QueueFileError, RescueError
from rescue.model import Envelope, QueuedMessage, Recipient
from rescue.postfix.listing import BadLine
from rescue.sources.spool import (
    DONE_FOLDER,
    HELD_FOLDER,
    JOURNAL_NAME,
    SIDE_FOLDER,
    bad_file,
    move,
    sync_folders,
)

log = logging.getLogger(__name__)

FORMAT = "queue-rescue-export"
VERSION = 1
EML = ".eml"
JSON = ".json"
TMP = ".tmp"  # ".NAME.eml.tmp": being written; readers pass over dot files
FILE_MODE = 0o600  # mail is private
FOLDER_MODE = 0o700
# A pair's name: a queue id, or any name of letters, digits, "-" and "_" another tool chose.
_NAME = re.compile(r"[0-9A-Za-z][0-9A-Za-z_-]{0,127}")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")  # never in an SMTP command line
_SHA256 = re.compile(r"[0-9a-f]{64}")
_NOTIFY = frozenset({"SUCCESS", "FAILURE", "DELAY"})  # RFC 3461 section 4.1, or NEVER alone
_RET = frozenset({"FULL", "HDRS"})


class ExportError(RescueError):
    """A folder cannot be used as an export."""


class PairError(QueueFileError):
    """One file of an export cannot be used; `path` says which, `reason` why."""

    def __init__(self, path: Path, reason: str) -> None:
        super().__init__(path.name.split(".")[0], f"{path}: {reason}")
        self.path = path
        self.reason = reason


def valid_name(name: str) -> bool:
    return bool(_NAME.fullmatch(name))


# --- writing --------------------------------------------------------------------------


def envelope_json(
    envelope: Envelope, *, arrival_time: int, size: int, hostname: str | None
) -> dict[str, Any]:
    """The .json of a pair: everything needed to send the .eml on, and to check it."""
    return {
        "format": FORMAT,
        "version": VERSION,
        "queue_id": envelope.queue_id,
        "hostname": hostname,
        "arrival_time": arrival_time,
        "size": size,
        "sender": envelope.sender,
        "envid": envelope.envid,
        "ret": envelope.ret,
        "recipients": [
            {
                "address": r.address,
                "orcpt": r.orig_rcpt,
                "notify": r.notify,
                "delay_reason": r.delay_reason,
            }
            for r in envelope.recipients
        ],
        "content_size": len(envelope.content),
        "content_sha256": hashlib.sha256(envelope.content).hexdigest(),
        "exported_at": int(time.time()),
    }


def _dumps(obj: Mapping[str, Any]) -> bytes:
    try:
        return (json.dumps(obj, ensure_ascii=False, indent=1) + "\n").encode("utf-8")
    except UnicodeEncodeError:
        # An address with bytes that are not UTF-8 (kept as surrogates): \udcXX escapes.
        return (json.dumps(obj, indent=1) + "\n").encode("ascii")


def _write_file(path: Path, data: bytes) -> None:
    """Write to .NAME.tmp, fsync, rename over NAME: the name never shows a partial file."""
    tmp = path.with_name(f".{path.name}{TMP}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, FILE_MODE)
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_pair(
    folder: Path, envelope: Envelope, *, arrival_time: int, size: int, hostname: str | None
) -> tuple[Path, Path, bool]:
    """Write NAME.eml, then NAME.json; returns their paths and whether they are new.

    A complete pair of the same message (queue id, arrival time and size) that is
    already there is kept as it is (not new); a pair of another message with the
    same name raises PairError. The caller fsyncs the folder.
    """
    name = envelope.queue_id
    eml, js = folder / (name + EML), folder / (name + JSON)
    if not valid_name(name):
        raise PairError(js, "not a usable name")
    held = folder / SIDE_FOLDER / HELD_FOLDER / (name + JSON)
    if held.exists():
        raise PairError(held, "a pair of this name is being sent (flush --from); run it first")
    if js.exists():
        try:
            message, _ = read_pair(js, eml)
        except PairError:
            message = None  # a damaged copy: replaced by a good one below
        if message is not None:
            if (message.arrival_time, message.size) == (arrival_time, size):
                return eml, js, False
            raise PairError(js, "holds another message with this queue id (from another host?)")
    record = envelope_json(envelope, arrival_time=arrival_time, size=size, hostname=hostname)
    _write_file(eml, envelope.content)
    try:
        _write_file(js, _dumps(record))
    except BaseException:
        eml.unlink(missing_ok=True)  # no .eml without its .json
        raise
    return eml, js, True


def remove_pair(eml: Path, js: Path) -> None:
    """Take back a pair this run wrote but could not confirm (.json first: no longer a pair)."""
    for path in (js, eml):
        path.unlink(missing_ok=True)


# --- reading --------------------------------------------------------------------------


def _field(obj: Mapping[str, Any], key: str, kind: type, path: Path, *, required: bool) -> Any:
    value = obj.get(key)
    if value is None:
        if required:
            raise PairError(path, f'no "{key}"')
        return None
    if not isinstance(value, kind) or isinstance(value, bool):
        raise PairError(path, f'"{key}" must be a {kind.__name__}, not {value!r:.60}')
    return value


def _text(obj: Mapping[str, Any], key: str, path: Path, *, required: bool = False) -> str | None:
    value: str | None = _field(obj, key, str, path, required=required)
    if value is not None and _CONTROL.search(value):
        raise PairError(path, f'"{key}" contains control characters: {value!r:.80}')
    return value


def _count(obj: Mapping[str, Any], key: str, path: Path, *, required: bool = False) -> int | None:
    value: int | None = _field(obj, key, int, path, required=required)
    if value is not None and value < 0:
        raise PairError(path, f'"{key}" must not be negative')
    return value


def _recipient(item: object, path: Path) -> Recipient:
    if not isinstance(item, dict):
        raise PairError(path, f"a recipient must be an object, not {item!r:.60}")
    address = _text(item, "address", path, required=True)
    notify = _text(item, "notify", path)
    if notify is not None:
        words = notify.upper().split(",")
        if words != ["NEVER"] and not (set(words) <= _NOTIFY and len(set(words)) == len(words)):
            raise PairError(path, f'"notify" must be NEVER or SUCCESS,FAILURE,DELAY: {notify!r}')
        notify = notify.upper()
    reason = _field(item, "delay_reason", str, path, required=False)
    return Recipient(
        address=address or "",
        delay_reason=reason or "",
        orig_rcpt=_text(item, "orcpt", path),
        notify=notify,
    )


def _envelope_record(data: bytes, path: Path) -> dict[str, Any]:
    try:
        obj = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise PairError(path, f"not JSON ({exc})") from None
    except RecursionError:
        raise PairError(path, "not JSON (nested too deep)") from None
    if not isinstance(obj, dict) or obj.get("format") != FORMAT:
        raise PairError(path, f'not an export envelope (no "format": "{FORMAT}")')
    version = _count(obj, "version", path, required=True)
    if version is None or version > VERSION:
        raise PairError(path, f"format version {version} is newer than this queue-rescue reads")
    return obj


def read_pair(js: Path, eml: Path | None) -> tuple[QueuedMessage, Envelope]:
    """A pair as a listing entry and an envelope; PairError names the file at fault.

    FileNotFoundError passes through when the .json itself is gone.
    """
    _, message, envelope = _load(js, eml)
    return message, envelope


def _load(js: Path, eml: Path | None) -> tuple[dict[str, Any], QueuedMessage, Envelope]:
    name = js.name.removesuffix(JSON)
    try:
        data = js.read_bytes()
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise PairError(js, f"cannot read: {exc.strerror or exc}") from None
    obj = _envelope_record(data, js)
    sender = _text(obj, "sender", js, required=True) or ""
    recipients = obj.get("recipients")
    if not isinstance(recipients, list) or not recipients:
        raise PairError(js, '"recipients" must be a list of at least one recipient')
    pending = tuple(_recipient(item, js) for item in recipients)
    ret = _text(obj, "ret", js)
    if ret is not None and ret.upper() not in _RET:
        raise PairError(js, f'"ret" must be FULL or HDRS, not {ret!r:.40}')
    arrival = _count(obj, "arrival_time", js, required=True) or 0
    digest = _text(obj, "content_sha256", js)
    if digest is not None and not _SHA256.fullmatch(digest):
        raise PairError(js, '"content_sha256" must be 64 lowercase hex digits')
    _text(obj, "queue_id", js)
    content = _content(name, eml, js, _count(obj, "content_size", js), digest)
    envelope = Envelope(
        queue_id=name,
        sender=sender,
        recipients=pending,
        content=content,
        envid=_text(obj, "envid", js),
        ret=ret.upper() if ret else None,
    )
    size = _count(obj, "size", js)
    message = QueuedMessage(
        queue_id=name,
        queue_name="deferred",
        arrival_time=arrival,
        size=len(content) if size is None else size,
        sender=sender,
        recipients=pending,
    )
    return obj, message, envelope


def _content(name: str, eml: Path | None, js: Path, size: int | None, digest: str | None) -> bytes:
    if eml is None:
        raise PairError(js, f"no {name}{EML} next to it (incomplete pair)")
    try:
        content = eml.read_bytes()
    except FileNotFoundError:
        raise PairError(js, f"no {name}{EML} next to it (incomplete pair)") from None
    except OSError as exc:
        raise PairError(eml, f"cannot read: {exc.strerror or exc}") from None
    if size is not None and len(content) != size:
        raise PairError(eml, f"is {len(content)} bytes, its envelope says {size} (truncated?)")
    if digest is not None and hashlib.sha256(content).hexdigest() != digest:
        raise PairError(eml, "does not match the SHA-256 in its envelope (changed or damaged)")
    return content


# --- an export folder as a mail queue -----------------------------------------------------


class ExportQueue:
    """A MailQueue over an export folder: pending pairs are "deferred", ours held "hold"."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.side = self.root / SIDE_FOLDER
        self.held = self.side / HELD_FOLDER
        self.done = self.side / DONE_FOLDER

    @property
    def journal_path(self) -> Path:
        return self.side / JOURNAL_NAME

    def check(self) -> None:
        if not self.root.is_dir():
            raise ExportError(f"{self.root}: no such folder")

    def _eml(self, name: str, folder: Path) -> Path | None:
        """The pair's .eml: next to its .json, else where a crash between two moves left it."""
        # The .eml moves before its .json: held -> root/done leaves it ahead in root or done,
        # root -> held leaves it ahead in held.
        places = (
            (self.root, self.held) if folder == self.root else (self.held, self.root, self.done)
        )
        for place in places:
            path = place / (name + EML)
            if path.is_file():
                return path
        return None

    def listing(self) -> Iterator[QueuedMessage | BadLine]:
        """Every pair, held ones first; unusable files come as BadFile with their path."""
        seen: dict[str, Path] = {}
        same: dict[tuple[str, int, int], Path] = {}
        for folder, queue_name in ((self.held, "hold"), (self.root, "deferred")):
            for path in _files(folder):
                name, suffix = path.name[: -len(path.suffix) or None], path.suffix
                if suffix == EML:
                    if not any((f / (name + JSON)).exists() for f in self._folders()):
                        yield bad_file(path, f"no {name}{JSON}: incomplete pair", name)
                    continue
                if suffix != JSON or not valid_name(name):
                    if folder == self.root:
                        yield bad_file(path, "not part of an export (NAME.eml + NAME.json)")
                    continue
                if name in seen:
                    yield bad_file(path, f"same name as {seen[name]}; skipped", name)
                    continue
                try:
                    record, message, _ = _load(path, self._eml(name, folder))
                except PairError as exc:
                    yield bad_file(exc.path, exc.reason, name)
                    continue
                except FileNotFoundError:
                    continue
                # A copy under another name would be sent twice: the original id tells.
                original = (record.get("queue_id") or name, message.arrival_time, message.size)
                if original in same:
                    yield bad_file(path, f"the same message as {same[original]}; skipped", name)
                    continue
                seen[name], same[original] = path, path
                yield replace(message, queue_name=queue_name)

    def _folders(self) -> tuple[Path, Path, Path]:
        return self.root, self.held, self.done

    def read_envelope(self, queue_id: str) -> Envelope:
        """Envelope and content of a pair we hold; FileNotFoundError when it is gone."""
        for folder in (self.held, self.root):
            js = folder / (queue_id + JSON)
            if valid_name(queue_id) and js.exists():
                return read_pair(js, self._eml(queue_id, folder))[1]
        raise FileNotFoundError(queue_id)

    def hold(self, queue_ids: Iterable[str]) -> set[str]:
        """Move pending pairs to queue-rescue/held/; returns those moved."""
        return self._move_pairs(queue_ids, self.root, self.held)

    def release(self, queue_ids: Iterable[str]) -> set[str]:
        """Move held pairs back to the export folder."""
        return self._move_pairs(queue_ids, self.held, self.root)

    def delete(self, queue_ids: Iterable[str]) -> set[str]:
        """Move held pairs to queue-rescue/done/: sent, and kept."""
        return self._move_pairs(queue_ids, self.held, self.done)

    def _move_pairs(self, names: Iterable[str], src: Path, dst: Path) -> set[str]:
        moved: set[str] = set()
        touched: set[Path] = set()
        for name in names:
            js = src / (name + JSON)
            if not valid_name(name) or not js.is_file():
                continue
            eml = self._eml(name, src)
            if eml is not None and eml.parent == dst:  # moved ahead before a crash
                stem = eml.name.removesuffix(EML)
            elif dst == self.done:  # an earlier pair of this name there: NAME.1, NAME.2, ...
                stem = _free_stem(dst, name)
            else:
                stem = name
            try:
                if eml is not None and eml.parent != dst:
                    move(eml, dst / (stem + EML), touched)
                move(js, dst / (stem + JSON), touched)
            except OSError as exc:
                log.error("%s: cannot move %s to %s: %s", name, js, dst, exc)
                continue
            moved.add(name)
        sync_folders(touched)
        return moved


def _free_stem(folder: Path, name: str) -> str:
    stem, n = name, 0
    while (folder / (stem + JSON)).exists() or (folder / (stem + EML)).exists():
        n += 1
        stem = f"{name}.{n}"
    return stem


def _files(folder: Path) -> Iterator[Path]:
    """Regular files directly in `folder` (not dot files), by name."""
    try:
        entries = sorted(os.scandir(folder), key=lambda e: e.name)
    except (FileNotFoundError, NotADirectoryError):
        return
    for entry in entries:
        if not entry.name.startswith(".") and entry.is_file(follow_symlinks=False):
            yield Path(entry.path)
