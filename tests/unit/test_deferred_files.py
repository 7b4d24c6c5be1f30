"""Finding the deferred queue's files as showq does (rescue.postfix.deferred_files)."""

from __future__ import annotations

from pathlib import Path

import pytest

from rescue.postfix.deferred import NotAsShowq
from rescue.postfix.deferred_files import layout_of, queue_files
from rescue.postfix.files_listing import FilesListing


def touch(root: Path, *parts: str) -> None:
    path = root.joinpath(*parts)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")


def test_layout_from_postconf() -> None:
    answers = ["/var/spool/postfix", "MAILER-DAEMON", "1000", "2", "deferred, defer", "[relay]"]
    layout = layout_of(answers, None)
    assert (layout.deferred_depth, layout.defer_depth) == (2, 2)
    assert layout.path("deferred", "4F2A81C0B1") == "/var/spool/postfix/deferred/4/F/4F2A81C0B1"
    assert layout.path("defer", "4F2A81C0B1") == "/var/spool/postfix/defer/4/F/4F2A81C0B1"
    assert layout.params.duplicate_filter_limit == 1000
    flat = layout_of(["/q", "postmaster", "0", "1", "defer", ""], "/copy")
    assert (flat.queue_dir, flat.deferred_depth, flat.defer_depth) == ("/copy", 0, 1)
    assert flat.params.empty_address == "postmaster"
    with pytest.raises(NotAsShowq):
        layout_of(["/q", "MAILER-DAEMON", "x", "1", "deferred", ""], None)
    with pytest.raises(NotAsShowq):
        layout_of(["/q"], None)


@pytest.mark.parametrize("depth", [0, 1, 2])
def test_queue_files_at_any_hash_depth(tmp_path: Path, depth: int) -> None:
    ids = ["4F2A81C0B1", "4E00000001", "A000000002"]
    for queue_id in ids:
        touch(tmp_path, *queue_id[:depth], queue_id)
    assert sorted(queue_files(str(tmp_path), depth)) == sorted(ids)


@pytest.mark.parametrize(
    "parts",
    [
        ("5", "4F2A81C0B1"),  # in another id's hash folder: showq looks where it hashes to
        ("4F2A81C0B1",),  # not in a hash folder at depth 1
        ("4", "4F2A81C0B1x"),  # not a short queue id (a long one, or a stray file)
        ("4", "4F2A81c0b1"),
    ],
)
def test_files_showq_decides_on_are_left_to_it(tmp_path: Path, parts: tuple[str, ...]) -> None:
    touch(tmp_path, *parts)
    with pytest.raises(NotAsShowq):
        queue_files(str(tmp_path), 1)


def test_a_one_character_file_is_left_to_showq(tmp_path: Path) -> None:
    touch(tmp_path, "4")
    with pytest.raises(NotAsShowq):
        queue_files(str(tmp_path), 1)


def test_without_postconf_the_listing_is_left_to_showq(tmp_path: Path) -> None:
    files = FilesListing((str(tmp_path), str(tmp_path / "no-such-folder"), None))
    assert files.messages() is None
    assert "postconf" in files.problem
    assert files.relayhost is None


def test_a_failing_postconf_is_left_to_showq(tmp_path: Path) -> None:
    postconf = tmp_path / "postconf"
    postconf.write_text("#!/bin/sh\necho 'postconf: fatal: no main.cf' >&2\nexit 1\n")
    postconf.chmod(0o755)
    files = FilesListing((str(tmp_path), str(tmp_path), None))
    assert files.messages() is None
    assert "exited with status 1" in files.problem
