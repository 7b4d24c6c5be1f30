"""The routing relay: Postfix delivering through queue-rescue's relay, against directly.

Side by side on one lab Postfix, with the same settings, each time N deferred messages
(the backlog, deferred by the fake provider) released with `postqueue -f` once the
30 domains route elsewhere:

- directly: the lab's transport map points the domains at a fresh `smtp-sink`;
- through the relay: `queue-rescue run` with a `[route]` table, run as the README says
  (`route init`, `route set ionos rerouting`, the service's table first in
  `transport_maps`), whose one smarthost is another fresh `smtp-sink`.

Each is timed from `postqueue -f` until the sink has all N and no message file is left
in the queue (the reload that makes Postfix read the new routes comes before the timer).
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from bench.backlog import create_backlog, queued_files
from bench.common import DOMAINS, PROFILE_RENDERERS, PROVIDER, SINK_POLL, BenchError, say
from bench.measure import rate
from bench.probes import Sink, cpu_ledger, process_cpu
from tests.integration.rescue_cli import Rescue, smarthost_entry
from tests.lab import wait_for
from tests.lab.postfix import PostfixLab
from tests.lab.postfix_conf import inline_map
from tests.lab.submission import Submission
from tests.lab.system import free_port

# The service's cycle scans the queue; one at its start, then none while measured.
SERVICE_INTERVAL = "1h"
SERVICE_START = 60.0


def release(lab: PostfixLab, sink: Sink, n: int, what: str) -> dict[str, Any]:
    """`postqueue -f`, then until the sink has all `n` and the queue is empty."""
    postqueue = [str(lab.command_dir / "postqueue"), "-c", str(lab.config_dir)]
    timeout = 120 + n / 20
    result: dict[str, Any] = {}
    with cpu_ledger(result, lab, sink):
        start = time.perf_counter()
        subprocess.run([*postqueue, "-f"], capture_output=True, check=True)
        while sink.count() < n or queued_files(lab.queue_dir) > 0:
            if time.perf_counter() - start > timeout:
                raise BenchError(
                    f"{what}: sink got {sink.count()} of {n} after {timeout:g}s; {lab.describe()}"
                )
            time.sleep(SINK_POLL)
        seconds = time.perf_counter() - start
    received, left = sink.count(), len(lab.queue())
    result.update(
        seconds=round(seconds, 3),
        messages_per_second=rate(n, seconds),
        sink_received=received,
        queue_left=left,
    )
    if received != n or left != 0:
        raise BenchError(f"{what}: sink got {received} of {n}, {left} left in the queue")
    return result


def relay_rescue(root: Path, lab: PostfixLab, sink: Sink, table: Path, listen: str) -> Rescue:
    """The service's config: one smarthost (the sink), the provider's 30 domains, [route]
    with the relay endpoint on loopback TCP (`listen` "inet") or a unix socket in
    Postfix's queue directory ("unix", LMTP)."""
    domains = ", ".join(json.dumps(d) for d in DOMAINS)
    if listen == "unix":
        relay_listen = f"unix:{lab.queue_dir / 'private' / 'queue-rescue-bench'}"
    else:
        relay_listen = f"127.0.0.1:{free_port()}"
    return Rescue(
        root,
        lab,
        smarthosts=[smarthost_entry("sink", sink.port)],
        providers=f'[[provider]]\nname = "{PROVIDER}"\ndomains = [{domains}]\n',
        extra=(
            "[dns]\nenabled = false\n\n"
            f'[service]\ninterval = "{SERVICE_INTERVAL}"\n\n'
            f'[route]\nmap = "hash:{table}"\n'
            f'relay_listen = "{relay_listen}"\n'
            'probe_interval = "1h"\n'
        ),
    )


class RelayService:
    """`queue-rescue run` in its own process group, its log in a file."""

    def __init__(self, rescue: Rescue, log: Path, profile: Path | None = None) -> None:
        """`profile`: run the service under pyinstrument, its report to that file."""
        self.log_path = log
        env = dict(os.environ)
        env.pop("QUEUE_RESCUE_CONFIG", None)
        env.pop("NOTIFY_SOCKET", None)
        argv = rescue.command("run")
        if profile is not None:
            renderer = PROFILE_RENDERERS.get(profile.suffix, "text")
            argv[1:1] = ["-m", "pyinstrument", "-r", renderer, "-o", str(profile)]
        with log.open("w") as err:
            self.proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=err,
                env=env,
                cwd=Path(__file__).resolve().parents[1],
                start_new_session=True,
            )

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_log(self, text: str, timeout: float = SERVICE_START) -> None:
        def seen() -> bool:
            if self.proc.poll() is not None:
                raise BenchError(f"queue-rescue run exited {self.proc.returncode}: {self.log()}")
            return text in self.log()

        wait_for(seen, timeout=timeout, what=f"{text!r} in the service's log")

    def wait_idle(self, quiet: float = 0.5, timeout: float = SERVICE_START) -> None:
        """Until the service has used no CPU for `quiet` seconds."""
        last = [self.cpu(), time.monotonic()]

        def idle() -> bool:
            now, used = time.monotonic(), self.cpu()
            if used != last[0]:
                last[:] = [used, now]
            return now - last[1] >= quiet

        wait_for(idle, timeout=timeout, what="the service to be idle")

    def cpu(self) -> float:
        return process_cpu(self.proc.pid)

    def peak_rss_mb(self) -> float:
        """VmHWM: the service's own high-water mark (exec starts a fresh one)."""
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024, 1)
        return 0.0

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                return self.proc.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(30)
                raise BenchError("queue-rescue run did not stop on SIGTERM") from None
        return self.proc.returncode


