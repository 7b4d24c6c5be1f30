"""Benchmark: queue-rescue's flush and scan against Postfix's own reroute and qshape.

One run builds a backlog of N deferred messages in a private Postfix instance (the test
lab), then measures on it:

- `queue-rescue flush --all --yes --json` to Postfix's `smtp-sink` on loopback;
- Postfix's own reroute of the same backlog (rebuilt) to a fresh `smtp-sink`:
  transport_maps to the sink, `postfix reload`, `postsuper -r ALL deferred`,
  `postqueue -f`, until the queue is empty;
- `queue-rescue scan` and `scan --json` against `qshape deferred` on the same queue;
- peak RSS and CPU time of each queue-rescue process;
- `smtp-source` into `smtp-sink` with the same message, the SMTP ceiling of the machine.

Run from the repository root: `python -m bench.flush_bench [--messages 10000] [--json]`.
See bench/README.md.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import email.utils
import hashlib
import importlib.util
import json
import os
import platform
import random
import re
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TextIO

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # `python bench/flush_bench.py` puts bench/ first, not the repo
    sys.path.insert(0, str(REPO))

from tests.integration.rescue_cli import Rescue, smarthost_entry  # noqa: E402
from tests.lab import wait_for  # noqa: E402
from tests.lab.postfix import PostfixLab, Submission, free_port  # noqa: E402
from tests.lab.smtpd import FakeProvider  # noqa: E402

DOMAINS = tuple(f"kunde{i}.test" for i in range(1, 31))
PROVIDER = "ionos"
# Every this many messages one has a second recipient (same domain, so one transaction).
SECOND_RECIPIENT_EVERY = 10
MESSAGE_SIZE = 4096  # bytes, about; headers included
SENDERS = (
    ("Webshop Müller", "bestellung@shop-mueller.example"),
    ("Stadtwerke Nordstadt", "rechnung@stadtwerke-nordstadt.example"),
    ("TSV Blau-Weiß", "vorstand@tsv-blau-weiss.example"),
    ("Praxis Dr. Weber", "termine@praxis-weber.example"),
    ("Hausverwaltung Schmidt", "info@hv-schmidt.example"),
    ("Kanzlei Becker", "sekretariat@kanzlei-becker.example"),
)
PARAGRAPHS = (
    "vielen Dank für Ihre Nachricht. Wir haben Ihre Anfrage erhalten und melden uns "
    "so bald wie möglich mit einer ausführlichen Antwort bei Ihnen.",
    "Bitte beachten Sie, dass sich unsere Öffnungszeiten über die Feiertage ändern: "
    "Montag bis Freitag von 8 bis 16 Uhr, Samstag geschlossen.",
    "Anbei finden Sie die Übersicht der offenen Posten. Falls Sie Fragen zur Rechnung "
    "haben, antworten Sie einfach auf diese E-Mail oder rufen Sie uns an.",
    "Die Lieferung erfolgt voraussichtlich in drei bis fünf Werktagen. Den Status Ihrer "
    "Sendung können Sie jederzeit in Ihrem Kundenkonto einsehen.",
    "Für Rückfragen stehen wir Ihnen gerne zur Verfügung. Mit freundlichen Grüßen aus "
    "der Geschäftsstelle, Ihr Team vom Kundenservice.",
)
FIRST_DATE = datetime(2024, 11, 25, 9, 0, tzinfo=UTC)

# Queue folders a message can sit in (a message file each); the queue is empty when
# they hold no file.
QUEUE_FOLDERS = ("maildrop", "incoming", "active", "deferred", "hold")
POSTFIX_SETTINGS = (
    "default_destination_concurrency_limit",
    "smtp_destination_concurrency_limit",
    "initial_destination_concurrency",
    "default_destination_recipient_limit",
    "default_process_limit",
    "qmgr_message_active_limit",
    "max_use",
    "in_flow_delay",
    "smtp_connection_cache_on_demand",
)
# pyinstrument's report format by the --profile file's suffix; text otherwise.
PROFILE_RENDERERS = {".html": "html", ".json": "json", ".pyisession": "pyisession"}
SINK_POLL = 0.01  # seconds between looks at the sink's counter while Postfix drains
IDLE_SHARE = 0.3  # --wait-idle: CPUs busier than this are not idle
_MESG = re.compile(rb"mesg=(\d+)")
_QSHAPE_TOTAL = re.compile(r"^\s*TOTAL\s+(\d+)", re.MULTILINE)


class BenchError(RuntimeError):
    """A step of the benchmark failed or its result did not check out."""


def say(text: str) -> None:
    """Progress, on stderr (stdout carries the result)."""
    print(f"[{time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


def sbin(name: str) -> str:
    found = shutil.which(name) or shutil.which(name, path="/usr/sbin:/usr/bin")
    if found is None:
        raise BenchError(f"{name} not found (it ships with the postfix package)")
    return found


# -- the backlog ---------------------------------------------------------------------------


def message(n: int) -> Submission:
    """Message number `n`: always the same bytes, about MESSAGE_SIZE of them, 8bit UTF-8."""
    rng = random.Random(n)
    name, sender = SENDERS[n % len(SENDERS)]
    sender_domain = sender.split("@")[1]
    domain = DOMAINS[n % len(DOMAINS)]
    recipients = [f"kunde{n:05d}@{domain}"]
    if n % SECOND_RECIPIENT_EVERY == 0:
        recipients.append(f"buchhaltung{n:05d}@{domain}")
    date = email.utils.format_datetime(FIRST_DATE + timedelta(seconds=n))
    signature = base64.b64encode(rng.randbytes(256)).decode()
    body_hash = base64.b64encode(rng.randbytes(32)).decode()
    folded = "\n\t".join(signature[i : i + 72] for i in range(0, len(signature), 72))
    headers = [
        f"Received: from app{n % 4:02d}.{sender_domain} (app{n % 4:02d}.{sender_domain}"
        f" [192.0.2.{n % 250 + 1}])",
        f"\tby mail.{sender_domain} (Postfix) with ESMTPS id 4X{n:08X}",
        f"\tfor <{recipients[0]}>; {date}",
        f"DKIM-Signature: v=1; a=rsa-sha256; c=relaxed/relaxed; d={sender_domain};",
        f"\ts=mail2024; t={int((FIRST_DATE + timedelta(seconds=n)).timestamp())};",
        f"\tbh={body_hash};",
        "\th=From:To:Subject:Date:Message-ID:MIME-Version:Content-Type;",
        f"\tb={folded}",
        f'From: "{name}" <{sender}>',
        f"To: {', '.join(f'<{r}>' for r in recipients)}",
        f"Subject: Ihre Anfrage Nr. {100000 + n} - Bestätigung",
        f"Date: {date}",
        f"Message-ID: <{n:08d}.{rng.getrandbits(48):012x}@{sender_domain}>",
        "MIME-Version: 1.0",
        "Content-Type: text/plain; charset=utf-8; format=flowed",
        "Content-Transfer-Encoding: 8bit",
        f"List-Unsubscribe: <mailto:abmelden@{sender_domain}?subject=unsubscribe>",
        "X-Mailer: Bench-Mailer 1.0",
    ]
    lines = [*headers, "", "Sehr geehrte Damen und Herren,", ""]
    size = sum(len(line.encode()) + 2 for line in lines)
    while size < MESSAGE_SIZE - 80:
        paragraph = PARAGRAPHS[rng.randrange(len(PARAGRAPHS))]
        words = paragraph.split()
        line = ""
        for word in words:
            if len(line) + len(word) + 1 > 72:
                lines.append(line)
                size += len(line.encode()) + 2
                line = word
            else:
                line = f"{line} {word}" if line else word
        lines += [line, ""]
        size += len(line.encode()) + 4
    lines.append(f"-- \n{name}\n{sender}")
    text = "\n".join(lines) + "\n"
    return Submission(sender, tuple(recipients), text.encode())


def backlog(n: int) -> list[Submission]:
    return [message(i) for i in range(n)]


def create_backlog(
    lab: PostfixLab, messages: Sequence[Submission], sessions: int
) -> dict[str, Any]:
    """Submit `messages` and wait until every one is deferred with a delay reason."""
    start = time.perf_counter()
    lab.submit_many(messages, sessions=sessions)
    submitted = time.perf_counter() - start
    lab.wait_deferred(len(messages), timeout=120 + len(messages) / 20)
    return {
        "seconds": round(time.perf_counter() - start, 2),
        "submit_seconds": round(submitted, 2),
        "sessions": sessions,
    }


def queued_files(queue_dir: Path) -> int:
    """Message files in the queue: 0 when Postfix holds no mail at all."""
    count = 0
    for folder in QUEUE_FOLDERS:
        for _, _, files in os.walk(queue_dir / folder):
            count += len(files)
    return count


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
                found = _MESG.findall(out.read())
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
    """The measured process's RSS over the flush's progress (the sink's count), sampled.

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
            rss = _rss_kib(pid)
            if rss is None:
                return  # it has ended
            self.samples.append((self._progress(), rss))

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


def _rss_kib(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except (OSError, ValueError):
        return None
    return None


# -- the measurements ----------------------------------------------------------------------


def rate(messages: int, seconds: float) -> float:
    return round(messages / seconds, 1) if seconds > 0 else 0.0


def rescue_config(root: Path, lab: PostfixLab, sink: Sink, options: dict[str, Any]) -> Rescue:
    domains = ", ".join(json.dumps(d) for d in DOMAINS)
    entry = smarthost_entry("sink", sink.port)
    entry.update(options)
    return Rescue(
        root,
        lab,
        smarthosts=[entry],
        providers=f'[[provider]]\nname = "{PROVIDER}"\ndomains = [{domains}]\n',
        extra="[dns]\nenabled = false\n",
    )


def measure_flush(
    rescue: Rescue, lab: PostfixLab, sink: Sink, n: int, profile: Path | None
) -> dict[str, Any]:
    args = ["flush", "--all", "--yes", "--json"]
    argv = rescue.command(*args)
    if profile is not None:
        # pyinstrument in front of `-m rescue ...`: the same run, sampled.
        renderer = PROFILE_RENDERERS.get(profile.suffix, "text")
        argv = [sys.executable, "-m", "pyinstrument", "-r", renderer, "-o", str(profile), *argv[1:]]
    result: dict[str, Any] = {"command": "queue-rescue " + " ".join(args)}
    sampler = RssSampler(sink.count)
    try:
        with cpu_ledger(result, lab, sink):
            run = run_measured(argv, timeout=300 + n / 10, on_start=sampler.start)
    finally:
        sampler.stop()
    run.check("queue-rescue flush")
    summaries = [
        json.loads(line)["summary"] for line in run.stdout.splitlines() if '"summary"' in line
    ]
    summary = summaries[-1] if summaries else {}
    # The sink answered every "." before queue-rescue saw the reply: the count is final.
    received = sink.count()
    left = len(lab.queue())
    result.update(
        seconds=round(run.seconds, 3),
        messages_per_second=rate(n, run.seconds),
        peak_rss_mb=round(run.max_rss_mb, 1),
        rss_over_progress=sampler.summary(n),
        cpu_seconds=round(run.cpu_seconds, 2),
        own_cpu_seconds=_round(run.own_cpu_seconds),
        children_cpu_seconds=_round(run.children_cpu_seconds),
        sink_received=received,
        queue_left=left,
        summary=summary,
        profiled=profile is not None,
    )
    if received != n or left != 0 or summary.get("rerouted") != n:
        raise BenchError(
            f"queue-rescue flush did not move all {n}: sink got {received}, {left} left in "
            f"the queue, summary {summary}\nstderr: {run.stderr[-2000:]}"
        )
    return result


def measure_postfix_reroute(lab: PostfixLab, sink: Sink, n: int) -> dict[str, Any]:
    """Postfix's own way: transport map to the sink, reload, requeue, flush, drain."""
    postsuper = [str(lab.command_dir / "postsuper"), "-c", str(lab.config_dir)]
    postqueue = [str(lab.command_dir / "postqueue"), "-c", str(lab.config_dir)]
    result: dict[str, Any] = {
        "command": "transport_maps -> sink; postfix reload; postsuper -r ALL deferred; "
        "postqueue -f; until the queue is empty"
    }
    timeout = 120 + n / 20
    with cpu_ledger(result, lab, sink):
        start = time.perf_counter()
        lab.set_transports({d: f"smtp:[127.0.0.1]:{sink.port}" for d in DOMAINS})  # + reload
        reloaded = time.perf_counter()
        subprocess.run([*postsuper, "-r", "ALL", "deferred"], capture_output=True, check=True)
        requeued = time.perf_counter()
        subprocess.run([*postqueue, "-f"], capture_output=True, check=True)
        deadline = start + timeout
        while sink.count() < n or queued_files(lab.queue_dir) > 0:
            if time.perf_counter() > deadline:
                raise BenchError(
                    f"Postfix reroute: sink got {sink.count()} of {n} after {timeout:g}s; "
                    f"{lab.describe()}"
                )
            time.sleep(SINK_POLL)
        done = time.perf_counter()
    seconds = done - start
    received = sink.count()
    left = len(lab.queue())
    result.update(
        seconds=round(seconds, 3),
        messages_per_second=rate(n, seconds),
        reload_seconds=round(reloaded - start, 3),
        requeue_seconds=round(requeued - reloaded, 3),
        drain_seconds=round(done - requeued, 3),
        sink_received=received,
        queue_left=left,
    )
    if received != n or left != 0:
        raise BenchError(f"Postfix reroute: sink got {received} of {n}, {left} left")
    return result


def measure_scans(
    rescue: Rescue, lab: PostfixLab, n: int, recipients: int, repeat: int
) -> dict[str, Any]:
    """scan, scan --json and qshape, `repeat` times each, interleaved; medians."""
    commands: dict[str, tuple[str, list[str], Callable[[ProcessRun], int]]] = {
        "scan": ("queue-rescue scan", rescue.command("scan"), lambda run: n),
        "scan_json": (
            "queue-rescue scan --json",
            rescue.command("scan", "--json"),
            lambda run: sum(1 for line in run.stdout.splitlines() if line.startswith("{")),
        ),
        "qshape": (
            "qshape -c CONFIG_DIR deferred",
            [sbin("qshape"), "-c", str(lab.config_dir), "deferred"],
            lambda run: int(m.group(1)) if (m := _QSHAPE_TOTAL.search(run.stdout)) else -1,
        ),
    }
    expected = {"scan": n, "scan_json": n, "qshape": recipients}
    runs: dict[str, list[ProcessRun]] = {name: [] for name in commands}
    for _ in range(repeat):
        for name, (label, argv, _counted) in commands.items():
            runs[name].append(run_measured(argv, timeout=120 + n / 20).check(label))
    out: dict[str, Any] = {}
    for name, done in runs.items():
        label, _argv, counted = commands[name]
        seen = counted(done[-1])
        if seen != expected[name]:
            raise BenchError(f"{label} counted {seen}, expected {expected[name]}")
        times = [run.seconds for run in done]
        out[name] = {
            "command": label,
            "seconds": round(statistics.median(times), 3),
            "seconds_all": [round(t, 3) for t in times],
            "peak_rss_mb": round(max(run.max_rss_mb for run in done), 1),
            "cpu_seconds": round(statistics.median(run.cpu_seconds for run in done), 2),
        }
    out["scan"]["table_lines"] = len(runs["scan"][-1].stdout.splitlines())
    return out


def measure_startup(rescue: Rescue, repeat: int) -> dict[str, Any]:
    runs = [run_measured(rescue.command("--version"), timeout=60) for _ in range(repeat)]
    return {
        "command": "queue-rescue --version",
        "seconds": round(statistics.median(r.seconds for r in runs), 3),
        "peak_rss_mb": round(max(r.max_rss_mb for r in runs), 1),
    }


def measure_ceiling(folder: Path, sink: Sink, n: int) -> dict[str, Any]:
    """smtp-source into smtp-sink: 8 sessions, each many messages, our message n=1."""
    sample = folder / "sample.eml"
    sample.write_bytes(message(1).message)
    sessions = 8
    argv = [
        sbin("smtp-source"),
        "-d",
        "-s",
        str(sessions),
        "-m",
        str(n),
        "-M",
        "bench.test",
        "-f",
        message(1).sender,
        "-t",
        message(1).recipients[0],
        "-F",
        str(sample),
        f"127.0.0.1:{sink.port}",
    ]
    run = run_measured(argv, timeout=120 + n / 100).check("smtp-source")
    received = sink.count()
    if received != n:
        raise BenchError(f"smtp-source: sink got {received} of {n}")
    return {
        "command": f"smtp-source -d -s {sessions} -m {n} -F MESSAGE",
        "seconds": round(run.seconds, 3),
        "messages_per_second": rate(n, run.seconds),
    }


# -- the machine ---------------------------------------------------------------------------


def machine() -> dict[str, Any]:
    model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    postfix = subprocess.run(
        ["postconf", "-d", "-h", "mail_version"], capture_output=True, text=True, check=False
    ).stdout.strip()
    mem_kb = 0
    with contextlib.suppress(OSError, ValueError, IndexError):
        mem_kb = int(Path("/proc/meminfo").read_text().split()[1])
    return {
        "nproc": len(os.sched_getaffinity(0)),
        "cpu_model": model,
        "memory_gb": round(mem_kb / 1024 / 1024, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "postfix": postfix,
        "loadavg_start": os.getloadavg(),
        "busy_before_start": busy_share(1.0),
    }


def tool_identity() -> dict[str, Any]:
    """Which queue-rescue was measured: the commit, and a hash of the code as it is (other
    work may have changed files since the commit)."""
    digest = hashlib.sha256()
    for path in sorted((REPO / "rescue").rglob("*")):
        if path.is_file() and path.suffix in (".py", ".toml"):
            digest.update(str(path.relative_to(REPO)).encode() + b"\0" + path.read_bytes())
    git = ["git", "-C", str(REPO)]
    commit = subprocess.run(
        [*git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False
    ).stdout.strip()
    changed = subprocess.run(
        [*git, "status", "--porcelain", "--", "rescue"], capture_output=True, text=True, check=False
    ).stdout.splitlines()
    return {
        "commit": commit,
        "uncommitted_files": len(changed),
        "code_sha256": digest.hexdigest()[:12],
    }


def postfix_settings(lab: PostfixLab) -> dict[str, str]:
    out = subprocess.run(
        ["postconf", "-x", "-c", str(lab.config_dir), *POSTFIX_SETTINGS],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return dict(line.split(" = ", 1) for line in out.splitlines() if " = " in line)


# -- one run -------------------------------------------------------------------------------


@dataclass
class Options:
    messages: int = 2000
    sessions: int = 4
    repeat: int = 3
    skip: set[str] = field(default_factory=set)
    smarthost: dict[str, Any] = field(default_factory=dict)
    profile: Path | None = None
    keep: bool = False
    wait_idle: float = 0.0
    output: Path | None = None
    show: Path | None = None


def wait_idle(limit: float) -> float:
    """Wait up to `limit` seconds for the CPUs to be mostly idle; the seconds waited."""
    start = time.monotonic()
    while time.monotonic() - start < limit:
        if busy_share(2.0) < IDLE_SHARE:
            break
    return round(time.monotonic() - start, 1)


def run(options: Options) -> dict[str, Any]:
    n = options.messages
    waited = None
    if options.wait_idle:
        say(f"waiting up to {options.wait_idle:g} s for the machine to be idle")
        waited = wait_idle(options.wait_idle)
    messages = backlog(n)
    recipients = sum(len(m.recipients) for m in messages)
    sizes = [len(m.message) for m in messages]
    report: dict[str, Any] = {
        "machine": machine(),
        "tool": tool_identity(),
        "backlog": {
            "messages": n,
            "recipients": recipients,
            "domains": len(DOMAINS),
            "average_bytes": round(statistics.mean(sizes)),
            "body": "8bit UTF-8 text, realistic headers (Received, DKIM-Signature, ...)",
            "deferred_by": "FakeProvider: 421 4.7.0 invalid sender domain (at MAIL FROM)",
        },
        "setup": {},
    }
    if waited is not None:
        report["machine"]["waited_for_idle_seconds"] = waited
    root = Path(tempfile.mkdtemp(prefix="flush-bench-"))
    root.chmod(0o755)
    provider = FakeProvider()
    sinks: list[Sink] = []
    lab: PostfixLab | None = None

    def new_sink(name: str) -> Sink:
        sink = Sink(root, name)
        sinks.append(sink)
        return sink.start()

    try:
        provider.start()
        lab = PostfixLab(
            root / "postfix",
            transports={d: provider.next_hop for d in DOMAINS},
            name="bench",
        )
        lab.start()
        report["postfix_settings"] = postfix_settings(lab)
        report["smarthost_options"] = options.smarthost or "tool defaults"
        say(f"creating {n} deferred messages ({options.sessions} submit sessions)")
        report["setup"]["create"] = create_backlog(lab, messages, options.sessions)
        say(f"  {report['setup']['create']}")

        flush_sink = new_sink("flush")
        rescue = rescue_config(root / "rescue", lab, flush_sink, options.smarthost)
        if "scan" not in options.skip:
            say(f"scan, scan --json, qshape: {options.repeat} times each")
            report["scan"] = measure_scans(rescue, lab, n, recipients, options.repeat)
            report["startup"] = measure_startup(rescue, options.repeat)
        if "flush" not in options.skip:
            say("queue-rescue flush --all" + (" (profiled)" if options.profile else ""))
            report["flush"] = measure_flush(rescue, lab, flush_sink, n, options.profile)
            say(f"  {report['flush']['seconds']} s")
        if "reroute" not in options.skip:
            if "flush" not in options.skip:
                say(f"creating the {n} deferred messages again")
                report["setup"]["create_again"] = create_backlog(lab, messages, options.sessions)
                say(f"  {report['setup']['create_again']}")
            say("Postfix's own reroute")
            report["postfix_reroute"] = measure_postfix_reroute(lab, new_sink("postfix"), n)
            say(f"  {report['postfix_reroute']['seconds']} s")
        if "ceiling" not in options.skip:
            say("smtp-source -> smtp-sink ceiling")
            report["ceiling"] = measure_ceiling(root, new_sink("ceiling"), n)
    finally:
        for sink in sinks:
            sink.stop()
        if lab is not None:
            lab.stop()
        provider.stop()
        if options.keep:
            say(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
    report["machine"]["loadavg_end"] = os.getloadavg()
    report["ratios"], report["targets"] = ratios(report)
    return report


def ratios(report: dict[str, Any]) -> tuple[dict[str, float], dict[str, bool]]:
    out: dict[str, float] = {}
    targets: dict[str, bool] = {}
    flush, reroute, scan = report.get("flush"), report.get("postfix_reroute"), report.get("scan")
    if flush and reroute:
        speedup = flush["messages_per_second"] / reroute["messages_per_second"]
        out["flush_vs_postfix_reroute"] = round(speedup, 2)
        targets["flush_at_least_1.5x_postfix"] = speedup >= 1.5
    if flush and report.get("ceiling"):
        share = flush["messages_per_second"] / report["ceiling"]["messages_per_second"]
        out["flush_vs_smtp_source_ceiling"] = round(share, 3)
    if scan:
        out["qshape_vs_scan"] = round(scan["qshape"]["seconds"] / scan["scan"]["seconds"], 2)
        out["qshape_vs_scan_json"] = round(
            scan["qshape"]["seconds"] / scan["scan_json"]["seconds"], 2
        )
        targets["scan_faster_than_qshape"] = scan["scan"]["seconds"] < scan["qshape"]["seconds"]
    if flush:
        targets["flush_peak_rss_under_150mb"] = flush["peak_rss_mb"] < 150
    return out, targets


# -- output --------------------------------------------------------------------------------


def table(report: dict[str, Any], out: TextIO) -> None:
    m, b = report["machine"], report["backlog"]
    w = out.write
    w(
        f"queue-rescue benchmark: {b['messages']:,} deferred messages, {b['recipients']:,} "
        f"recipients, {b['domains']} domains, {b['average_bytes']:,} bytes on average\n"
    )
    w(
        f"machine: {m['nproc']} CPUs, {m['cpu_model']}, {m['memory_gb']} GB, Linux "
        f"{m['kernel']}, Python {m['python']}, Postfix {m['postfix']}\n"
    )
    t = report.get("tool", {})
    if t:
        w(
            f"queue-rescue: commit {t['commit']}, {t['uncommitted_files']} changed files in "
            f"rescue/, code sha256 {t['code_sha256']}\n"
        )
    load = " / ".join(" ".join(f"{x:.2f}" for x in m[k]) for k in ("loadavg_start", "loadavg_end"))
    waited = m.get("waited_for_idle_seconds")
    w(
        f"load average at start / end: {load}; CPUs busy just before the start: "
        f"{m['busy_before_start']:.0%}"
        + (f" (after waiting {waited:g} s for idle)" if waited is not None else "")
        + "\n"
    )
    for key, label in (("create", "backlog created"), ("create_again", "created again")):
        if key in report["setup"]:
            c = report["setup"][key]
            w(
                f"setup (not timed in the results): {label} in {c['seconds']} s "
                f"(submit {c['submit_seconds']} s over {c['sessions']} sessions)\n"
            )
    w("\n")
    header = (
        f"{'step':<44}{'seconds':>9}{'msgs/s':>8}{'peak RSS':>10}{'CPU s':>7}"
        f"{'Postfix':>8}{'sink':>6}{'other':>7}\n"
    )
    w(header)
    w("-" * (len(header) - 1) + "\n")

    def row(label: str, data: dict[str, Any] | None, rate_key: bool = True) -> None:
        if not data:
            return
        msgs = f"{data['messages_per_second']:,.0f}" if rate_key else ""
        rss = f"{data['peak_rss_mb']:.1f} MB" if "peak_rss_mb" in data else ""
        cpu = f"{data['cpu_seconds']:.2f}" if "cpu_seconds" in data else ""
        ledger = data.get("cpu")
        spent = (
            f"{ledger['postfix_seconds']:>8.2f}{ledger['sink_seconds']:>6.2f}"
            f"{ledger['other_seconds']:>7.2f}"
            if ledger
            else ""
        )
        w(f"{label:<44}{data['seconds']:>9.3f}{msgs:>8}{rss:>10}{cpu:>7}{spent}\n")

    flush = report.get("flush")
    label = "queue-rescue flush --all" + (" (profiled)" if flush and flush["profiled"] else "")
    row(label, flush)
    reroute = report.get("postfix_reroute")
    if flush and flush.get("own_cpu_seconds") is not None:
        w(
            f"{'  its CPU s: Python / Postfix commands':<44}{'':>27}"
            f"{flush['own_cpu_seconds']:.2f} / {flush['children_cpu_seconds']:.2f}\n"
        )
    if flush and flush["summary"].get("elapsed_seconds") is not None:
        inner = flush["summary"]["elapsed_seconds"]
        w(
            f"{'  of which hold+send+settle (its summary)':<44}{inner:>9.3f}"
            f"{rate(flush['summary'].get('selected', 0), inner):>8,.0f}\n"
        )
    row("Postfix reroute (map, -r ALL, -f, drain)", reroute)
    if reroute:
        w(
            f"{'  reload / postsuper -r / drain':<44}"
            f"{reroute['reload_seconds']:.3f} / {reroute['requeue_seconds']:.3f} / "
            f"{reroute['drain_seconds']:.3f}\n"
        )
    row("smtp-source -d -s 8 -> smtp-sink (ceiling)", report.get("ceiling"))
    scan = report.get("scan")
    if scan:
        repeat = len(scan["scan"]["seconds_all"])
        row(f"queue-rescue scan (median of {repeat})", scan["scan"], rate_key=False)
        row(f"queue-rescue scan --json (median of {repeat})", scan["scan_json"], rate_key=False)
        row(f"qshape -c DIR deferred (median of {repeat})", scan["qshape"], rate_key=False)
    row("queue-rescue --version (startup)", report.get("startup"), rate_key=False)
    w(
        "CPU s: user+system seconds of the measured process and its children. Postfix, sink, "
        "other:\nCPU seconds used meanwhile by the lab's Postfix daemons, the smtp-sink, and "
        "everything else\non the machine (other work, which slows the step down).\n\n"
    )
    r = report["ratios"]
    targets = report["targets"]

    def verdict(key: str) -> str:
        return "yes" if targets.get(key) else "NO"

    if "flush_vs_postfix_reroute" in r:
        w(
            f"flush: queue-rescue / Postfix reroute messages/s = "
            f"{r['flush_vs_postfix_reroute']:.2f}x   (target >= 1.5x: "
            f"{verdict('flush_at_least_1.5x_postfix')})\n"
        )
    if "flush_vs_smtp_source_ceiling" in r:
        w(f"flush: share of the smtp-source ceiling = {r['flush_vs_smtp_source_ceiling']:.1%}\n")
    if "qshape_vs_scan" in r:
        w(
            f"scan: qshape time / scan time = {r['qshape_vs_scan']:.2f}x, / scan --json = "
            f"{r['qshape_vs_scan_json']:.2f}x   (scan faster than qshape: "
            f"{verdict('scan_faster_than_qshape')})\n"
        )
    if flush:
        w(
            f"flush peak RSS {flush['peak_rss_mb']:.1f} MB   (target < 150 MB: "
            f"{verdict('flush_peak_rss_under_150mb')})\n"
        )
        over = flush.get("rss_over_progress")
        if over and over.get("second_half_peak_mb") is not None:
            at = ", ".join(f"{k} {v} MB" for k, v in over["rss_mb_at"].items() if v)
            w(
                f"flush RSS while the sink had the first / second half: peak "
                f"{over['first_half_peak_mb']} / {over['second_half_peak_mb']} MB "
                f"(at {at}; {over['samples']} samples)\n"
            )
        w(
            f"checked: sink got {flush['sink_received']:,} from queue-rescue"
            + (f", {reroute['sink_received']:,} from Postfix" if reroute else "")
            + "; queue empty after each; queue-rescue summary "
            + ", ".join(f"{k}={v}" for k, v in flush["summary"].items() if v)
            + "\n"
        )
    settings = report.get("postfix_settings", {})
    w("Postfix: " + ", ".join(f"{k}={v}" for k, v in settings.items()) + "\n")
    w(f"queue-rescue smarthost options: {report.get('smarthost_options')}\n")


# -- command line --------------------------------------------------------------------------


def smarthost_option(text: str) -> tuple[str, Any]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, not {text!r}")
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value


def parse(argv: Sequence[str] | None) -> tuple[Options, bool]:
    parser = argparse.ArgumentParser(
        prog="python -m bench.flush_bench",
        description="Measure queue-rescue flush and scan against Postfix's own reroute and "
        "qshape on a private Postfix instance (run as root from the repo root).",
    )
    parser.add_argument("--messages", "-n", type=int, default=2000, help="backlog size")
    parser.add_argument(
        "--sessions", type=int, default=4, help="SMTP sessions creating the backlog (setup only)"
    )
    parser.add_argument(
        "--repeat", type=int, default=3, help="runs of scan, scan --json and qshape (median)"
    )
    parser.add_argument(
        "--skip",
        action="append",
        default=[],
        choices=["scan", "flush", "reroute", "ceiling"],
        help="leave out a measurement (repeatable)",
    )
    parser.add_argument(
        "--smarthost-option",
        action="append",
        type=smarthost_option,
        default=[],
        metavar="KEY=VALUE",
        help="set a [[smarthost]] key for the flush, e.g. max_connections=8 (repeatable)",
    )
    parser.add_argument(
        "--profile",
        type=Path,
        metavar="FILE",
        help="run the flush under pyinstrument and write its report to FILE: text, or html, "
        "json, pyisession by suffix (pip install pyinstrument; the flush figures are then "
        "those of a profiled run)",
    )
    parser.add_argument(
        "--wait-idle",
        type=float,
        default=0,
        metavar="SECONDS",
        help="first wait up to SECONDS for the machine's CPUs to be under "
        f"{IDLE_SHARE * 100:.0f}%% busy (other work skews every figure)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument(
        "--output", type=Path, metavar="FILE", help="also write the JSON object to FILE"
    )
    parser.add_argument(
        "--show",
        type=Path,
        metavar="FILE",
        help="print the table of a saved JSON report; run nothing",
    )
    args = parser.parse_args(argv)
    if args.messages < 1:
        parser.error("--messages must be at least 1")
    if args.profile is not None and importlib.util.find_spec("pyinstrument") is None:
        parser.error("--profile needs pyinstrument: pip install pyinstrument")
    options = Options(
        messages=args.messages,
        sessions=max(1, args.sessions),
        repeat=max(1, args.repeat),
        skip=set(args.skip),
        smarthost=dict(args.smarthost_option),
        profile=args.profile.resolve() if args.profile else None,
        keep=args.keep,
        wait_idle=max(0.0, args.wait_idle),
        output=args.output,
        show=args.show,
    )
    return options, args.json


def main(argv: Sequence[str] | None = None) -> int:
    options, as_json = parse(argv)
    if options.show is not None:
        table(json.loads(options.show.read_text()), sys.stdout)
        return 0
    if os.geteuid() != 0:
        print("flush_bench: run as root (postsuper and a private Postfix need it)", file=sys.stderr)
        return 2

    def terminate(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)  # unwinds through the clean-up in run()

    signal.signal(signal.SIGTERM, terminate)
    try:
        report = run(options)
    except BenchError as exc:
        print(f"flush_bench: {exc}", file=sys.stderr)
        return 1
    if options.output is not None:
        options.output.write_text(json.dumps(report, indent=2) + "\n")
    if as_json:
        json.dump(report, sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        table(report, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
