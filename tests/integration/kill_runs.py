"""SIGKILL at random moments of flushes against a slow smarthost, then a run to the end.

Shared by the crash-safety test (a few kills) and bench/kill_bench.py (many). Each
killed run's output is kept up to the kill: a run names, as it starts, the messages
the run before it was sending when it died (recovery's `uncertain`), and each flush
names the messages it gave back as maybe sent. A message the smarthost got twice
must be one of those; none may be lost or left on hold.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from tests.integration.rescue_cli import Rescue
from tests.integration.world import body
from tests.lab import wait_for
from tests.lab.postfix import PostfixLab, Submission
from tests.lab.smtpd import RecordingSmarthost

FLUSH = ("flush", "--provider", "ionos", "--json", "--yes")
# Of the kills, this share strikes at a random moment from the start (recovery, the
# listing, the hold); the others once the smarthost has taken a message of the run.
EARLY_SHARE = 0.25
EARLY_WITHIN = 1.5  # seconds after the start
LATE_WITHIN = 0.3  # seconds after the run's first message reached the smarthost


@dataclass
class KillReport:
    messages: int
    kills: int = 0
    runs: int = 0
    received: int = 0  # transactions the smarthost accepted
    duplicates: list[str] = field(default_factory=list)  # queue ids it accepted twice or more
    announced: set[str] = field(default_factory=set)  # queue ids named as maybe sent twice
    lost: list[str] = field(default_factory=list)  # neither at the smarthost nor in Postfix
    on_hold: list[str] = field(default_factory=list)
    orphans: int = 0  # processes of a killed flush still running after it (then ended here)
    kill_times: list[float] = field(default_factory=list)  # time.time() of each kill
    seconds: float = 0.0

    @property
    def unannounced(self) -> list[str]:
        return sorted(set(self.duplicates) - self.announced)

    def as_dict(self) -> dict[str, object]:
        per_100 = 100 * len(self.duplicates) / self.kills if self.kills else 0.0
        return {
            "messages": self.messages,
            "kills": self.kills,
            "runs": self.runs,
            "received": self.received,
            "duplicates": len(self.duplicates),
            "duplicates_per_100_kills": round(per_100, 1),
            "announced_uncertain": len(self.announced),
            "unannounced_duplicates": len(self.unannounced),
            "lost": len(self.lost),
            "left_on_hold": len(self.on_hold),
            "orphans": self.orphans,
            "seconds": round(self.seconds, 1),
        }


def uncertain_ids(stdout: str) -> set[str]:
    """Queue ids a run named as maybe sent twice: in recovery's line and in its outcomes."""
    named: set[str] = set()
    for line in stdout.splitlines():
        try:
            obj = json.loads(line)
        except ValueError:  # a line cut short by the kill
            continue
        if not isinstance(obj, dict):
            continue
        recovery = obj.get("recovery")
        if isinstance(recovery, dict):
            named.update(u["queue_id"] for u in recovery.get("uncertain", []))
        if obj.get("uncertain") is True and "queue_id" in obj:
            named.add(obj["queue_id"])
    return named


def _running_with(argument: bytes) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                argv = (entry / "cmdline").read_bytes().split(b"\0")
                zombie = (entry / "stat").read_text().rsplit(") ", 1)[-1].startswith("Z")
            except OSError:
                continue
            if argument in argv and not zombie:
                pids.append(int(entry.name))
    return pids


def end_leftovers(config: Path) -> int:
    """Processes a killed flush forked (they share its command line) and that outlive it:
    a read-ahead helper must end with it. Those still there after a moment are killed
    here (they would hold the flush's stdout open); returns how many there were."""
    argument = str(config).encode()
    with contextlib.suppress(TimeoutError):
        wait_for(lambda: not _running_with(argument), 5, "a killed flush's helpers to end")
    left = _running_with(argument)
    for pid in left:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    return len(left)


def postsuper_running(lab: PostfixLab) -> bool:
    """Whether a postsuper for this lab still runs (one a killed run had started)."""
    wanted = str(lab.config_dir).encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if argv and argv[0].endswith(b"postsuper") and wanted in argv:
            return True
    return False


def kill_runs(
    lab: PostfixLab,
    smarthost: RecordingSmarthost,
    rescue: Rescue,
    ids_by_rcpt: dict[str, str],
    *,
    kills: int,
    rng: random.Random,
    progress: bool = False,
    flush: tuple[str, ...] = FLUSH,
) -> KillReport:
    """Kill `kills` flushes (`flush`: its arguments) at random moments, then flush to
    the end; what came of it."""
    report = KillReport(messages=len(ids_by_rcpt))
    started = time.monotonic()
    while report.kills < kills:
        before = len(smarthost.received)
        proc = rescue.popen(*flush)
        report.runs += 1
        if rng.random() < EARLY_SHARE:
            deadline = time.monotonic() + rng.uniform(0, EARLY_WITHIN)
            while proc.poll() is None and time.monotonic() < deadline:
                time.sleep(0.005)
        else:
            wait_for(
                lambda p=proc, n=before: p.poll() is not None or len(smarthost.received) > n,  # type: ignore[misc]
                120,
                "the run's first message at the smarthost",
            )
            time.sleep(rng.uniform(0, LATE_WITHIN))
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)  # the tool only: a postsuper it started goes on
            report.kill_times.append(time.time())
            report.kills += 1
        proc.wait(timeout=60)
        report.orphans += end_leftovers(rescue.config_path)
        out, _ = proc.communicate(timeout=60)
        report.announced |= uncertain_ids(out)
        # As an admin would start the next run, not within the same millisecond: a hold
        # the killed run had started must have ended (its messages' journal says
        # "holding", recovery acts on what is on hold).
        wait_for(lambda: not postsuper_running(lab), 60, "postsuper to finish")
        if progress:
            print(f"kill {report.kills}/{kills}: {len(smarthost.received)} received", flush=True)
        if proc.returncode == 0 and not lab.queue_ids("deferred") and not lab.queue_ids("hold"):
            break  # everything was sent before the kill came
    final = rescue.run(*flush, timeout=600)
    report.runs += 1
    report.announced |= uncertain_ids(final.stdout)
    if final.code not in (0, 1):
        raise AssertionError(f"the last flush failed ({final.code}): {final.stderr}")
    report.seconds = time.monotonic() - started
    received = Counter(r.rcpt_tos[0] for r in smarthost.received)
    report.received = sum(received.values())
    report.duplicates = sorted(ids_by_rcpt[r] for r, n in received.items() if n > 1)
    left = set(lab.queue_ids())
    report.on_hold = lab.queue_ids("hold")
    report.lost = sorted(q for r, q in ids_by_rcpt.items() if r not in received and q not in left)
    return report


def submit_backlog(lab: PostfixLab, n: int) -> dict[str, str]:
    """n deferred messages, one recipient each: {recipient: queue id}."""
    rcpts = [f"k{i}@kunde{i % 30 + 1}.test" for i in range(n)]
    ids = lab.submit_many(
        (Submission("alice@example.com", (r,), body(i)) for i, r in enumerate(rcpts)),
        sessions=4,
    )
    lab.wait_deferred(n, timeout=120 + n / 10)
    return dict(zip(rcpts, ids, strict=True))
