"""Benchmark: queue-rescue's flush and scan against Postfix's own reroute and qshape.

One run builds a backlog of N deferred messages in a private Postfix instance (the test
lab), then measures on it:

- `queue-rescue flush --all --yes --json` to Postfix's `smtp-sink` on loopback;
- Postfix's own reroute of the same backlog (rebuilt) to a fresh `smtp-sink`:
  transport_maps to the sink, `postfix reload`, `postsuper -r ALL deferred`,
  `postqueue -f`, until the queue is empty;
- `queue-rescue scan` and `scan --json` against `qshape deferred` on the same queue;
- Postfix delivering a backlog through queue-rescue's routing relay (the service with
  `[route]`) to `smtp-sink`, against delivering one to `smtp-sink` directly (relay.py);
- peak RSS and CPU time of each queue-rescue process;
- `smtp-source` into `smtp-sink` with the same message, the SMTP ceiling of the machine.

Run from the repository root: `python -m bench.flush_bench [--messages 10000] [--json]`.
See bench/README.md.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # `python bench/flush_bench.py` puts bench/ first, not the repo
    sys.path.insert(0, str(REPO))

from bench.backlog import backlog, create_backlog  # noqa: E402
from bench.common import DOMAINS, IDLE_SHARE, BenchError, say  # noqa: E402
from bench.measure import (  # noqa: E402
    installed_python,
    measure_ceiling,
    measure_flush,
    measure_postfix_reroute,
    measure_scans,
    measure_startup,
    rescue_config,
)
from bench.probes import Sink, busy_share  # noqa: E402
from bench.relay import measure_relay  # noqa: E402
from bench.report import machine, postfix_settings, table, tool_identity  # noqa: E402
from bench.targets import targets  # noqa: E402
from tests.lab.postfix import PostfixLab  # noqa: E402
from tests.lab.smtpd import FakeProvider  # noqa: E402

# -- one run -------------------------------------------------------------------------------


@dataclass
class Options:
    messages: int = 2000
    sessions: int = 4
    repeat: int = 3
    skip: set[str] = field(default_factory=set)
    smarthost: dict[str, Any] = field(default_factory=dict)
    profile: Path | None = None
    profile_relay: Path | None = None
    relay_listen: str = "inet"
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
    python = installed_python()  # starts as an installed copy: bytecode, no editable hook
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
        rescue = rescue_config(root / "rescue", lab, flush_sink, options.smarthost, python)
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
        if "relay" not in options.skip:
            say("the routing relay against direct delivery")
            routes = {d: provider.next_hop for d in DOMAINS}
            # The first backlog is still deferred when neither flush nor reroute moved it.
            deferred = {"flush", "reroute"} <= options.skip
            report["relay"] = measure_relay(
                root,
                lab,
                messages,
                options.sessions,
                new_sink,
                routes,
                deferred=deferred,
                profile=options.profile_relay,
                listen=options.relay_listen,
            )
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


def ratios(report: dict[str, Any]) -> tuple[dict[str, float], dict[str, Any]]:
    """The measured ratios, and issue 20's targets with each ratio (bench/targets.py)."""
    out: dict[str, float] = {}
    flush, reroute, scan = report.get("flush"), report.get("postfix_reroute"), report.get("scan")
    if flush and reroute:
        speedup = flush["messages_per_second"] / reroute["messages_per_second"]
        out["flush_vs_postfix_reroute"] = round(speedup, 2)
    if flush and report.get("ceiling"):
        share = flush["messages_per_second"] / report["ceiling"]["messages_per_second"]
        out["flush_vs_smtp_source_ceiling"] = round(share, 3)
    if report.get("relay"):
        out["relay_vs_direct"] = report["relay"]["share_of_direct"]
    if scan:
        out["qshape_vs_scan"] = round(scan["qshape"]["seconds"] / scan["scan"]["seconds"], 2)
        out["qshape_vs_scan_json"] = round(
            scan["qshape"]["seconds"] / scan["scan_json"]["seconds"], 2
        )
    return out, {t.key: t.as_json() for t in targets(report)}


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
        choices=["scan", "flush", "reroute", "relay", "ceiling"],
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
        "--profile-relay",
        type=Path,
        metavar="FILE",
        help="run the relay's service under pyinstrument and write its report to FILE "
        "(as --profile; the relay figures are then those of a profiled run)",
    )
    parser.add_argument(
        "--relay-listen",
        choices=["inet", "unix"],
        default="inet",
        help="the relay endpoint on loopback TCP, Postfix's smtp client (the default, as "
        "[route] relay_listen's), or on a unix socket in Postfix's queue directory, its "
        "lmtp client",
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
    profiled = args.profile is not None or args.profile_relay is not None
    if profiled and importlib.util.find_spec("pyinstrument") is None:
        parser.error("--profile and --profile-relay need pyinstrument: pip install pyinstrument")
    options = Options(
        messages=args.messages,
        sessions=max(1, args.sessions),
        repeat=max(1, args.repeat),
        skip=set(args.skip),
        smarthost=dict(args.smarthost_option),
        profile=args.profile.resolve() if args.profile else None,
        profile_relay=args.profile_relay.resolve() if args.profile_relay else None,
        relay_listen=args.relay_listen,
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
