"""The read-ahead helper process: same envelopes as the reader, and what it cannot read."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

import pytest

from rescue.errors import QueueFileError
from rescue.flush.prefetch import ASK_AGAIN, BROKEN, FOUND, Prefetcher, read_batch
from rescue.postfix.queuefile import read_queue_file
from tests.lab import wait_for
from tests.unit.queuefile_build import GOOD


def held_queue(tmp_path: Path, names: list[str]) -> Path:
    (tmp_path / "hold").mkdir()
    for name in names:
        (tmp_path / "hold" / name).write_bytes(GOOD)
    return tmp_path


def test_read_batch_reads_what_the_reader_reads(tmp_path: Path) -> None:
    queue = held_queue(tmp_path, ["AAAAA10001", "AAAAA10002"])
    (queue / "hold" / "BADBAD0001").write_bytes(GOOD[:40])
    results = read_batch(str(queue), ["AAAAA10001", "BADBAD0001", "GONE000001"])
    kind, envelope = results["AAAAA10001"]
    assert kind == FOUND
    assert envelope == read_queue_file(queue / "hold" / "AAAAA10001").envelope()
    assert results["BADBAD0001"][0] == BROKEN
    assert results["GONE000001"] == (ASK_AGAIN, None)


def test_prefetcher_hands_out_envelopes_in_any_order(tmp_path: Path) -> None:
    names = [f"AAAA{n:06d}" for n in range(150)]
    queue = held_queue(tmp_path, names)
    (queue / "hold" / names[70]).write_bytes(GOOD[:40])

    async def go() -> tuple[list[object], object]:
        prefetcher = Prefetcher(str(queue), names)
        try:
            got = [await prefetcher.get(name) for name in reversed(names) if name != names[70]]
            with pytest.raises(QueueFileError) as broken:
                await prefetcher.get(names[70])
            unknown = await prefetcher.get("NOTINLIST1")
            return got, (broken.value.queue_id, unknown)
        finally:
            prefetcher.close()

    got, (broken_id, unknown) = asyncio.run(go())
    assert len(got) == 149
    assert all(e is not None and e.sender == "sender@src.test" for e in got)
    assert broken_id == names[70]
    assert unknown is None  # not one it was asked to read: the flush's reader looks


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state not in ("Z", "X")


def test_the_helper_dies_with_a_killed_flush(tmp_path: Path) -> None:
    # A flush killed with SIGKILL cannot stop its helper: the helper must end by itself,
    # or it would wait for batches for ever and hold the flush's stdout open.
    read_end, write_end = os.pipe()
    child = os.fork()
    if child == 0:  # the flush
        try:
            prefetcher = Prefetcher(str(tmp_path))
            helpers = list(prefetcher._pool._processes or {})  # type: ignore[attr-defined]
            os.write(write_end, f"{helpers[0]}\n".encode())
            os.kill(os.getpid(), signal.SIGKILL)
        finally:
            os._exit(1)
    os.close(write_end)
    with os.fdopen(read_end) as pipe:
        helper = int(pipe.readline())
    os.waitpid(child, 0)
    wait_for(lambda: not _alive(helper), 30, "the helper to end")
