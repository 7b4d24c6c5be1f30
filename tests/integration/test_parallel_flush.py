"""A flush split over worker processes (--workers): the promises of a flush in one.

Each message accepted by the smarthost once and deleted, or back in Postfix's deferred
queue; none left on hold, also when the parent or a worker is killed or stopped.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import threading
from collections import Counter
from pathlib import Path

import pytest

from rescue.flush.parallel import worker_of
from tests.integration.kill_runs import FLUSH, kill_runs, submit_backlog
from tests.integration.rescue_cli import Rescue, smarthost_entry
from tests.integration.world import World, journal_states, submit
from tests.lab import wait_for
from tests.lab.faults import Fault
from tests.lab.smtpd import RecordingSmarthost

pytestmark = pytest.mark.postfix

TWO = ("--workers", "2")


def received_once(w: World) -> Counter[tuple[str, ...]]:
    counts = Counter(tuple(r.rcpt_tos) for r in w.smarthost.received)
    assert all(n == 1 for n in counts.values()), counts
    return counts


def workers_of(pid: int) -> list[int]:
    """The flush's worker processes: its children that run its own command line."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return []
    out = []
    for child in children:
        try:
            if Path(f"/proc/{child}/cmdline").read_bytes() == cmdline:
                out.append(int(child))
        except OSError:
            continue
    return out


def held_by_two_workers(
    w: World, rescue: Rescue, n: int
) -> tuple[subprocess.Popen[str], list[int], threading.Event]:
    """A split flush whose n messages are held while the smarthost keeps its greeting
    until the gate is set: (the flush, its two workers, the gate)."""
    gate = threading.Event()
    w.smarthost.script(Fault(stage="GREETING", action="hang", times=None, gate=gate))
    proc = rescue.popen("flush", "--yes", "--provider", "ionos", "--json", *TWO)
    w.lab.wait_for(lambda: len(w.lab.queue_ids("hold")) == n, 60, f"{n} held messages")
    workers = workers_of(proc.pid)
    assert len(workers) == 2
    return proc, workers, gate


def test_two_workers_send_each_message_once(w: World) -> None:
    ids = submit(w, 40)
    rescue = w.rescue("two")

    result = rescue.run("-v", "flush", "--yes", "--provider", "ionos", "--json", *TWO)

    assert result.code == 0, result.stderr
    assert "flush split over 2 worker processes" in result.stderr
    outcomes = [o for o in result.lines if "queue_id" in o]
    assert sorted(o["queue_id"] for o in outcomes) == sorted(ids)
    assert {o["action"] for o in outcomes} == {"rerouted"}
    assert result.summary["selected"] == 40 and result.summary["rerouted"] == 40
    assert len(received_once(w)) == 40
    assert w.lab.queue() == []
    assert journal_states(rescue) == Counter({"deleted": 40})
    # Each worker kept a side file of its own, emptied as it ended cleanly.
    sides = sorted(Path(rescue.journal_path).parent.glob("*-steps-*"))
    assert [p.name[-2:] for p in sides] == ["-0", "-1"]
    assert all(p.stat().st_size == 0 for p in sides)


def test_a_refusing_smarthost_gives_every_workers_messages_back(w: World) -> None:
    ids = submit(w, 12)
    w.smarthost.script(Fault(stage="GREETING", reply="421 4.3.2 closing", times=None))
    rescue = w.rescue("refused")

    result = rescue.run("flush", "--yes", "--provider", "ionos", "--json", *TWO)

    assert result.code == 1, result.stderr
    assert result.summary["released"] == 12 and result.summary["rerouted"] == 0
    assert w.smarthost.received == []
    assert w.lab.queue_ids("hold") == []
    assert sorted(w.lab.queue_ids("deferred")) == sorted(ids)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_to_the_parent_gives_back_what_the_workers_hold(
    w: World, sig: signal.Signals
) -> None:
    ids = submit(w, 8)
    w.smarthost.script(Fault(stage="GREETING", action="hang", times=None))
    rescue = w.rescue(f"parallel-{sig.name}")

    proc = rescue.popen("flush", "--yes", "--provider", "ionos", "--json", *TWO)
    w.lab.wait_for(lambda: len(w.lab.queue_ids("hold")) == 8, 60, "8 held messages")
    assert len(workers_of(proc.pid)) == 2
    if sig == signal.SIGINT:
        os.killpg(proc.pid, sig)  # Ctrl-C: the whole process group
    else:
        proc.send_signal(sig)
    out, err = proc.communicate(timeout=60)

    assert proc.returncode == 130, (out, err)
    assert w.lab.queue_ids("hold") == []
    assert sorted(w.lab.queue_ids("deferred")) == sorted(ids)
    assert journal_states(rescue) == Counter({"released": 8})
    assert '"released": 8' in out  # every worker's outcomes reached the summary
    assert w.smarthost.received == []