def relayed_rows(journal: Path) -> dict[str, int]:
    """The relay's own record: transactions by state (accepted, refused, ...)."""
    db = sqlite3.connect(f"file:{journal}?mode=ro", uri=True)
    try:
        rows = db.execute("SELECT state, count(*) FROM relayed GROUP BY state").fetchall()
    finally:
        db.close()
    return {str(state): int(n) for state, n in rows}


def measure_relay(
    root: Path,
    lab: PostfixLab,
    messages: Sequence[Submission],
    sessions: int,
    new_sink: Callable[[str], Sink],
    provider_routes: Mapping[str, str],
    *,
    deferred: bool,
    profile: Path | None = None,
    listen: str = "inet",
) -> dict[str, Any]:
    """Direct delivery, then delivery through the relay, of the backlog each time.
    `provider_routes`: the lab's transports to the fake provider that defers the backlog;
    `deferred`: whether the queue holds the backlog already (else it is created first);
    `profile`: run the service under pyinstrument (its figures are then a profiled run's)."""
    n = len(messages)
    out: dict[str, Any] = {"setup": {}}

    if not deferred:
        # The steps before may have pointed the domains elsewhere (Postfix's reroute).
        lab.set_transports(provider_routes)
        say(f"relay: creating {n} deferred messages for direct delivery")
        out["setup"]["create_direct"] = create_backlog(lab, messages, sessions)
    direct_sink = new_sink("direct")
    lab.set_transports({d: f"smtp:[127.0.0.1]:{direct_sink.port}" for d in DOMAINS})
    say("relay: Postfix -> smtp-sink directly")
    direct = release(lab, direct_sink, n, "direct delivery")
    direct["command"] = "transport_maps -> smtp-sink; postfix reload; postqueue -f; drain"
    say(f"  {direct['seconds']} s")

    lab.set_transports(provider_routes)
    say(f"relay: creating {n} deferred messages for the relay")
    out["setup"]["create_relay"] = create_backlog(lab, messages, sessions)
    relay_sink = new_sink("relay")
    table = root / "route" / "table"
    table.parent.mkdir(parents=True, exist_ok=True)
    table.parent.chmod(0o755)
    rescue = relay_rescue(root / "relay-rescue", lab, relay_sink, table, listen)
    for args in (("route", "init"), ("route", "set", PROVIDER, "rerouting")):
        done = rescue.run(*args)
        if done.code != 0:
            raise BenchError(f"queue-rescue {' '.join(args)} exited {done.code}: {done.stderr}")
    service = RelayService(rescue, root / "relay-service.log", profile)
    try:
        service.wait_log(f"route table hash:{table}: {len(DOMAINS)} domains")
        service.wait_idle()  # its first cycle (a scan of the queue) is over
        # As README "Routing" says: the service's table first, the site's own maps after it.
        lab.postconf(transport_maps=f"hash:{table}, {inline_map(provider_routes)}")
        say("relay: Postfix -> queue-rescue's relay -> smtp-sink")
        cpu_before = service.cpu()
        through = release(lab, relay_sink, n, "delivery through the relay")
        # The relay's process: CPU while measured, its peak RSS since it started.
        through["cpu_seconds"] = round(service.cpu() - cpu_before, 2)
        through["peak_rss_mb"] = service.peak_rss_mb()
        through["profiled"] = profile is not None
        ledger = through["cpu"]  # the service is not the benchmark's waited-for child
        ledger["relay_seconds"] = through["cpu_seconds"]
        ledger["other_seconds"] = round(
            max(0.0, ledger["other_seconds"] - ledger["relay_seconds"]), 2
        )
        through["command"] = (
            "queue-rescue run ([route], route set ionos rerouting); transport_maps = "
            "its table, ...; postfix reload; postqueue -f; drain"
        )
        say(f"  {through['seconds']} s")
    finally:
        code = service.stop()
        lab.restore_config()
    rows = relayed_rows(rescue.journal_path)
    refused = service.log().count("relay refused")
    through.update(relayed_rows=rows, relay_refused_logged=refused, service_exit=code)
    if rows != {"accepted": n} or refused or code != 0:
        raise BenchError(
            f"relay: journal {rows}, {refused} refusals logged, service exited {code} "
            f"(expected {n} accepted, none refused, exit 0)\n{service.log()[-3000:]}"
        )
    out["direct"] = direct
    out["through_relay"] = through
    out["share_of_direct"] = round(
        through["messages_per_second"] / direct["messages_per_second"], 3
    )
    return out
