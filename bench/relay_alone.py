"""The relay endpoint alone: its CPU per message, without Postfix or the service around it.

`smtp-source` (20 sessions, one of the backlog's messages) speaks to a RelayServer whose
Relay has what the service gives it (SRS, the route store in a fresh journal, the
smarthost pool), and whose one smarthost is `smtp-sink`. Prints the wall time and the
relay's CPU time (this process: the server, the pool, SQLite, the log line). Steadier
than the `relay` step of flush_bench on a shared machine, since only the relay's own CPU
is counted; `--profile FILE` writes cProfile's stats of the run.

Run from the repository root: `python -m bench.relay_alone [--messages 2000]`.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import logging
import shutil
import tempfile
import time
from pathlib import Path

from bench.backlog import message
from bench.common import sbin
from bench.probes import Sink
from rescue.config import SmarthostConfig
from rescue.route.control import RELAY_RETRY
from rescue.route.relay import Relay, RelayOutcome
from rescue.route.relayserver import RelayServer
from rescue.route.store import RouteStore
from rescue.smarthost.pool import Dispatcher
from rescue.srs.rewriter import SrsRewriter

SESSIONS = 20  # as the lab Postfix's destination concurrency
log = logging.getLogger("bench.relay_alone")


async def relay_run(
    folder: Path, sink: Sink, messages: int, unix: bool = False
) -> tuple[float, float]:
    """(wall seconds, the relay's CPU seconds) for `messages` through the relay; `unix`:
    the endpoint on a unix socket (LMTP) instead of loopback TCP (SMTP)."""
    host = SmarthostConfig(name="sink", host="127.0.0.1", port=sink.port, tls="none")
    pool = Dispatcher([host], RELAY_RETRY)

    def report(outcome: RelayOutcome) -> None:  # the service logs each outcome so
        log.info("%s: relayed via %s: %s", outcome.queue_id, outcome.smarthost, outcome.reply)

    relay = Relay(
        srs=SrsRewriter(domain="srs.bench.test", secrets=["bench-secret-0001"]),
        store=RouteStore(folder / "journal.sqlite3"),
        smarthosts=lambda: ([host], None),
        dispatcher=lambda _hosts: pool,
        provider_of=lambda _domain: "ionos",
        report=report,
    )
    server = RelayServer(relay, hostname="relay.bench.test")
    if unix:
        await server.start(("unix", str(folder / "relay.sock"), 0))
        where, lmtp = f"unix:{folder / 'relay.sock'}", ["-L"]
    else:
        await server.start(("inet", "127.0.0.1", 0))
        where, lmtp = f"127.0.0.1:{server.port}", []
    sample = folder / "message.eml"
    sample.write_bytes(message(1).message)
    argv = [sbin("smtp-source"), *lmtp, "-d", "-s", str(SESSIONS), "-m", str(messages)]
    argv += ["-f", message(1).sender, "-t", message(1).recipients[0], "-F", str(sample)]
    start, cpu = time.perf_counter(), time.process_time()
    source = await asyncio.create_subprocess_exec(*argv, where)
    if await source.wait() != 0:
        raise SystemExit("smtp-source failed")
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    await server.close()
    await pool.close()
    return seconds, cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", "-n", type=int, default=2000)
    parser.add_argument(
        "--unix", action="store_true", help="the endpoint on a unix socket (LMTP), not TCP"
    )
    parser.add_argument("--profile", type=Path, metavar="FILE", help="cProfile's stats to FILE")
    args = parser.parse_args()
    logging.basicConfig(filename="/dev/null", level=logging.INFO)
    folder = Path(tempfile.mkdtemp(prefix="relay-alone-"))
    folder.chmod(0o755)
    sink = Sink(folder, "relay").start()
    profiler = cProfile.Profile() if args.profile else None
    try:
        if profiler is not None:
            profiler.enable()
        seconds, cpu = asyncio.run(relay_run(folder, sink, args.messages, args.unix))
        if profiler is not None:
            profiler.disable()
            profiler.dump_stats(args.profile)
        received = sink.count()
    finally:
        sink.stop()
        shutil.rmtree(folder, ignore_errors=True)
    if received != args.messages:
        raise SystemExit(f"the sink got {received} of {args.messages}")
    print(
        f"{args.messages} messages through the relay in {seconds:.2f} s "
        f"({args.messages / seconds:,.0f}/s); the relay's CPU {cpu:.2f} s, "
        f"{cpu / args.messages * 1000:.3f} ms a message"
        + (" (profiled)" if profiler is not None else "")
    )


if __name__ == "__main__":
    main()