def test_workers_of_a_killed_flush_give_back_what_they_hold(w: World) -> None:
    ids = submit(w, 8)
    w.smarthost.script(Fault(stage="GREETING", action="hang", times=None))
    rescue = w.rescue("parent-killed")

    proc = rescue.popen("flush", "--yes", "--provider", "ionos", "--json", *TWO)
    w.lab.wait_for(lambda: len(w.lab.queue_ids("hold")) == 8, 60, "8 held messages")
    workers = workers_of(proc.pid)
    assert len(workers) == 2
    proc.send_signal(signal.SIGKILL)  # the parent only: its workers are told to stop
    proc.wait(timeout=30)
    wait_for(
        lambda: not any(Path(f"/proc/{p}").exists() for p in workers), 60, "the workers to end"
    )

    assert w.lab.queue_ids("hold") == []
    assert sorted(w.lab.queue_ids("deferred")) == sorted(ids)
    assert journal_states(rescue) == Counter({"released": 8})
    w.smarthost.clear_faults()
    again = rescue.run("flush", "--yes", "--provider", "ionos", "--json", *TWO)
    assert again.code == 0, again.stderr
    assert len(received_once(w)) == 8
    assert w.lab.queue() == []


def test_a_killed_worker_is_repaired_by_its_parent(w: World) -> None:
    ids = submit(w, 20)
    rescue = w.rescue("worker-killed")
    proc, workers, gate = held_by_two_workers(w, rescue, 20)
    os.kill(workers[0], signal.SIGKILL)  # as the OOM killer would
    wait_for(lambda: not Path(f"/proc/{workers[0]}").exists() or _zombie(workers[0]), 30, "")
    gate.set()  # the other worker's sessions go on and deliver
    _out, err = proc.communicate(timeout=120)

    assert proc.returncode == 1, err
    assert "ended unexpectedly (killed by signal 9)" in err
    assert "released to Postfix" in err  # the parent's recovery of what it held
    assert w.lab.queue_ids("hold") == []
    # Exactly the survivor's share went out; the killed one's is back in Postfix.
    by_rcpt = {f"c{i}@kunde{i % 30 + 1}.test": q for i, q in enumerate(ids)}
    sent = {by_rcpt[rcpts[0]] for rcpts in received_once(w)}
    shares = [{q for q in ids if worker_of(q, 2) == k} for k in (0, 1)]
    assert all(shares) and sent in shares
    assert set(w.lab.queue_ids("deferred")) == set(ids) - sent
    again = rescue.run("flush", "--yes", "--provider", "ionos", "--json", *TWO)
    assert again.code == 0, again.stderr
    assert len(received_once(w)) == 20
    assert w.lab.queue() == []
    assert set(ids) >= {o["queue_id"] for o in again.lines if "queue_id" in o}


def test_a_worker_stopped_on_its_own_makes_the_run_partial(w: World) -> None:
    # An admin's `kill` of one worker: it gives back what it holds, and the run does not
    # end as if everything had been done.
    submit(w, 20)
    proc, workers, gate = held_by_two_workers(w, w.rescue("worker-stopped"), 20)
    os.kill(workers[0], signal.SIGTERM)
    gate.set()
    out, err = proc.communicate(timeout=120)

    assert proc.returncode == 1, err
    assert "were stopped (SIGTERM) before the end" in err
    assert '"released": 0' not in out  # the stopped worker's share was given back
    assert w.lab.queue_ids("hold") == []
    sent = len(received_once(w))
    assert 0 < sent < 20
    assert sent + len(w.lab.queue_ids("deferred")) == 20


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(") ", 1)[-1].startswith("Z")
    except OSError:
        return True


def test_sigkill_at_random_moments_of_a_split_flush_loses_nothing(w: World) -> None:
    with RecordingSmarthost(reply_delay=0.03) as slow:
        ids_by_rcpt = submit_backlog(w.lab, 80)
        rescue = w.rescue(
            "kill-split",
            smarthosts=[smarthost_entry("relay1", slow.port, max_connections=4, timeout="30s")],
        )

        report = kill_runs(
            w.lab, slow, rescue, ids_by_rcpt, kills=6, rng=random.Random(7), flush=(*FLUSH, *TWO)
        )

    assert report.kills >= 3, report.as_dict()
    assert report.lost == []
    assert report.on_hold == []
    assert report.orphans == 0
    assert report.unannounced == [], report.as_dict()
    assert w.lab.queue() == []
