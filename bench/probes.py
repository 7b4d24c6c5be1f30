"""Watching processes: wall time, CPU time, peak and sampled RSS, and the sink's count."""

from __future__ import annotations

import contextlib
import os
import resource
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.common import REPO, SINK_MESG, BenchError, sbin
from tests.lab import wait_for
from tests.lab.postfix import PostfixLab
from tests.lab.system import free_port

# -- processes -----------------------------------------------------------------------------


@dataclass
class ProcessRun:
    """One finished process: wall time, exit code, output, and its rusage."""

    argv: list[str]
    seconds: float
    returncode: int
    stdout: str
    stderr: str
    max_rss_mb: float  # peak RSS of the process (or of its largest child, if larger)
    cpu_seconds: float  # user + system, the process and the children it waited for
    own_cpu_seconds: float | None = None  # the process alone
    children_cpu_seconds: float | None = None  # its children (postsuper, postqueue, ...)

    def check(self, what: str) -> ProcessRun:
        if self.returncode != 0:
            raise BenchError(
                f"{what} exited {self.returncode}: {' '.join(self.argv)}\n"
                f"stderr: {self.stderr[-2000:]}\nstdout: {self.stdout[-1000:]}"
            )
        return self


# Runs the command as its child and writes the child's wall time and rusage to argv[1].
# ru_maxrss of an exec'd process starts at the high-water mark of the process it was
# forked from (Linux keeps it across exec), so the command must be forked from a small
# process like this one, not from the benchmark holding the whole backlog in memory.
# Before reaping the child it reads the zombie's /proc stat: CPU time of the process itself
# and of the children it waited for (postsuper, postqueue, ...), apart.
_TRAMPOLINE = """
import os, sys, time
start = time.perf_counter()
pid = os.fork()
if pid == 0:
    try:
        os.execvp(sys.argv[2], sys.argv[2:])
    finally:
        os._exit(127)
os.waitid(os.P_PID, pid, os.WEXITED | os.WNOWAIT)
seconds = time.perf_counter() - start
try:
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    tick = os.sysconf("SC_CLK_TCK")
    own = (int(fields[11]) + int(fields[12])) / tick
    children = (int(fields[13]) + int(fields[14])) / tick
except (OSError, IndexError, ValueError):
    own = children = -1
_, status, usage = os.wait4(pid, 0)
with open(sys.argv[1], "w") as out:
    cpu = usage.ru_utime + usage.ru_stime
    out.write(f"{seconds} {usage.ru_maxrss} {cpu} {own} {children}")
code = os.waitstatus_to_exitcode(status)
sys.exit(code if code >= 0 else 128 - code)
"""


def run_measured(
    argv: list[str], *, timeout: float, on_start: Callable[[int], None] | None = None
) -> ProcessRun:
    """Run `argv` from the repo root; wall time and rusage of exactly that process.

    `on_start` is called with the trampoline's pid once it runs (the measured
    process is its only child).
    """
    env = dict(os.environ)
    env.pop("QUEUE_RESCUE_CONFIG", None)
    with (
        tempfile.TemporaryFile() as out,
        tempfile.TemporaryFile() as err,
        tempfile.NamedTemporaryFile("r", prefix="rusage-") as usage,
    ):
        wrapped = [sys.executable, "-I", "-S", "-c", _TRAMPOLINE, usage.name, *argv]
        proc = subprocess.Popen(
            wrapped,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=err,
            cwd=REPO,
            env=env,
            start_new_session=True,  # its own process group: a timeout ends the whole tree
        )
        if on_start is not None:
            on_start(proc.pid)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)  # queue-rescue releases what it held
            proc.wait(30)
            raise BenchError(
                f"timed out after {timeout:g}s: {' '.join(argv)}\n{_tail(err)}"
            ) from None
        except BaseException:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(30)
            raise
        out.seek(0)
        err.seek(0)
        stdout = out.read().decode(errors="replace")
        stderr = err.read().decode(errors="replace")
        measured = usage.read().split()
    if len(measured) != 5:
        raise BenchError(f"could not run {' '.join(argv)}: {stderr[-2000:]}")
    seconds, cpu, own, children = (float(measured[i]) for i in (0, 2, 3, 4))
    max_rss_kb = int(measured[1])
    return ProcessRun(
        argv=argv,
        seconds=seconds,
        returncode=proc.returncode,
        stdout=stdout,
        stderr=stderr,
        max_rss_mb=max_rss_kb / 1024,
        cpu_seconds=cpu,
        own_cpu_seconds=own if own >= 0 else None,
        children_cpu_seconds=children if children >= 0 else None,
    )


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 2)


