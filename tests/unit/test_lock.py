"""The queue lock between the service's cycles and a flush by hand (flocks in one process)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from rescue.errors import LockedError
from rescue.journal.lock import CycleLock, InstanceLock, WaitingLock, holder_of, turn_path


class Clock:
    """A clock that moves only when the waiting lock sleeps; `on_sleep` acts meanwhile."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.slept = 0
        self.on_sleep: list[object] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds
        self.slept += 1
        if self.on_sleep:
            action = self.on_sleep.pop(0)
            assert callable(action)
            action()


def waiting(path: Path, clock: Clock, wait: float, seen: list[tuple[str, float]]) -> WaitingLock:
    return WaitingLock(
        path,
        "flush",
        wait=wait,
        progress=lambda holder, waited: seen.append((holder, waited)),
        clock=clock,
        sleep=clock.sleep,
    )


def test_a_free_lock_is_taken_at_once_and_names_its_holder(tmp_path: Path) -> None:
    path = tmp_path / "journal.sqlite3.lock"
    clock = Clock()
    with waiting(path, clock, 0, []):
        holder = holder_of(path)
        assert holder is not None and holder.startswith(f"pid {os.getpid()} (queue-rescue flush")
        assert "waiting since" in (holder_of(turn_path(path)) or "")
    assert clock.slept == 0
    assert holder_of(path) is None and holder_of(turn_path(path)) is None


def test_the_flush_waits_for_the_cycle_and_the_service_skips_the_next(tmp_path: Path) -> None:
    path = tmp_path / "journal.sqlite3.lock"
    service = CycleLock(path)
    assert service.take() is None  # a cycle under way
    clock = Clock()
    seen: list[tuple[str, float]] = []
    flush = waiting(path, clock, 120, seen)
    # While the flush waits, the service's cycle ends and its next one is due at once,
    # before the flush looks again: that cycle must not start.
    next_cycle: list[str | None] = []

    def cycle_ends_and_next_is_due() -> None:
        service.give_back()
        next_cycle.append(service.take())

    clock.on_sleep = [lambda: None, cycle_ends_and_next_is_due]
    flush.acquire()
    try:
        assert seen and "queue-rescue run, cycle since" in seen[0][0]
        assert len(next_cycle) == 1 and next_cycle[0] is not None
        assert "queue-rescue flush, waiting since" in next_cycle[0]
        holder = service.take()
        assert holder is not None and "queue-rescue flush" in holder
    finally:
        flush.release()
    assert service.take() is None  # the flush is done: the next cycle runs
    service.give_back()


def test_a_waiting_flush_keeps_the_service_from_starting_a_cycle(tmp_path: Path) -> None:
    path = tmp_path / "journal.sqlite3.lock"
    other = InstanceLock(path, "flush")
    other.acquire()  # another flush has the queue
    clock = Clock()
    service = CycleLock(path)
    checked: list[str | None] = []
    clock.on_sleep = [lambda: checked.append(service.take()), other.release]
    flush = waiting(path, clock, 120, [])
    with flush:
        pass
    # The service looked while the second flush waited: it saw someone in turn.
    assert checked and checked[0] is not None and "waiting since" in checked[0]


def test_after_the_wait_it_gives_up_naming_the_holder(tmp_path: Path) -> None:
    path = tmp_path / "journal.sqlite3.lock"
    service = CycleLock(path)
    assert service.take() is None
    clock = Clock()
    seen: list[tuple[str, float]] = []
    with pytest.raises(LockedError) as info:
        waiting(path, clock, 5, seen).acquire()
    assert "queue-rescue run" in info.value.holder
    assert info.value.waited >= 5 and "waited 5s" in str(info.value)
    assert clock.now - 1000.0 == pytest.approx(5)
    # Giving up gave the turn back: the service's next cycle runs.
    service.give_back()
    assert service.take() is None
    service.give_back()


def test_no_wait_fails_at_once(tmp_path: Path) -> None:
    path = tmp_path / "journal.sqlite3.lock"
    with InstanceLock(path, "export"):
        clock = Clock()
        with pytest.raises(LockedError) as info:
            waiting(path, clock, 0, []).acquire()
    assert clock.slept == 0 and "queue-rescue export" in info.value.holder
    assert "waited" not in str(info.value)


def test_a_dead_holders_line_is_not_a_holder(tmp_path: Path) -> None:
    path = tmp_path / "journal.sqlite3.lock"
    path.write_text("pid 999999999 (queue-rescue flush, since 2020-01-01 00:00:00 +0000)\n")
    assert holder_of(path) is None
    path.write_text("")
    assert holder_of(path) is None
