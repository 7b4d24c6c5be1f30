"""What a run says about itself (machine, tool, Postfix settings), the ratios, and the table."""

from __future__ import annotations

import contextlib
import hashlib
import os
import platform
import subprocess
from pathlib import Path
from typing import Any, TextIO

from bench.common import POSTFIX_SETTINGS, REPO
from bench.measure import rate
from bench.probes import busy_share
from bench.targets import targets
from tests.lab.postfix import PostfixLab

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
    relay = report.get("relay")
    if relay:
        row("Postfix -> smtp-sink directly (postqueue -f)", relay["direct"])
        profiled = " (profiled)" if relay["through_relay"].get("profiled") else ""
        row("Postfix -> queue-rescue relay -> smtp-sink" + profiled, relay["through_relay"])
    row("smtp-source -d -s 8 -> smtp-sink (ceiling)", report.get("ceiling"))
    scan = report.get("scan")
    if scan:
        repeat = len(scan["scan"]["seconds_all"])
        row(f"queue-rescue scan (median of {repeat})", scan["scan"], rate_key=False)
        row(f"queue-rescue scan --json (median of {repeat})", scan["scan_json"], rate_key=False)
        row(f"qshape -c DIR deferred (median of {repeat})", scan["qshape"], rate_key=False)
        for key, label in (("scan", "scan"), ("scan_json", "scan --json"), ("qshape", "qshape")):
            each = ", ".join(f"{t:.3f}" for t in scan[key]["seconds_all"])
            w(f"  {label} each run: {each}\n")
    row("queue-rescue --version (startup)", report.get("startup"), rate_key=False)
    w(
        "CPU s: user+system seconds of the measured process and its children. Postfix, sink, "
        "other:\nCPU seconds used meanwhile by the lab's Postfix daemons, the smtp-sink, and "
        "everything else\non the machine (other work, which slows the step down).\n\n"
    )
    r = report["ratios"]
    w("Targets (issue 20):\n")
    for target in targets(report):
        w(f"  {target.line()}\n")
    if "flush_vs_smtp_source_ceiling" in r:
        w(f"flush: share of the smtp-source ceiling = {r['flush_vs_smtp_source_ceiling']:.1%}\n")
    if "qshape_vs_scan_json" in r:
        w(f"scan --json: qshape time / scan --json time = {r['qshape_vs_scan_json']:.2f}x\n")
    if flush:
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
    if relay:
        through = relay["through_relay"]
        w(
            f"relay: the service's CPU {through['cpu_seconds']:.2f} s while measured, its peak "
            f"RSS {through['peak_rss_mb']:.1f} MB; checked: sink got "
            f"{relay['direct']['sink_received']:,} directly, {through['sink_received']:,} "
            f"through the relay; queue empty after each; relay journal "
            + ", ".join(f"{k}={v}" for k, v in through["relayed_rows"].items())
            + f"; {through['relay_refused_logged']} refusals logged\n"
        )
        direct_cpu = relay["direct"]["cpu"]
        spent = direct_cpu["postfix_seconds"] + direct_cpu["sink_seconds"]
        ledger = through["cpu"]
        relay_spent = ledger["postfix_seconds"] + ledger["sink_seconds"] + through["cpu_seconds"]
        w(
            f"relay: CPU seconds of the delivery directly {spent:.2f} (Postfix + sink), through "
            f"the relay {relay_spent:.2f} (Postfix + relay + sink): the share a CPU-bound "
            f"machine allows is about {spent / relay_spent:.0%}\n"
        )
    settings = report.get("postfix_settings", {})
    w("Postfix: " + ", ".join(f"{k}={v}" for k, v in settings.items()) + "\n")
    w(f"queue-rescue smarthost options: {report.get('smarthost_options')}\n")