def _tail(file: Any) -> str:
    file.seek(0)
    data: bytes = file.read()
    return data[-2000:].decode(errors="replace")


def cpu_busy_seconds() -> float:
    """Seconds of CPU time the whole machine has spent busy since boot (/proc/stat)."""
    fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(v) for v in fields[:8])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def busy_share(seconds: float) -> float:
    """How busy the machine's CPUs are (0..1) over the next `seconds`: other load skews
    every figure here."""
    before = cpu_busy_seconds()
    time.sleep(seconds)
    return round((cpu_busy_seconds() - before) / seconds / len(os.sched_getaffinity(0)), 2)


def process_cpu(pid: int) -> float:
    """User + system seconds a running process has used (0 when it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclass
class CpuSnapshot:
    machine: float  # the whole machine, busy seconds since boot
    bench: float  # this process and the children it waited for (the measured commands)
    postfix: dict[int, float]  # the lab's daemons by pid
    sink: float

    @classmethod
    def take(cls, queue_dir: Path, sink: Sink) -> CpuSnapshot:
        me = resource.getrusage(resource.RUSAGE_SELF)
        children = resource.getrusage(resource.RUSAGE_CHILDREN)
        postfix = {}
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                with contextlib.suppress(OSError):
                    # Postfix's daemons all work in the queue directory.
                    if Path(os.readlink(entry / "cwd")) == queue_dir:
                        postfix[int(entry.name)] = process_cpu(int(entry.name))
        return cls(
            machine=cpu_busy_seconds(),
            bench=me.ru_utime + me.ru_stime + children.ru_utime + children.ru_stime,
            postfix=postfix,
            sink=process_cpu(sink.pid) if sink.pid else 0.0,
        )


@contextlib.contextmanager
def cpu_ledger(into: dict[str, Any], lab: PostfixLab, sink: Sink) -> Iterator[None]:
    """Record where the machine's CPU time went during the block: the benchmark and the
    commands it ran (the measured tool among them), the lab's Postfix, the sink, and the
    rest, which is other work on the machine that slows the step down."""
    before = CpuSnapshot.take(lab.queue_dir, sink)
    try:
        yield
    finally:
        after = CpuSnapshot.take(lab.queue_dir, sink)
        machine = after.machine - before.machine
        bench = after.bench - before.bench
        # Daemons that started and ended within the block are missed (counted as other).
        postfix = sum(cpu - before.postfix.get(pid, 0.0) for pid, cpu in after.postfix.items())
        sink_cpu = after.sink - before.sink
        into["cpu"] = {
            "machine_seconds": round(machine, 2),
            "bench_and_commands_seconds": round(bench, 2),
            "postfix_seconds": round(postfix, 2),
            "sink_seconds": round(sink_cpu, 2),
            "other_seconds": round(max(0.0, machine - bench - postfix - sink_cpu), 2),
        }


class Sink:
    """Postfix's smtp-sink on a free loopback port, counting the messages it takes."""

    def __init__(self, folder: Path, name: str) -> None:
        self.output = folder / f"smtp-sink-{name}.out"
        self.port = 0
        self.argv: list[str] = []
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def start(self) -> Sink:
        for _ in range(3):
            self.port = free_port()
            user = ["-u", "postfix"] if os.geteuid() == 0 else []
            # -c: counters on stdout; announces PIPELINING, 8BITMIME, DSN, ENHANCEDSTATUSCODES.
            self.argv = [sbin("smtp-sink"), "-c", *user, f"127.0.0.1:{self.port}", "1024"]
            with self.output.open("wb") as out:
                self._proc = subprocess.Popen(
                    self.argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT
                )
            with contextlib.suppress(TimeoutError):
                wait_for(self._ready, timeout=10, what="smtp-sink to listen")
                return self
            self.stop()  # the port was taken meanwhile, most likely: another one
        raise BenchError(f"smtp-sink would not start: {self.output.read_text(errors='replace')}")

    def _ready(self) -> bool:
        assert self._proc is not None
        if self._proc.poll() is not None:
            raise TimeoutError
        with Path("/proc/net/tcp").open() as table:
            wanted = f"0100007F:{self.port:04X}"
            # State 0A is LISTEN.
            return any(
                line.split()[1] == wanted and line.split()[3] == "0A" for line in list(table)[1:]
            )

    def count(self) -> int:
        """Messages received so far (the sink counts each final "." it answers)."""
        try:
            with self.output.open("rb") as out:
                out.seek(0, os.SEEK_END)
                out.seek(max(0, out.tell() - 256))
                found = SINK_MESG.findall(out.read())
        except FileNotFoundError:
            return 0
        return int(found[-1]) if found else 0

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


class RssSampler:
    """The measured process's memory over the flush's progress (the sink's count),
    sampled: the PSS of it and every process it started (a split flush's workers,
    postsuper) added up, which counts each shared page once.

    Peak RSS alone cannot tell a memory that grows with the queue from one that
    fills up to a plateau early on; the samples can: compare the second half of a
    flush with the first.
    """

    def __init__(self, progress: Callable[[], int], interval: float = 0.05) -> None:
        self._progress = progress
        self._interval = interval
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.samples: list[tuple[int, int]] = []  # (messages the sink has, RSS in KiB)

    def start(self, trampoline_pid: int) -> None:
        self._thread = threading.Thread(target=self._run, args=(trampoline_pid,), daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def _run(self, trampoline: int) -> None:
        pid = None
        while not self._stop.wait(self._interval):
            if pid is None:
                pid = _only_child(trampoline)
                continue
            rss = _tree_pss_kib(pid)
            if rss is None:
                return  # it has ended
            self.samples.append((self._progress(), rss))

    @property
    def peak_mb(self) -> float:
        return max((rss for _, rss in self.samples), default=0) / 1024

    def summary(self, n: int) -> dict[str, Any]:
        """Peak RSS while the sink had the first and the second half of the n messages."""
        first = [rss for done, rss in self.samples if done < n / 2]
        second = [rss for done, rss in self.samples if n / 2 <= done < n]
        at = {
            f"{share}%": next((rss for done, rss in self.samples if done >= n * share / 100), None)
            for share in (25, 50, 75)
        }
        return {
            "samples": len(self.samples),
            "first_half_peak_mb": round(max(first) / 1024, 1) if first else None,
            "second_half_peak_mb": round(max(second) / 1024, 1) if second else None,
            "rss_mb_at": {k: round(v / 1024, 1) if v else None for k, v in at.items()},
        }


def _only_child(pid: int) -> int | None:
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return None
    return int(children[0]) if children else None


def _tree_pss_kib(pid: int) -> int | None:
    """Memory of the process and all its descendants: the sum of their proportional set
    sizes (PSS: a page shared by k of them counts 1/k in each, so the sum is what they
    use together; forked workers share most of their pages). None once it has ended."""
    own = _pss_kib(pid)
    if own is None:
        return None
    total, todo = own, [pid]
    while todo:
        parent = todo.pop()
        children = []
        for task in Path(f"/proc/{parent}/task").glob("*/children"):  # each thread's
            with contextlib.suppress(OSError):
                children += task.read_text().split()
        for child in map(int, children):
            total += _pss_kib(child) or 0
            todo.append(child)
    return total


def _pss_kib(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1])
    except (OSError, ValueError):
        return None
    return None
